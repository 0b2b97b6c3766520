"""Regenerate the results folder from the stored rows: never hand-edited.

    results/rows.csv          every row (merged from results/rows/<method>/<story>.csv)
    results/leaderboard.csv   one row per method: each metric's mean (and p95 where registered),
                              named/pronoun splits, failure count, protocol (suite, encoder, steps)
    results/plots/*.png       one plot per metric (per method) + chunk time vs shot index + one
                              confusion matrix per label (probe's answer against the truth, per method)
                              + identity by the shot's framing and the character's pattern
    results/REPORT.md         the above as a readable page (one leaderboard table per suite), with
                              each metric's formula, the speed ratios against the teacher, and the
                              machine's performance pages (results/perf/*.md: profile, FLOP model)
                              when present

Every file is rendered into a temporary folder first and renamed into place only when all of
them are ready, so a failure never leaves a partial leaderboard.

Aggregation is strict: a metric's aggregate over a method is NaN if any of its rows is NaN
(a missing value is a failure, reported in REPORT.md, never averaged away or counted as 0).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from benchmark.metrics import IDENTITY_PARTS, LABEL_KEYS, METRICS, STORY_LEVEL  # noqa: E402
from benchmark.rows import ADDED_COLUMNS, PROTOCOL_COLUMNS, RowStore  # noqa: E402
from benchmark.timing import BUSY_LOAD_PER_CORE, is_busy  # noqa: E402
from shotstream.world.vocab import LABEL_SPACES  # noqa: E402

ENV_COLUMNS = ["threads", "git_commit"]  # (device and dtype are protocol columns)
SUBSETS = ("named", "pronoun")
LABEL_METRICS = LABEL_KEYS | IDENTITY_PARTS  # label accuracy metric -> the label it reads


def strict_mean(values: pd.Series) -> float:
    return math.nan if len(values) == 0 or values.isna().any() else float(values.mean())


def strict_p95(values: pd.Series) -> float:
    return math.nan if len(values) == 0 or values.isna().any() else float(np.percentile(values.to_numpy(), 95))


def superseded_apart(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows scored with another version of a metric than the registry's are named
    `<metric>@v<version>` (e.g. `inter_shot_identity@v1`, whole frames): an older formula gets its
    own column and is never averaged with the current one, and old rows still load."""
    current = rows["metric"].map({name: m.version for name, m in METRICS.items()})
    stale = current.notna() & (rows["metric_version"] != current)
    if not stale.any():
        return rows
    rows = rows.copy()
    rows.loc[stale, "metric"] = rows.loc[stale, "metric"] + "@v" + rows.loc[stale, "metric_version"].astype(str)
    return rows


def metric_order(rows: pd.DataFrame) -> list[str]:
    present = set(rows["metric"].unique())
    return [m for m in METRICS if m in present] + sorted(present - set(METRICS))


def build_leaderboard(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per method: protocol, environment, aggregates of every metric, failure count."""
    out = []
    metrics = metric_order(rows)
    # rows from before a column was added (another tool's frame) take its default, as read() does
    rows = rows.assign(**{c: default for c, default in ADDED_COLUMNS.items() if c not in rows})
    for method, g_all in rows.groupby("method", sort=True):
        g = g_all[g_all["variant"] == ""]  # the suite as given; a variant's rows are its own columns (below)
        rec: dict = {"method": method, "stories": g["story"].nunique()}
        for col in PROTOCOL_COLUMNS + ENV_COLUMNS:
            rec[col] = ";".join(sorted(g_all[col].astype(str).unique()))
        for name in metrics:
            m = METRICS.get(name)
            vals = g.loc[g["metric"] == name, "value"]
            rec[name] = strict_mean(vals)
            if m is not None and "p95" in m.aggregates:
                rec[f"{name}_p95"] = strict_p95(vals)
            if m is not None and m.by_subset:
                for subset in SUBSETS:
                    rec[f"{name}[{subset}]"] = strict_mean(g.loc[(g["metric"] == name) & (g["subset"] == subset), "value"])
        for variant in sorted(set(g_all["variant"]) - {""}):
            v = g_all[g_all["variant"] == variant]
            for name in metrics:  # e.g. identity_acc[pronoun, memory-only]: what the caches carry without the caption
                m = METRICS.get(name)
                if m is not None and m.by_subset and (v["metric"] == name).any():
                    rec[f"{name}[{variant}]"] = strict_mean(v.loc[v["metric"] == name, "value"])
                    for subset in SUBSETS:
                        rec[f"{name}[{subset}, {variant}]"] = strict_mean(
                            v.loc[(v["metric"] == name) & (v["subset"] == subset), "value"])
        rec["failures"] = int(g_all["value"].isna().sum())
        if recorded_load(rows):  # (a column only once some story recorded it: older results render as before)
            rec["busy_stories"] = int(busy_stories(g)["story"].nunique())
        out.append(rec)
    return pd.DataFrame(out)


def suite_leaderboards(rows: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The leaderboard of each suite's rows, by suite name: methods are ranked only beside the
    methods scored on the same stories."""
    return {suite: build_leaderboard(g) for suite, g in rows.groupby("suite", sort=True)}


def recorded_load(rows: pd.DataFrame) -> bool:
    return "load_before" in rows and bool(rows[["load_before", "load_after"]].notna().any().any())


def busy_stories(rows: pd.DataFrame) -> pd.DataFrame:
    """(method, story, load, threads, cores) of the timed stories run on a busy machine (timing.is_busy)."""
    cols = ["method", "story", "variant", "load_before", "load_after", "threads", "cores"]
    if not recorded_load(rows):
        return pd.DataFrame(columns=cols)
    stories = rows[cols].drop_duplicates(["method", "story", "variant"])
    busy = [is_busy(*r) for r in stories[["load_before", "load_after", "threads", "cores"]].itertuples(index=False)]
    return stories[busy].reset_index(drop=True)


def failures(rows: pd.DataFrame) -> pd.DataFrame:
    bad = rows[rows["value"].isna()]
    if bad.empty:
        return pd.DataFrame(columns=["method", "metric", "rows", "note"])
    return (bad.groupby(["method", "metric"], sort=True)
            .agg(rows=("value", "size"), note=("note", lambda s: s.iloc[0]))
            .reset_index())


def write_report(results_dir: str | Path) -> dict[str, Path]:
    """Regenerate rows.csv, leaderboard.csv, plots/ and REPORT.md in `results_dir`."""
    results_dir = Path(results_dir)
    store = RowStore(results_dir)
    raw = store.read()
    if raw.empty:
        raise ValueError(f"{store.rows_dir}: no result rows yet (run `shotstream-bench run` or `score` first)")
    rows = superseded_apart(raw)
    board = build_leaderboard(rows)
    results_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".report-", dir=results_dir))
    try:
        raw.to_csv(tmp / "rows.csv", index=False)
        board.to_csv(tmp / "leaderboard.csv", index=False)
        (tmp / "plots").mkdir()
        suite_rows = rows[rows["variant"] == ""]  # plots and breakdowns: the suite as given
        tables = breakdowns(suite_rows)
        plots = make_plots(suite_rows, tmp / "plots", tables)
        report = render_markdown(rows, board, plots, tables) + "\n".join(perf_sections(results_dir))
        (tmp / "REPORT.md").write_text(report, encoding="utf-8")
        written = {}
        for f in sorted(tmp.rglob("*")):
            if f.is_file():
                _fsync(f)
        # Everything is rendered: move into place (each rename is atomic; plots first, the
        # leaderboard and report last, so they never reference a missing plot).
        (results_dir / "plots").mkdir(exist_ok=True)
        for name in plots:
            os.replace(tmp / "plots" / name, results_dir / "plots" / name)
            written[f"plots/{name}"] = results_dir / "plots" / name
        for name in ("rows.csv", "leaderboard.csv", "REPORT.md"):
            os.replace(tmp / name, results_dir / name)
            written[name] = results_dir / name
        return written
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def make_plots(rows: pd.DataFrame, out_dir: Path, tables: dict[tuple[str, str], pd.DataFrame]) -> list[str]:
    """One bar chart per metric (mean per method, p95 markers where registered), the chunk
    time vs shot index curve, the confusion matrices and the `breakdowns` tables. Returns the file names."""
    names = []
    methods = sorted(rows["method"].unique())
    for name in metric_order(rows):
        g = rows[rows["metric"] == name]
        m = METRICS.get(name)
        if name == "chunk_time_s":
            fig, ax = plt.subplots(figsize=(6, 3.5))
            for method in methods:
                per_shot = g[(g["method"] == method) & (g["shot"] != STORY_LEVEL)].groupby("shot")["value"].mean()
                ax.plot(per_shot.index, per_shot.to_numpy(), marker="o", label=method)
            ax.set_xlabel("shot index")
            ax.set_ylabel("mean chunk time (s)")
            ax.set_title("chunk time vs shot index (flat = bounded cost)")
            ax.legend(fontsize=8)
            _save(fig, out_dir / "chunk_time_vs_shot.png")
            names.append("chunk_time_vs_shot.png")
            continue
        means = [strict_mean(g.loc[g["method"] == method, "value"]) for method in methods]
        fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(methods) + 2), 3.5))
        x = np.arange(len(methods))
        ax.bar(x, np.nan_to_num(means, nan=0.0), color=["C0" if not math.isnan(v) else "lightgrey" for v in means])
        for xi, v in zip(x, means):
            ax.annotate("missing" if math.isnan(v) else f"{v:.3g}", (xi, 0 if math.isnan(v) else v),
                        ha="center", va="bottom", fontsize=8)
        if m is not None and "p95" in m.aggregates:
            p95 = [strict_p95(g.loc[g["method"] == method, "value"]) for method in methods]
            ax.scatter(x, p95, marker="_", s=400, color="C3", label="p95", zorder=3)
            ax.legend(fontsize=8)
        ax.set_xticks(x, methods, rotation=20, ha="right", fontsize=8)
        unit = f" ({m.unit})" if m is not None else ""
        arrow = "" if m is None else (" ↑" if m.higher_is_better else " ↓")
        ax.set_ylabel(f"{name}{unit}")
        ax.set_title(f"{name}{arrow} per method")
        file = f"{name}.png"
        _save(fig, out_dir / file)
        names.append(file)
    return names + confusion_plots(rows, out_dir) + breakdown_plot(tables, out_dir)


def confusions(rows: pd.DataFrame, metric: str) -> dict[str, pd.DataFrame]:
    """Per method: shots counted by (true label, probe's answer), read from the notes
    "<true> -> <predicted>" of a label metric's rows; rows in the order of the label space."""
    space = list(LABEL_SPACES[LABEL_METRICS[metric]])
    return {method: pd.crosstab(p["true"], p["read"]).reindex(index=space, columns=space, fill_value=0)
            for method, p in label_answers(rows, metric).groupby("method")}


def label_answers(rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    """A label metric's rows whose note is "<true> -> <read>", with the two as columns."""
    rows = rows.reset_index(drop=True)  # (rows read from several files repeat index values)
    g = rows[(rows["metric"] == metric) & rows["note"].fillna("").str.contains(" -> ", regex=False)]
    answers = g["note"].str.split(" -> ", n=1, expand=True).reindex(columns=[0, 1]).set_axis(["true", "read"], axis=1)
    return g.join(answers)


def confusion_plots(rows: pd.DataFrame, out_dir: Path) -> list[str]:
    """One figure per label (action, shape, ...), one confusion matrix per method side by side:
    where a model's shots go wrong (a blob read as a circle, a jump read as a bounce)."""
    names = []
    for metric, key in LABEL_METRICS.items():
        if key not in LABEL_SPACES:  # identity: 108 classes, its parts are plotted instead
            continue
        per_method = confusions(rows, metric)
        if not per_method:
            continue
        k = len(LABEL_SPACES[key])
        ncols = min(len(per_method), 4)
        nrows = -(-len(per_method) // ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(0.45 * k * ncols + 1.5, (0.45 * k + 1.6) * nrows),
                                 squeeze=False)
        for ax in axes.flat[len(per_method):]:
            ax.axis("off")
        for ax, (method, counts) in zip(axes.flat, per_method.items()):
            share = counts.div(counts.sum(axis=1).replace(0, np.nan), axis=0)  # of each true label's shots
            ax.imshow(share.fillna(0).to_numpy(), cmap="Blues", vmin=0, vmax=1)
            for (i, j), c in np.ndenumerate(counts.to_numpy()):
                if c:
                    ax.text(j, i, str(c), ha="center", va="center", fontsize=7,
                            color="white" if share.iat[i, j] > 0.6 else "black")
            ax.set_xticks(range(k), counts.columns, rotation=60, ha="right", fontsize=7)
            ax.set_yticks(range(k), counts.index, fontsize=7)
            ax.set_xlabel("probe's answer", fontsize=8)
            ax.set_ylabel("true label", fontsize=8)
            ax.set_title(method, fontsize=9)
        fig.suptitle(f"{key}: shots per (true, read) pair; shade = share of the true label's shots", fontsize=9)
        file = f"confusion_{key}.png"
        _save(fig, out_dir / file)
        names.append(file)
    return names


# Where a method loses identity: per true framing of the shot, per true pattern of the character.
BREAKDOWNS = (("identity_acc", "framing_acc"), ("identity_acc", "pattern_acc"))


def breakdown(rows: pd.DataFrame, metric: str, by: str) -> pd.DataFrame:
    """Mean of `metric` per method (rows) and true label of `by` (columns, in the label space's
    order), the label read from the notes "<true> -> <read>" of `by`'s row for the same shot."""
    space = list(LABEL_SPACES[LABEL_METRICS[by]])
    keys = ["method", "story", "shot"]
    truth = label_answers(rows, by)[keys + ["true"]]
    scored = rows.loc[rows["metric"] == metric, keys + ["value"]].merge(truth, on=keys)
    if scored.empty:
        return pd.DataFrame()
    table = scored.pivot_table(index="method", columns="true", values="value", aggfunc=strict_mean, dropna=False)
    return table.reindex(columns=[c for c in space if c in table.columns])


def breakdowns(rows: pd.DataFrame) -> dict[tuple[str, str], pd.DataFrame]:
    """The BREAKDOWNS the rows can fill, keyed by (metric, by)."""
    return {(m, by): t for m, by in BREAKDOWNS if not (t := breakdown(rows, m, by)).empty}


def breakdown_plot(tables: dict[tuple[str, str], pd.DataFrame], out_dir: Path) -> list[str]:
    """One panel per breakdown table: a bar per (label, method)."""
    if not tables:
        return []
    fig, axes = plt.subplots(1, len(tables), figsize=(5.5 * len(tables) + 2, 3.5), squeeze=False)
    for ax, ((metric, by), table) in zip(axes.flat, tables.items()):
        x = np.arange(len(table.columns))
        width = 0.8 / len(table)
        for i, (method, values) in enumerate(table.iterrows()):
            ax.bar(x + (i - (len(table) - 1) / 2) * width, values.fillna(0).to_numpy(), width, label=method)
        ax.set_xticks(x, table.columns, fontsize=8)
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} by the true {LABEL_METRICS[by]}", fontsize=9)
    axes.flat[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    file = "identity_breakdown.png"
    _save(fig, out_dir / file)
    return [file]


def render_markdown(rows: pd.DataFrame, board: pd.DataFrame, plots: list[str],
                    tables: dict[tuple[str, str], pd.DataFrame]) -> str:
    lines = [
        "# ShotStream benchmark report",
        "",
        "_Generated by `shotstream-bench report` from `rows/` "
        f"({len(rows)} rows, {rows['method'].nunique()} methods, {rows['story'].nunique()} stories). "
        "Do not edit: re-run the command._",
        "",
        "## Protocol",
        "",
        md_table(board[["method", "stories", *PROTOCOL_COLUMNS, *ENV_COLUMNS]]),
        "",
        "## Leaderboard",
        "",
        "Means over shots (per-shot metrics) or stories (per-story metrics); `_p95` is the 95th",
        "percentile; `[named]` / `[pronoun]` split shots whose caption names the character from",
        "shots that say \"it\". A missing value (NaN) in any row makes the aggregate `missing`.",
        "",
    ]
    lines += ["One table per suite: only methods scored on the same stories are compared (an external set of",
              "videos is not ranked beside the evaluation suite); a table has the columns its suite's rows fill.", ""]
    for suite, suite_board in suite_leaderboards(rows).items():
        score_cols = [c for c in suite_board.columns if c not in ("method", "stories", *PROTOCOL_COLUMNS, *ENV_COLUMNS)]
        stories = rows.loc[rows["suite"] == suite, "story"].nunique()
        lines += [f"### {suite or '(no suite)'} ({stories} {'story' if stories == 1 else 'stories'})", "",
                  md_table(suite_board[["method", *score_cols]]), ""]
    ratios = speed_ratios(board)
    if not ratios.empty:
        lines += [f"## Speed against the {REFERENCE}", "", "From the rows above: compare methods measured on the "
                  "same device, dtype and threads (see Protocol).", "",
                  md_table(ratios), ""]
    for (metric, by), table in tables.items():
        lines += [f"## {metric} by the true {LABEL_METRICS[by]}", "", md_table(table.reset_index()), ""]
    lines += ["## Metrics", "",
              "| metric | unit | level | range | better | version | formula |", "|---|---|---|---|---|---|---|"]
    for name in metric_order(rows):
        m = METRICS.get(name)
        if m is None and "@v" in name and name.rsplit("@v", 1)[0] in METRICS:
            base, old = name.rsplit("@v", 1)
            lines.append(f"| {name} | | | | | {old} | superseded: `{base}` as scored before version "
                         f"{METRICS[base].version}; re-run `run` / `score` to score it again |")
            continue
        if m is None:
            lines.append(f"| {name} | ? | ? | ? | ? | ? | not in the registry |")
            continue
        versions = sorted(rows.loc[rows["metric"] == name, "metric_version"].unique())
        version = ", ".join(map(str, versions)) + (" (mixed!)" if len(versions) > 1 else "")
        lines.append(f"| {name} | {m.unit} | {m.level} | {m.range[0]:g}..{m.range[1]:g} | "
                     f"{'higher' if m.higher_is_better else 'lower'} | {version} | {m.doc} |")
    busy = busy_stories(rows)
    if not busy.empty:
        lines += ["", "## Timed on a busy machine", "",
                  f"Other processes' 1-minute load average (less the run's own threads) above {BUSY_LOAD_PER_CORE:g} "
                  "per CPU core before or after the story: their threads queued for a core, so these stories' "
                  "latency, FPS and chunk times are not the model's alone (counted in the leaderboard's "
                  "`busy_stories`; re-run them on a quiet machine).", "", md_table(busy)]
    fails = failures(rows)
    lines += ["", "## Failures (missing values)", ""]
    lines += ["None."] if fails.empty else [md_table(fails)]
    lines += ["", "## Plots", ""] + [f"![{p}](plots/{p})" for p in plots] + [""]
    return "\n".join(lines)


REFERENCE = "teacher"  # the slow bidirectional model every streaming method is compared with


def speed_ratios(board: pd.DataFrame, reference: str = REFERENCE) -> pd.DataFrame:
    """Per timed method, how it compares with `reference` in the same run: first-frame latency
    speed-up (reference / method), FPS ratio (method / reference) and its own chunk-time growth."""
    if reference not in set(board["method"]) or not {"latency_first_frame_s", "fps"} <= set(board):
        return pd.DataFrame()
    ref = board.set_index("method").loc[reference]
    timed = board[board["latency_first_frame_s"].notna() & (board["method"] != reference)]
    return pd.DataFrame({
        "method": timed["method"],
        f"first frame x sooner than {reference}": ref["latency_first_frame_s"] / timed["latency_first_frame_s"],
        f"fps / {reference}": timed["fps"] / ref["fps"],
        "chunk_time_growth": timed.get("chunk_time_growth", np.nan),
    })


def perf_sections(results_dir: Path) -> list[str]:
    """The committed performance pages (results/perf/*.md), inlined one level down, and a link to
    the long-story run (results/long/, `--suite storyworld-long`) when there is one."""
    lines = []
    if (results_dir / "long" / "REPORT.md").is_file():
        lines += ["", "## Long stories", "", "Chunk time and memory over 20-shot stories (`--suite storyworld-long`): "
                  "[long/REPORT.md](long/REPORT.md).", ""]
    for page in sorted((results_dir / "perf").glob("*.md")):
        text = page.read_text(encoding="utf-8").strip().splitlines()
        lines += ["", *("#" + line if line.startswith("#") else line for line in text), ""]
    return lines


def md_table(df: pd.DataFrame) -> str:
    def fmt(v) -> str:
        if isinstance(v, float):
            return "missing" if math.isnan(v) else f"{v:.4g}"
        return str(v).replace("|", "\\|")

    head = "| " + " | ".join(map(str, df.columns)) + " |"
    sep = "|" + "---|" * len(df.columns)
    body = ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, sep, *body])


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())

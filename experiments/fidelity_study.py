"""The fidelity study's table (#32, docs/experiments.md "Fidelity study"): each arm judged on what
the issue names, from the benchmark rows of a results folder (`benchmark run`, with and without
`--memory-only`):

    python -m experiments.fidelity_study runs/study/bench_teacher            # markdown table
    python -m experiments.fidelity_study runs/study/bench_teacher --methods today stride4

Columns: identity on named shots; shape and pattern on named shots by framing (the framing as
`framing_acc`'s note records it); `character_copies` (the share of wide shots with a second copy);
identity and shape on "it" shots with no global caption (the memory-only protocol: only the
earlier shots can say what "it" is); identity at the second and the sixth shot of a story.
Each value is a mean over shots; n is the number of shots behind it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from benchmark.report import label_answers, md_table, superseded_apart
from benchmark.rows import RowStore

FRAMINGS = ("wide", "medium", "close_up")


def mean(values: pd.Series) -> str:
    return f"{values.mean():.2f} ({len(values)})" if len(values) else "-"


def arm_row(rows: pd.DataFrame, memory: pd.DataFrame) -> dict[str, str]:
    keys = ["story", "shot"]
    framing = label_answers(rows, "framing_acc")[keys + ["true"]].rename(columns={"true": "framing"})
    named = rows[rows["subset"] == "named"].merge(framing, on=keys)

    def metric(frame: pd.DataFrame, name: str) -> pd.Series:
        return frame.loc[frame["metric"] == name, "value"]

    out = {"identity (named)": mean(metric(named, "identity_acc"))}
    for part in ("shape_acc", "pattern_acc"):
        for f in FRAMINGS:
            out[f"{part[:-4]} {f}"] = mean(metric(named[named["framing"] == f], part))
    out["copies (wide)"] = mean(metric(rows, "character_copies"))
    it = memory[memory["subset"] == "pronoun"]
    out['"it" identity, memory-only'] = mean(metric(it, "identity_acc"))
    out['"it" shape, memory-only'] = mean(metric(it, "shape_acc"))
    for shot in (1, 5):
        out[f"identity shot {shot + 1}"] = mean(metric(rows[rows["shot"] == shot], "identity_acc"))
    return out


def study_table(results: str | Path, methods: list[str] | None = None) -> pd.DataFrame:
    rows = superseded_apart(RowStore(Path(results)).read())
    methods = methods or sorted(rows["method"].unique())
    table = {}
    for m in methods:
        mine = rows[rows["method"] == m]
        table[m] = arm_row(mine[mine["variant"] == ""], mine[mine["variant"] == "memory-only"])
    return pd.DataFrame(table).T


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", help="a benchmark results folder")
    parser.add_argument("--methods", nargs="+", help="rows' methods, in this order (default: all)")
    args = parser.parse_args(argv)
    print(md_table(study_table(args.results, args.methods).rename_axis("arm").reset_index()))


if __name__ == "__main__":
    main()

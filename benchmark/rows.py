"""Tidy result rows: one per (method, story, shot, metric, subset), with the run's metadata.

Rows live in one CSV per (method, story) under `<results>/rows/<method>/<story>.csv`, each
written to a temporary file, fsync'ed and renamed into place: a story's rows appear whole or
not at all, so an interrupted run loses nothing already written, and `done(method, story)`
lets the same command resume where it stopped. `read()` gives all rows as one DataFrame; the
report writes the merged `<results>/rows.csv` from it.

Every row carries `inputs`, a digest of what was scored (videos, captions, labels, the method's
model folder): resume skips a story only when its stored digest equals the current one, so a
re-encoded video or an edited caption is scored again and its rows replaced.
"""

from __future__ import annotations

import datetime as _dt
import glob
import hashlib
import json
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence
from urllib.parse import quote, unquote

import pandas as pd

from benchmark.metrics import TIMING_METRICS, Metric, MetricRow
from benchmark.timing import MachineLoad
from shotstream.checkpoint import write_atomic

# Run metadata of every row. The protocol columns must agree across a method's rows (a resumed
# run may not mix seeds, dtypes or devices); the others record the environment.
PROTOCOL_COLUMNS = ["suite", "encoder", "steps", "preset", "device", "dtype", "seed"]
META_COLUMNS = ["suite", "encoder", "steps", "preset", "device", "dtype", "threads", "seed", "git_commit", "date"]
# Columns added after rows were first committed, with the value an older rows file gets when read
# (so old results still load). inputs "": the digest was not recorded, so resume cannot trust them.
# load_before / load_after / cores: the machine's 1-minute load average around a timed story and
# its CPU cores (benchmark.timing.MachineLoad; NaN / 0 for untimed stories and older rows).
# variant: "" for the suite as given, MEMORY_ONLY for the same stories with their global captions
# removed (`run --memory-only`); a variant's rows live in rows/<method>@<variant>/.
ADDED_COLUMNS = {"inputs": "", "load_before": float("nan"), "load_after": float("nan"), "cores": 0, "variant": ""}
MEMORY_ONLY = "memory-only"
ROW_COLUMNS = ["method", "story", "shot", "metric", "value", "subset", "note", "metric_version", *META_COLUMNS,
               *ADDED_COLUMNS]
_DTYPES = {"method": str, "story": str, "shot": "int64", "metric": str, "value": "float64", "subset": str,
           "note": str, "metric_version": "int64", "suite": str, "encoder": str, "steps": str, "preset": str,
           "device": str, "dtype": str, "threads": "int64", "seed": "int64", "git_commit": str, "date": str, "inputs": str,
           "load_before": "float64", "load_after": "float64", "cores": "int64", "variant": str}
_NA = ["", "nan", "NaN"]


@dataclass
class RunMeta:
    suite: str = ""
    encoder: str = ""
    steps: str = ""  # sampler steps of the method ("" when not applicable, e.g. external videos)
    preset: str = ""
    device: str = "cpu"
    dtype: str = "float32"
    threads: int = 1
    seed: int = 0
    git_commit: str = field(default_factory=lambda: git_commit())
    date: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))

    def protocol(self) -> dict[str, str]:
        return {k: str(getattr(self, k)) for k in PROTOCOL_COLUMNS}


def git_commit(repo: Path | None = None) -> str:
    """HEAD of the project's repository, "+dirty" when the tree has changes; "" outside git."""
    repo = repo or Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return head + ("+dirty" if dirty else "")


def digest(obj) -> str:
    """Short sha256 of a JSON-able object (keys sorted): the `inputs` key of a story's rows."""
    text = json.dumps(obj, sort_keys=True, ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes (read in blocks: videos and weights can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class RowStore:
    """The rows of one results folder."""

    def __init__(self, results_dir: str | Path):
        self.results_dir = Path(results_dir)
        self.rows_dir = self.results_dir / "rows"

    def method_dir(self, method: str, variant: str = "") -> Path:
        # Names are percent-encoded ('@' too), so the '@' before a variant cannot come from a name.
        return self.rows_dir / (quote(method, safe="") + (f"@{quote(variant, safe='')}" if variant else ""))

    def story_file(self, method: str, story: str, variant: str = "") -> Path:
        if not method or not story:
            raise ValueError(f"method and story names must be non-empty (got {method!r}, {story!r})")
        # Names are percent-encoded, so any story id ("suite/0003", "a b") maps to one safe file.
        return self.method_dir(method, variant) / f"{quote(story, safe='')}.csv"

    def done(self, method: str, story: str, metrics: Sequence[Metric] | None = None, inputs: str | None = None,
             variant: str = "") -> bool:
        """Are the rows of (method, story) stored, with every metric of `metrics` at its current
        version, and (given `inputs`) scored from the same inputs? A story scored before a metric
        changed, by a run asked for fewer metrics, or from other inputs (or from inputs never
        recorded: rows older than the column) is generated again. Timing metrics may be absent:
        references (ground truth, external videos) have none."""
        path = self.story_file(method, story, variant)
        if not path.is_file():
            return False
        if inputs is not None:
            stored = pd.read_csv(path, dtype=str, keep_default_na=False)
            if "inputs" not in stored.columns or set(stored["inputs"]) != {inputs}:
                return False
        if metrics is None:
            return True
        stored = pd.read_csv(path, usecols=["metric", "metric_version"]).drop_duplicates()
        versions = stored.groupby("metric")["metric_version"].agg(set).to_dict()
        for m in metrics:
            if m.name not in versions:
                if m.name not in TIMING_METRICS:
                    return False
            elif versions[m.name] != {m.version}:
                return False
        return True

    def write_story(self, method: str, story: str, rows: Iterable[MetricRow], meta: RunMeta, *,
                    inputs: str = "", load: MachineLoad | None = None, variant: str = "") -> Path:
        """Write (or replace) the rows of (method, story) atomically; `inputs`: the digest of what was
        scored; `load`: the machine's load around a timed story's generation."""
        load = load or MachineLoad(float("nan"), float("nan"), 0)
        records = [{"method": method, "story": story, "shot": r.shot, "metric": r.metric, "value": r.value,
                    "subset": r.subset, "note": r.note, "metric_version": r.metric_version, **asdict(meta),
                    "inputs": inputs, "load_before": load.before, "load_after": load.after, "cores": load.cores,
                    "variant": variant}
                   for r in rows]
        if not records:
            raise ValueError(f"no rows to write for method {method!r}, story {story!r}")
        df = pd.DataFrame.from_records(records, columns=ROW_COLUMNS)
        path = self.story_file(method, story, variant)
        write_atomic(path, df.to_csv(index=False))
        return path

    def read(self) -> pd.DataFrame:
        """All rows, in a stable order (method, story, metric, subset, shot)."""
        files = sorted(self.rows_dir.glob("*/*.csv")) if self.rows_dir.is_dir() else []
        if not files:
            return pd.DataFrame({c: pd.Series(dtype=_DTYPES[c]) for c in ROW_COLUMNS})
        frames = []
        for f in files:
            try:
                df = pd.read_csv(f, dtype=_DTYPES, keep_default_na=False,
                                 na_values={"value": _NA, "load_before": _NA, "load_after": _NA})
            except (ValueError, pd.errors.ParserError) as e:
                raise ValueError(f"{f}: unreadable rows file ({e})") from None
            for c, default in ADDED_COLUMNS.items():
                if c not in df.columns:
                    df[c] = default
            missing = [c for c in ROW_COLUMNS if c not in df.columns]
            if missing:
                raise ValueError(f"{f}: rows file lacks columns {missing}")
            frames.append(df[ROW_COLUMNS])
        rows = pd.concat(frames, ignore_index=True)
        return rows.sort_values(["method", "story", "metric", "subset", "shot"], kind="stable").reset_index(drop=True)

    def protocol_of(self, method: str) -> dict[str, set[str]]:
        """The protocol values already recorded for `method`, its variants included (to refuse mixing
        protocols: a memory-only run is compared with the normal one)."""
        d = self.method_dir(method)
        out: dict[str, set[str]] = {k: set() for k in PROTOCOL_COLUMNS}
        files = sorted(d.glob("*.csv")) + sorted(self.rows_dir.glob(f"{glob.escape(d.name)}@*/*.csv"))
        for f in files:
            df = pd.read_csv(f, dtype=str, keep_default_na=False, usecols=PROTOCOL_COLUMNS)
            for k in PROTOCOL_COLUMNS:
                out[k].update(df[k].unique())
        return out

    def stories(self, method: str, variant: str = "") -> list[str]:
        d = self.method_dir(method, variant)
        return sorted(unquote(f.stem) for f in d.glob("*.csv")) if d.is_dir() else []

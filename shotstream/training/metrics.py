"""Training logs as a tidy CSV (`step,metric,value`, one row per scalar) and a PNG of its curves.

Tidy rows let every stage log whatever scalars it likes (a DMD generator loss only every k-th
step) without a fixed header. The file is appended during a run; on resume the rows logged after
the checkpoint are dropped first, so a resumed run never duplicates a step.
"""

from __future__ import annotations

import csv
import math
import os
from collections import defaultdict
from pathlib import Path

HEADER = ["step", "metric", "value"]


class MetricWindow:
    """Mean of each scalar over the steps since the last log line (part of the checkpoint)."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, scalars: dict[str, float]) -> None:
        for key, value in scalars.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(value)
            self.counts[key] = self.counts.get(key, 0) + 1

    def means(self) -> dict[str, float]:
        return {k: self.sums[k] / self.counts[k] for k in sorted(self.sums)}

    def flush(self) -> dict[str, float]:
        means = self.means()
        self.sums, self.counts = {}, {}
        return means

    def state_dict(self) -> dict:
        return {"sums": dict(self.sums), "counts": dict(self.counts)}

    def load_state_dict(self, state: dict) -> None:
        self.sums, self.counts = dict(state["sums"]), dict(state["counts"])


def trend(values, min_points: int = 20) -> list[float] | None:
    """An exponential moving average over a tenth of the log, or None for a log too short to need one.

    A minibatch loss logged every few steps is noisy enough to hide whether it still falls; the
    average is debiased (pandas' `adjust=True`) so the curve starts at the first value, not at 0.
    """
    if len(values) < min_points:
        return None
    import pandas as pd

    return pd.Series(values, dtype=float).ewm(span=len(values) / 10, adjust=True).mean().tolist()


class MetricsCSV:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def start(self, resume_step: int | None) -> None:
        """New run (`resume_step=None`): a fresh file. Resume: keep rows up to `resume_step`."""
        rows = [r for r in self.read() if int(r["step"]) <= resume_step] if resume_step is not None else []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, HEADER)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.path)

    def append(self, step: int, scalars: dict[str, float]) -> None:
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            for key, value in scalars.items():
                writer.writerow([step, key, repr(float(value))])  # repr: exact round trip

    def read(self) -> list[dict]:
        if not self.path.is_file():
            return []
        with open(self.path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))

    def plot(self, png: str | Path) -> Path | None:
        """One panel per quantity (`loss`, `grad_norm`, `lr`, ...), one line per optimizer."""
        series: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
        for r in self.read():
            group, _, quantity = r["metric"].rpartition("/")
            series[quantity][group or quantity].append((int(r["step"]), float(r["value"])))
        if not series:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        # Losses first: they are what one looks at.
        panels = sorted(series, key=lambda q: (q != "loss", q))
        cols = min(3, len(panels))
        rows = math.ceil(len(panels) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
        for ax, quantity in zip(axes.flat, panels):
            values = []
            for group, points in series[quantity].items():
                steps, ys = zip(*points)
                smooth = None if quantity == "lr" else trend(ys)  # a schedule, not a noisy measurement
                if smooth is None:
                    ax.plot(steps, ys, label=group, linewidth=1.2)
                else:  # the raw log faint behind its trend
                    (raw,) = ax.plot(steps, ys, linewidth=0.8, alpha=0.3)
                    ax.plot(steps, smooth, color=raw.get_color(), label=group, linewidth=1.5)
                values += [y for y in ys if math.isfinite(y)]
            if values and min(values) > 0 and max(values) > 10 * min(values):
                ax.set_yscale("log")
            ax.set_title(quantity)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            if len(series[quantity]) > 1:
                ax.legend(fontsize=8)
        for ax in list(axes.flat)[len(panels) :]:
            ax.axis("off")
        fig.tight_layout()
        png = Path(png)
        tmp = png.with_name(png.stem + ".tmp.png")
        fig.savefig(tmp, dpi=90)
        plt.close(fig)
        os.replace(tmp, png)
        return png

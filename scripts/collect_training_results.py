#!/usr/bin/env python3
"""Copy what a reader should see of each training run into results/training/<stage>/:
the loss log (metrics.csv), its plot (loss.png), the resolved config and the newest sample
sheets. Usage: python scripts/collect_training_results.py [runs/autoencoder runs/teacher ...]"""

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def collect(run: Path) -> Path:
    out = ROOT / "results" / "training" / run.name
    out.mkdir(parents=True, exist_ok=True)
    for name in ("metrics.csv", "loss.png", "config.json"):
        if (run / name).is_file():
            shutil.copy2(run / name, out / name)
    samples = sorted((run / "samples").glob("step_*")) if (run / "samples").is_dir() else []
    if samples:
        for png in samples[-1].glob("*.png"):
            shutil.copy2(png, out / f"{samples[-1].name}_{png.name}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("Usage")[0])
    ap.add_argument("runs", nargs="*", type=Path, help="run folders (default: every folder of runs/)")
    args = ap.parse_args(argv)
    runs = args.runs or sorted(p for p in (ROOT / "runs").iterdir() if p.is_dir())
    missing = [str(r) for r in runs if not (r / "metrics.csv").is_file()]
    if missing:
        ap.error(f"not a training run (no metrics.csv): {', '.join(missing)}")
    for run in runs:
        print(f"{run} -> {collect(run)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

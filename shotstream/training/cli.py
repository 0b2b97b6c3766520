"""`shotstream train <stage>`: run a training stage from a JSON config and `key=value` overrides.

    shotstream train toy --config toy_smoke --out runs/toy
    shotstream train toy --out runs/toy --override steps=400 --resume     # continue, exactly
    python -m torch.distributed.run --nproc_per_node 2 -m shotstream.training.cli train toy ...

A config file is a run config: TrainConfig fields plus a `stage` object with the stage's own
options (`{"steps": 200, "lr": 3e-3, "stage": {"hidden": 64}}`); overrides use the same keys
(`steps=200`, `stage.hidden=64`). `--config` takes a path or the name of a file in
shotstream/training/configs/. `--resume` without `--config` reloads <out>/config.json.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path

from shotstream.config import _did_you_mean, apply_overrides, from_dict
from shotstream import paths
from shotstream.runtime import as_arg, check_device

# Stage name -> "module:Class", imported only when that stage runs. Register a stage with one line.
STAGES: dict[str, str] = {
    "autoencoder": "shotstream.training.autoencoder:AutoencoderStage",
    "teacher": "shotstream.training.teacher:TeacherStage",
    "ode": "shotstream.training.ode:ODEStage",
    "intra": "shotstream.training.self_forcing:IntraShotStage",
    "inter": "shotstream.training.self_forcing:InterShotStage",
    "toy": "shotstream.training.toy:ToyStage",
    "toy_distill": "shotstream.training.toy:ToyDistillStage",
    # experiments/: not in the shipped recipe (docs/experiments.md)
    "identity_teacher": "experiments.identity_teacher:IdentityTeacherStage",
    "shape_classifier": "experiments.shape_classifier:ShapeClassifierStage",
}

CONFIG_DIR = Path(__file__).parent / "configs"


def load_stage(name: str) -> type:
    if name not in STAGES:
        raise KeyError(f"unknown stage {name!r}{_did_you_mean(name, STAGES)}; choose from {sorted(STAGES)}")
    module, _, attr = STAGES[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def find_config_file(spec: str) -> Path:
    """A path, or the name of a shipped config (`toy_smoke` -> configs/toy_smoke.json)."""
    path = Path(spec)
    if path.is_file():
        return path
    shipped = CONFIG_DIR / f"{spec}.json"
    if path.suffix == "" and len(path.parts) == 1 and shipped.is_file():
        return shipped
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.json"))
    raise FileNotFoundError(f"{spec}: config file not found (shipped configs: {', '.join(names)})")


def resolve_config(stage: str, config: str | None = None, overrides=(), out: str | None = None,
                   device: str | None = None, resume: bool = False):
    """The run config of `stage`: file (or <out>/config.json on resume) < overrides < --out/--device."""
    from shotstream.training.trainer import run_config_class

    cls = run_config_class(load_stage(stage))
    path = find_config_file(config) if config else None
    if path is None and resume:
        saved = Path(out or f"{paths.RUNS}/{stage}") / "config.json"
        path = saved if saved.is_file() else None
    data = {}
    if path is not None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
    cfg = from_dict(cls, data, where=str(path or "config"))
    apply_overrides(cfg, overrides)
    if out:
        cfg.out_dir = out
    if device:
        cfg.device = device
    if not cfg.out_dir:
        cfg.out_dir = f"{paths.RUNS}/{stage}"
    cfg.validate()
    if hasattr(cfg.stage, "validate"):
        cfg.stage.validate()
    return cfg


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="train a stage (autoencoder, teacher, ode, intra, inter, toy)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", help=f"stage name: {', '.join(sorted(STAGES))}")
    p.add_argument("--config", help="JSON run config: a path or a name from shotstream/training/configs/")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="set a config field, e.g. steps=200, lr=1e-3, stage.hidden=64 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    p.add_argument("--out", help="run folder (default: out_dir of the config, else runs/<stage>)")
    p.add_argument("--device", type=as_arg(check_device), help="cpu, cuda or cuda:N (overrides the config)")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from shotstream.training.trainer import DivergenceError, train

    cfg = resolve_config(args.stage, args.config, args.override, args.out, args.device, args.resume)
    try:
        train(load_stage(args.stage), cfg, name=args.stage, resume=args.resume)
    except DivergenceError as e:
        if os.environ.get("RANK", "0") == "0":
            print(f"shotstream train: diverged: {e}", file=sys.stderr)
        return 3
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m shotstream.training.cli train ...` (what torchrun launches)."""
    from shotstream.cli import dispatch

    parser = argparse.ArgumentParser(prog="shotstream")
    add_parser(parser.add_subparsers(dest="command", metavar="<command>", required=True))
    return dispatch(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

"""The training loop shared by every stage: it optimises, checkpoints and logs, nothing else.

A *stage* (autoencoder, teacher, ODE init, intra-/inter-shot self-forcing DMD) owns its modules,
its data and its losses. The Trainer owns AdamW, bf16 autocast, gradient accumulation, data
parallelism over `torchrun` ranks, gradient clipping, EMA, divergence detection, checkpoints,
`metrics.csv`, the loss plot and the progress bar.

The stage protocol
------------------
A stage is a class built as `StageCls(config, train)`: `config` is an instance of its
`StageCls.Config` dataclass (the `stage.*` group of the run config) and `train` the resolved
run config (device, seed, batch_size, ...). It provides (see `Stage` below):

    modules()                      -> {name: nn.Module}         everything a checkpoint saves
    optimizers()                   -> {name: OptimizerSpec}     one AdamW per entry, in order
    batch(step, shard, num_shards) -> batch                     pure function of its arguments
    loss(name, batch, step)        -> (scalar Tensor, {str: float})   loss of optimizer `name`
    sample(step, out_dir)          -> None                      optional, rank 0, EMA weights
    export(out_dir)                -> Any                       optional, at the end, into final/

One training step (steps count from 1):

    batches = [batch(step, rank * grad_accum + i, world_size * grad_accum) for i < grad_accum]
    for name, spec in optimizers().items():
        if step % spec.every == 0:
            zero grads; for b in batches: (loss(name, b, step) / grad_accum).backward()
            average grads over ranks; stop if non-finite; clip; AdamW step; EMA update

Every micro-batch of every rank is one "shard" of the step's global batch, so the data of a step
is the same whatever the split into processes and accumulation steps, and a resumed run reads
exactly the batches the straight run would have read.

A two-optimizer DMD stage declares
    {"critic": OptimizerSpec(("critic",), ema=False),
     "generator": OptimizerSpec(("generator",), every=dfake_gen_update_ratio)}
and `loss` dispatches on the name to `dmd.critic_loss(...)` / `dmd.generator_loss(...)`: the
critic is updated every step, the generator every k-th step after the critic in the same step.
A frozen real-score teacher is an attribute of the stage, not a module: it is not saved.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from tqdm import tqdm

from shotstream import paths
from shotstream.checkpoint import (
    WEIGHTS_NAME,
    CheckpointError,
    check_keys,
    load_checkpoint,
    load_tensors,
    save_checkpoint,
)
from shotstream.runtime import resolve_precision
from shotstream.training import distributed
from shotstream.training.metrics import MetricsCSV, MetricWindow
from shotstream.training.state import (
    EMA,
    capture_rng,
    derive_seed,
    load_optimizer_state,
    optimizer_state,
    restore_rng,
    rng_from_tensors,
    rng_to_tensors,
    seed_everything,
)

CHECKPOINT_FORMAT = "shotstream.training/1"
_STEP_DIR = re.compile(r"step_(\d{8})")


class DivergenceError(RuntimeError):
    """A loss or gradient went NaN/inf. Training stopped; the bad state was not saved."""


@dataclass
class TrainConfig:
    """Options of the training loop, shared by every stage. A run config adds a `stage` group."""

    steps: int = 1000  # total steps of the run (a resumed run continues up to this number)
    batch_size: int = 8  # examples per micro-batch per process; global = batch_size * grad_accum * ranks
    grad_accum: int = 1  # micro-batches summed into one update
    lr: float = 1e-4  # AdamW learning rate (an OptimizerSpec may set its own)
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    warmup_steps: int = 0  # linear warm-up, then constant
    # Linear decay of the lr to 0 over the last `cooldown_steps` of `steps` (warmup-stable-decay).
    # Before the cooldown the lr does not depend on `steps`, so a constant-lr run extends exactly
    # and can be ended by a cooldown later (what the shipped teacher's phases did: docs/experiments.md).
    cooldown_steps: int = 0
    grad_clip: float = 1.0  # max global gradient norm per optimizer; 0 = no clipping (the norm is still logged)
    ema_decay: float = 0.0  # EMA of the weights (e.g. 0.999), saved and used for samples/export; 0 = off
    # Until this step the EMA copies the weights (Self-Forcing's ema_start_step): a short fine-tuning
    # stage would otherwise export mostly its starting point (0.99^150 = 22% after 150 updates).
    ema_start_step: int = 0
    # "bf16": losses run under bf16 autocast, weights and AdamW stay fp32. "auto": bf16 where the
    # device multiplies bf16 natively, else fp32 (runtime.native_bf16); a run records what it chose.
    precision: str = "auto"
    device: str = "cpu"  # "cpu", "cuda" (each torchrun process takes cuda:LOCAL_RANK), "cuda:1", ...
    seed: int = 0
    out_dir: str = ""  # "" = runs/<stage>
    log_every: int = 10  # steps between rows of metrics.csv (each row is the mean since the last)
    checkpoint_every: int = 100  # steps between checkpoints (the last step is always saved)
    keep_last: int = 1  # step_* checkpoint folders kept; `latest` points at the newest
    sample_every: int = 0  # steps between stage.sample() calls; 0 = never
    progress: bool = True  # tqdm bar on rank 0
    threads: int = 0  # CPU threads per process (torch.set_num_threads); 0 = torch's default

    def validate(self) -> "TrainConfig":
        positive = ("steps", "batch_size", "grad_accum", "log_every", "checkpoint_every", "keep_last")
        if self.threads < 0:
            raise ValueError(f"train config: threads must be >= 0, got {self.threads}")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"train config: {name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "cooldown_steps", "sample_every", "grad_clip", "weight_decay", "ema_start_step"):
            if getattr(self, name) < 0:
                raise ValueError(f"train config: {name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"train config: lr must be > 0, got {self.lr}")
        if self.cooldown_steps > self.steps:
            raise ValueError(f"train config: cooldown_steps={self.cooldown_steps} exceeds steps={self.steps}")
        if len(self.betas) != 2:
            raise ValueError(f"train config: betas must be two numbers, got {self.betas}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"train config: ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"train config: precision must be auto, fp32 or bf16, got {self.precision!r}")
        return self


def lr_factor(cfg: TrainConfig, step: int) -> float:
    """Multiplier of the base lr at `step` (1-based): linear warm-up, constant, linear cooldown to 0."""
    warm = min(1.0, step / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    cool = min(1.0, (cfg.steps - step + 1) / cfg.cooldown_steps) if cfg.cooldown_steps else 1.0
    return min(warm, cool)


@dataclass
class OptimizerSpec:
    """One AdamW over the trainable parameters of some of the stage's modules."""

    modules: tuple[str, ...]  # names from stage.modules(); a module belongs to at most one optimizer
    every: int = 1  # update on steps with step % every == 0 (DMD: the generator every k-th step)
    lr: float | None = None  # None = TrainConfig.lr (likewise betas and weight_decay)
    betas: tuple[float, float] | None = None
    weight_decay: float | None = None
    ema: bool = True  # keep EMA weights of these modules when TrainConfig.ema_decay > 0
    # {parameter name in its module: lr factor}: a new parameter among fine-tuned ones (a learned
    # indicator that starts at zero) would barely move at the fine-tuning lr.
    lr_scale: dict[str, float] = field(default_factory=dict)


class Stage(Protocol):
    """What the Trainer drives. Constructed as `StageCls(config: StageCls.Config, train: TrainConfig)`."""

    Config: type  # dataclass of the stage's options

    def modules(self) -> dict[str, nn.Module]: ...

    def optimizers(self) -> dict[str, OptimizerSpec]: ...

    def batch(self, step: int, shard: int, num_shards: int) -> Any:
        """Micro-batch `shard` of `num_shards` of step `step`, already on the device. Must depend
        only on its arguments and the config (seed a torch.Generator from them): that is what
        makes resume and multi-process runs read the same data."""
        ...

    def loss(self, name: str, batch: Any, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar loss of optimizer `name` on `batch`, and scalars to log. May use the global RNG
        (noise, timesteps, dropout): its state is checkpointed per rank."""
        ...

    # Optional, both called on rank 0 in eval mode under no_grad with the EMA weights swapped in
    # and the RNG state restored afterwards (so they never change training):
    #   def sample(self, step: int, out_dir: Path) -> None   every sample_every steps and at the end
    #   def export(self, out_dir: Path) -> Any                at the end, into <run>/final/; without
    #                                                         it the trainer writes final/<module>/


@functools.cache
def run_config_class(stage_cls: type) -> type:
    """TrainConfig plus a `stage` field holding `stage_cls.Config`: what config files describe."""
    stage_config = getattr(stage_cls, "Config", None)
    if stage_config is None or not dataclasses.is_dataclass(stage_config):
        raise TypeError(f"{stage_cls.__name__}.Config must be a dataclass of the stage's options")
    cls = dataclasses.make_dataclass(
        f"{stage_cls.__name__}RunConfig",
        [("stage", stage_config, field(default_factory=stage_config))],
        bases=(TrainConfig,),
    )
    cls.__module__ = __name__
    return cls


def train(stage_cls: type, cfg: TrainConfig, *, name: str, resume: bool = False) -> "Trainer":
    """Build a Trainer for `stage_cls` and run it to `cfg.steps`; returns the finished Trainer."""
    trainer = Trainer(stage_cls, cfg, name=name, resume=resume)
    trainer.run()
    return trainer


def _param_groups(spec: OptimizerSpec, named: list[tuple[str, nn.Parameter]]) -> list[dict]:
    """AdamW groups: one at the optimizer's lr, one per parameter of spec.lr_scale (key "lr_scale")."""
    missing = set(spec.lr_scale) - {k for k, _ in named}
    if missing:
        raise KeyError(f"lr_scale names no trainable parameter of modules {spec.modules}: {sorted(missing)}")
    groups = [{"params": [p for k, p in named if k not in spec.lr_scale], "lr_scale": 1.0}]
    groups += [{"params": [p for k, p in named if k == name], "lr_scale": f} for name, f in spec.lr_scale.items()]
    return [g for g in groups if g["params"]]


class Trainer:
    """Run folder layout (`cfg.out_dir`):

        config.json                  resolved run config (usable as --config)
        metrics.csv, loss.png        tidy scalar log and its curves
        checkpoints/step_00000100/   config.json, model.safetensors, optimizer/rng/ema.safetensors
        checkpoints/latest           symlink to the newest complete step folder
        samples/step_00000100/       whatever stage.sample() writes
        final/                       stage.export() output, else <module>/ config.json + model.safetensors
                                     (EMA weights if enabled)
    """

    def __init__(self, stage_cls: type, cfg: TrainConfig, *, name: str = "stage", resume: bool = False):
        cfg.validate()
        if hasattr(cfg.stage, "validate"):
            cfg.stage.validate()
        self.stage_cls, self.cfg, self.name, self.resume = stage_cls, cfg, name, resume
        self.out = Path(cfg.out_dir or f"{paths.RUNS}/{name}")
        self.checkpoints = self.out / "checkpoints"
        self.step = 0
        self.last_checkpoint: Path | None = None

    def run(self) -> Path:
        if self.cfg.threads > 0:
            torch.set_num_threads(self.cfg.threads)  # explicit: oversubscribed cores waste most of their time
        self.world = distributed.setup(self.cfg.device)
        # Resolved before config.json is written: a resumed run keeps the precision it started with.
        self.cfg = dataclasses.replace(self.cfg, precision=resolve_precision(self.cfg.precision, self.world.device))
        try:
            self._build()
            self._resume_or_start()
            self._train()
            distributed.barrier(self.world)  # no rank tears the group down while another still uses it
        finally:
            distributed.teardown(self.world)
        return self.out

    # -----------------------------------------------------------------------------------------
    # Setup

    def _build(self) -> None:
        cfg, world = self.cfg, self.world
        # Every rank builds the modules from the same seed; rank 0's copy is broadcast anyway.
        seed_everything(cfg.seed)
        self.stage = self.stage_cls(cfg.stage, dataclasses.replace(cfg, device=str(world.device)))
        self.modules: dict[str, nn.Module] = dict(self.stage.modules())
        self.specs: dict[str, OptimizerSpec] = dict(self.stage.optimizers())
        owner: dict[str, str] = {}
        for opt_name, spec in self.specs.items():
            if spec.every < 1:
                raise ValueError(f"optimizer {opt_name!r}: every must be >= 1, got {spec.every}")
            for m in spec.modules:
                if m not in self.modules:
                    raise KeyError(f"optimizer {opt_name!r} names module {m!r}, not one of {sorted(self.modules)}")
                if m in owner:
                    raise ValueError(f"module {m!r} is in optimizers {owner[m]!r} and {opt_name!r}")
                owner[m] = opt_name
        for module in self.modules.values():
            module.train()
            distributed.broadcast_module(module, world)
        named = {
            n: [(k, p) for m in s.modules for k, p in self.modules[m].named_parameters() if p.requires_grad]
            for n, s in self.specs.items()
        }
        self.params = {n: [p for _, p in ps] for n, ps in named.items()}
        self.optimizers = {}
        for n, spec in self.specs.items():
            if not self.params[n]:
                raise ValueError(f"optimizer {n!r} has no trainable parameters in modules {spec.modules}")
            self.optimizers[n] = torch.optim.AdamW(_param_groups(spec, named[n]), lr=self._base_lr(n))
            self._apply_hparams(n)
        ema_modules = {m: self.modules[m] for s in self.specs.values() if s.ema for m in s.modules}
        self.ema = EMA(ema_modules, cfg.ema_decay) if cfg.ema_decay > 0 and ema_modules else None
        self.window = MetricWindow()
        self.metrics = MetricsCSV(self.out / "metrics.csv")

    def _base_lr(self, name: str) -> float:
        spec = self.specs[name]
        return self.cfg.lr if spec.lr is None else spec.lr

    def _apply_hparams(self, name: str) -> None:
        """The config is the truth for betas / weight decay, also over a resumed optimizer state."""
        spec = self.specs[name]
        for group in self.optimizers[name].param_groups:
            group["betas"] = tuple(self.cfg.betas if spec.betas is None else spec.betas)
            group["weight_decay"] = self.cfg.weight_decay if spec.weight_decay is None else spec.weight_decay

    def _resume_or_start(self) -> None:
        latest = latest_checkpoint(self.checkpoints, clean=self.world.is_main)
        if self.resume:
            if latest is None:
                raise FileNotFoundError(f"{self.checkpoints}: no checkpoint to resume from")
            self._load(latest)
        elif latest is not None:
            raise ValueError(
                f"{self.out}: already holds checkpoints (newest {latest.name}); "
                "pass --resume to continue that run or choose another --out"
            )
        else:
            # Ranks draw different noise: each has its own training RNG stream.
            seed_everything(derive_seed(self.cfg.seed, 0, self.world.rank))
        if self.world.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            _write_json(self.out / "config.json", asdict(self.cfg))
            self.metrics.start(self.step if self.resume else None)
        distributed.barrier(self.world)

    # -----------------------------------------------------------------------------------------
    # The loop

    def _train(self) -> None:
        cfg, world = self.cfg, self.world
        first = self.step
        start = time.perf_counter()
        bar = tqdm(total=cfg.steps, initial=first, desc=self.name, unit="step", dynamic_ncols=True,
                   disable=not (world.is_main and cfg.progress))
        try:
            for step in range(first + 1, cfg.steps + 1):
                shards = world.world_size * cfg.grad_accum
                first_shard = world.rank * cfg.grad_accum
                batches = [self.stage.batch(step, first_shard + i, shards) for i in range(cfg.grad_accum)]
                scalars: dict[str, float] = {}
                for name, spec in self.specs.items():
                    if step % spec.every == 0:
                        scalars.update(self._update(name, batches, step))
                self.step = step
                self.window.add(scalars)
                bar.update(1)
                bar.set_postfix({k: f"{v:.4g}" for k, v in scalars.items() if k.endswith("/loss")}, refresh=False)
                if step % cfg.log_every == 0 or step == cfg.steps:
                    self._log(step, (step - first) / (time.perf_counter() - start), bar)
                if cfg.sample_every and (step % cfg.sample_every == 0 or step == cfg.steps):
                    self._sample(step)
                if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                    self._save(step)
        finally:
            bar.close()
            if world.is_main:
                self.metrics.plot(self.out / "loss.png")
        if world.is_main:
            self._export()

    def _update(self, name: str, batches: list, step: int) -> dict[str, float]:
        """One AdamW step of optimizer `name` over the micro-batches of this step."""
        cfg, params, opt = self.cfg, self.params[name], self.optimizers[name]
        lr = self._base_lr(name) * lr_factor(cfg, step)
        for group in opt.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)  # (absent in checkpoints made before it)
        for module in self.modules.values():
            module.zero_grad(set_to_none=True)

        loss_mean, bad_loss, logs = 0.0, None, MetricWindow()
        for batch in batches:
            with torch.autocast(self.world.device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
                loss, stage_logs = self.stage.loss(name, batch, step)
            if loss.ndim != 0:
                raise ValueError(f"stage loss {name!r} must be a scalar tensor, got shape {tuple(loss.shape)}")
            value = loss.detach().float().item()
            if not math.isfinite(value):
                bad_loss = value
                break  # still join the all-reduce below so that every rank stops together
            (loss / len(batches)).backward()
            loss_mean += value / len(batches)
            logs.add({k: float(v) for k, v in stage_logs.items()})

        loss_mean, nonfinite = distributed.average_gradients(params, loss_mean, bad_loss is not None, self.world)
        if nonfinite:
            what = f"loss is {bad_loss}" if bad_loss is not None else "loss is non-finite on another rank"
            raise DivergenceError(f"step {step}: optimizer {name!r}: {what}; {self._stopped()}")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf))
        if not math.isfinite(grad_norm):
            what = f"gradient norm is {grad_norm} (loss {loss_mean:.6g})"
            raise DivergenceError(f"step {step}: optimizer {name!r}: {what}; {self._stopped()}")
        opt.step()
        if self.ema is not None and self.specs[name].ema:
            self.ema.update(self.specs[name].modules, decay=0.0 if step <= cfg.ema_start_step else None)
        out = {f"{name}/loss": loss_mean, f"{name}/grad_norm": grad_norm, f"{name}/lr": lr}
        out.update({f"{name}/{k}": v for k, v in logs.flush().items()})
        return out

    def _stopped(self) -> str:
        where = f"last good checkpoint: {self.last_checkpoint}" if self.last_checkpoint else "no checkpoint saved yet"
        return f"stopped without saving ({where})"

    def _log(self, step: int, steps_per_s: float, bar) -> None:
        """A metrics.csv row every log_every steps. The last step of a run that is not a multiple
        only prints: a run extended later with --resume then logs exactly as a straight run."""
        if step % self.cfg.log_every == 0:
            means = self.window.flush()
            if self.world.is_main:
                self.metrics.append(step, means)
        else:
            means = self.window.means()
        if self.world.is_main and means:
            shown = " | ".join(f"{k} {v:.4g}" for k, v in means.items() if not k.endswith("/lr"))
            bar.write(f"step {step}/{self.cfg.steps} | {shown} | {steps_per_s:.2f} steps/s")

    def _sample(self, step: int) -> None:
        if not self.world.is_main or not hasattr(self.stage, "sample"):
            return
        out_dir = self.out / "samples" / f"step_{step:08d}"
        out_dir.mkdir(parents=True, exist_ok=True)
        with self._inference():
            self.stage.sample(step, out_dir)

    @contextlib.contextmanager
    def _inference(self):
        """Eval mode, no_grad, EMA weights in, and the RNG streams untouched afterwards (so
        sampling or exporting never changes training)."""
        rng = capture_rng()
        modes = {n: m.training for n, m in self.modules.items()}
        try:
            for m in self.modules.values():
                m.eval()
            with torch.no_grad(), self.ema.swapped_in() if self.ema else contextlib.nullcontext():
                yield
        finally:
            restore_rng(rng)
            for n, m in self.modules.items():
                m.train(modes[n])

    # -----------------------------------------------------------------------------------------
    # Checkpoints

    def _save(self, step: int) -> None:
        world = self.world
        rng_states = distributed.gather_objects(capture_rng(), world)
        fingerprints = distributed.gather_objects(self._fingerprint(), world)
        if any(f != fingerprints[0] for f in fingerprints):
            raise RuntimeError(f"step {step}: ranks hold different weights; data-parallel sync is broken")
        path = self.checkpoints / f"step_{step:08d}"
        if world.is_main:
            tensors = {f"{m}.{k}": v for m, module in self.modules.items() for k, v in module.state_dict().items()}
            opt_tensors, opt_meta = {}, {}
            for name, opt in self.optimizers.items():
                t, opt_meta[name] = optimizer_state(opt, name)
                opt_tensors.update(t)
            rng_tensors, rng_meta = rng_to_tensors(rng_states)
            extra = {"optimizer": opt_tensors, "rng": rng_tensors}
            if self.ema is not None:
                extra["ema"] = self.ema.tensors()
            config = {
                "format": CHECKPOINT_FORMAT,
                "stage_name": self.name,
                "step": step,
                "world_size": world.world_size,
                "run": asdict(self.cfg),
                "optimizers": opt_meta,
                "rng": rng_meta,
                "metric_window": self.window.state_dict(),
            }
            save_checkpoint(path, config, tensors, extra)  # atomic: a kill leaves the last one intact
            _point_latest(self.checkpoints, path.name)
            for old in _step_dirs(self.checkpoints)[: -self.cfg.keep_last]:
                shutil.rmtree(old, ignore_errors=True)
            self.metrics.plot(self.out / "loss.png")
        self.last_checkpoint = path
        distributed.barrier(world)

    def _fingerprint(self) -> list[float]:
        states = [m.state_dict() for m in self.modules.values()]
        return [float(v.double().sum()) for state in states for v in state.values() if v.is_floating_point()]

    def _load(self, path: Path) -> None:
        config, tensors = load_checkpoint(path)
        if config.get("stage_name") != self.name:
            raise CheckpointError(f"{path}: checkpoint of stage {config.get('stage_name')!r}, not {self.name!r}")
        for m, module in self.modules.items():
            state = _strip_prefix(tensors, m)
            check_keys(module.state_dict(), state, f"{path / WEIGHTS_NAME} [{m}]")
            module.load_state_dict(state)
        opt_tensors = load_tensors(path / "optimizer.safetensors")
        for name, opt in self.optimizers.items():
            if name not in config["optimizers"]:
                raise CheckpointError(f"{path}: no state for optimizer {name!r} (has {sorted(config['optimizers'])})")
            load_optimizer_state(opt, name, opt_tensors, config["optimizers"][name])
            self._apply_hparams(name)
        if self.ema is not None:
            if (path / "ema.safetensors").is_file():
                ema = load_tensors(path / "ema.safetensors")
                check_keys(self.ema.tensors(), ema, f"{path / 'ema.safetensors'}")
                self.ema.load_tensors(ema)
            elif self.world.is_main:
                print(f"note: {path} has no EMA weights; EMA starts from the loaded weights")
        if config["world_size"] == self.world.world_size:
            rng = load_tensors(path / "rng.safetensors")
            restore_rng(rng_from_tensors(rng, config["rng"], self.world.rank))
        else:
            if self.world.is_main:
                print(
                    f"note: {path} was saved by {config['world_size']} process(es), this run has "
                    f"{self.world.world_size}: same data order, fresh noise RNG streams"
                )
            seed_everything(derive_seed(self.cfg.seed, config["step"], self.world.rank))
        self.window.load_state_dict(config["metric_window"])
        self.step = int(config["step"])
        self.last_checkpoint = path

    def _export(self) -> None:
        """The trained weights as loadable folders under final/ (EMA weights when kept): the
        stage's own `export(out_dir)` if it has one, else final/<module>/ with config.json +
        model.safetensors per module."""
        final = self.out / "final"
        if hasattr(self.stage, "export"):
            final.mkdir(parents=True, exist_ok=True)
            with self._inference():
                self.stage.export(final)
            return
        for m, module in self.modules.items():
            use_ema = self.ema is not None and m in self.ema.shadow
            state = self.ema.shadow[m] if use_ema else module.state_dict()
            meta = {"stage_name": self.name, "module": m, "step": self.step, "ema": use_ema, "run": asdict(self.cfg)}
            save_checkpoint(final / m, meta, state)


# ---------------------------------------------------------------------------------------------
# Checkpoint folders


def _step_dirs(root: Path) -> list[Path]:
    """Complete step folders, oldest first (incomplete saves live in hidden temporary folders)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if _STEP_DIR.fullmatch(p.name) and p.is_dir() and not p.is_symlink())


def latest_checkpoint(root: str | Path, clean: bool = False) -> Path | None:
    """The newest complete checkpoint under `root`; `clean` drops leftovers of interrupted saves."""
    root = Path(root)
    if clean and root.is_dir():
        for p in root.iterdir():
            if not p.name.startswith((".step_", ".latest.tmp")):
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink()
    dirs = _step_dirs(root)
    return dirs[-1] if dirs else None


def _point_latest(root: Path, target: str) -> None:
    """Swap the `latest` symlink atomically (a relative link: the run folder can be moved)."""
    tmp = root / f".latest.tmp-{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, root / "latest")


def _strip_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def load_module_weights(checkpoint: str | Path, module: str, ema: bool = True) -> dict[str, torch.Tensor]:
    """State dict of one module from a training checkpoint folder (EMA weights when kept and `ema`).

    How a later stage starts from an earlier one, e.g. the ODE stage from the teacher run:
    `student.load_state_dict(load_module_weights("runs/teacher/checkpoints/latest", "model"))`.
    """
    checkpoint = Path(checkpoint)
    _, tensors = load_checkpoint(checkpoint)
    if ema and (checkpoint / "ema.safetensors").is_file():
        averaged = _strip_prefix(load_tensors(checkpoint / "ema.safetensors"), module)
        if averaged:
            return averaged
    state = _strip_prefix(tensors, module)
    if not state:
        names = sorted({k.split(".", 1)[0] for k in tensors})
        raise CheckpointError(f"{checkpoint}: no module {module!r} (has {names})")
    return state


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
    os.replace(tmp, path)

"""Stage 2: ODE initialisation of the causal student from teacher trajectories.

    shotstream ode-pairs --count 256                        # teacher trajectories -> cache/ode_pairs/ (~13 min)
    shotstream train ode --config ode                       # regress the student onto them

Pairs: the bidirectional teacher (many Euler steps, CFG) denoises next-shot examples; x is kept
at exactly the student's sigmas (the grid includes them) together with the final x0.

Student training uses teacher forcing, the exact training-time twin of cached streaming: the
sequence is [context | clean target | noisy target]; noisy chunk j attends to the context, the
clean chunks before it and itself, as a streamed chunk attends to [global, local, itself]; the
clean chunks play the t = 0 passes that wrote the local cache.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from shotstream import flow_matching as fm
from shotstream import paths
from shotstream.conditioning import concat_frames, model_velocity, next_shot_velocity, unconditional
from shotstream.config import GuidanceConfig
from shotstream.model.dit import WanDiT
from shotstream.checkpoint import file_digest, load_tensors, read_json, write_atomic
from shotstream.model.loading import export_model, from_pretrained
from shotstream.runtime import add_runtime_args, set_threads
from shotstream.training.data import NextShotBatch
from shotstream.training.state import derive_seed
from shotstream.training.next_shot import NextShotData, NextShotStage, build_config
from shotstream.training.trainer import OptimizerSpec, TrainConfig

PAIR_KEYS = ("context", "context_valid", "context_shots", "states", "x0", "shot")


# ---------------------------------------------------------------------------------------------
# Trajectories


@dataclass
class PairsConfig(NextShotData, GuidanceConfig):  # the examples it draws, the teacher's guidance
    preset: str = "tiny"
    model_overrides: tuple[str, ...] = ()
    autoencoder: str = paths.AUTOENCODER
    teacher: str = paths.TEACHER
    out: str = paths.ODE_PAIRS
    shard_size: int = 8  # examples per shard file (one teacher batch)
    steps: int = 12  # teacher Euler steps (the student's sigmas are added to the grid)

    def validate(self) -> "PairsConfig":
        NextShotData.validate(self)
        GuidanceConfig.validate(self)
        return self


def make_pairs(cfg: PairsConfig, count: int, device="cpu", seed: int = 0, progress: bool = True) -> Path:
    """Write `count` teacher trajectories as shards `pairs_XXXXX.safetensors`, and their recipe
    (teacher weights digest, sampler, seed) as pairs.json.

    Shards already on disk are kept (re-running resumes) if they were made with the same recipe:
    pairs of a retrained teacher are refused, not mixed in. Each shard is written to a temporary
    name and renamed, so an interrupted run never leaves a half-written shard.
    """
    cfg.validate()
    out = Path(cfg.out)
    teacher, tcfg, kind = from_pretrained(cfg.teacher, device=device)
    stage = NextShotStage(cfg,  # next-shot batches for the trajectory sampler
                           TrainConfig(device=str(device), seed=seed, batch_size=cfg.shard_size), teacher=cfg.teacher)
    if kind != "bidirectional":
        raise ValueError(f"{cfg.teacher}: ODE pairs need the bidirectional teacher, got a {kind} model")
    sigmas = fm.student_sigmas(tcfg.sampler.student_timesteps, tcfg.sampler.shift)
    recipe = {"teacher": cfg.teacher, "teacher_weights": weights_digest(cfg.teacher),
              "steps": cfg.steps, "guidance_scale": cfg.guidance_scale, "sigmas": sigmas.tolist(),
              **({"context_scale": cfg.context_scale} if cfg.context_scale != 1 else {}),  # (older pairs.json stay valid)
              "shard_size": cfg.shard_size, "seed": seed}
    check_pairs_recipe(out, recipe)
    null = stage.null_states, stage.null_mask
    shards = -(-count // cfg.shard_size)
    for i in tqdm(range(shards), desc="ode pairs", unit="shard", disable=not progress):
        path = out / f"pairs_{i:05d}.safetensors"
        if path.is_file():
            continue
        batch = stage.batch(i, 0, 1)
        torch.manual_seed(derive_seed(seed, i, 0x0DE))
        cond = batch.conditioning(teacher.cfg.chunk_frames)
        with torch.no_grad():
            states, x0 = fm.trajectory(
                lambda x, s: next_shot_velocity(teacher, cond, x, s),
                torch.randn_like(batch.target), sigmas, cfg.steps, tcfg.sampler.teacher_shift,
                cfg.guidance_scale, unconditional(teacher, cond, null, cfg.guidance_scale, cfg.context_scale),
            )
        tensors = {"context": batch.context, "context_valid": batch.context_valid, "context_shots": batch.context_shots,
                   "states": states, "x0": x0, "shot": batch.shot, "text": batch.text, "text_mask": batch.text_mask}
        tmp = path.with_suffix(".tmp")
        save_file({k: v.detach().to(torch.bfloat16 if v.is_floating_point() else v.dtype).contiguous().cpu()
                   for k, v in tensors.items()}, str(tmp))
        tmp.replace(path)
    done = len(list(out.glob("pairs_*.safetensors"))) * cfg.shard_size
    write_atomic(out / "pairs.json", json.dumps({**recipe, "count": done}, indent=2))
    return out


def weights_digest(model_folder: str | Path) -> str:
    return file_digest(*sorted(Path(model_folder).glob("*.safetensors")))


def check_pairs_recipe(out: Path, recipe: dict) -> None:
    """Refuse to add to (or resume) a pairs folder made with another teacher, sampler or seed."""
    meta, shards = out / "pairs.json", sorted(out.glob("pairs_*.safetensors"))
    if not meta.is_file():
        if shards:
            raise ValueError(f"{out}: {len(shards)} ODE-pair shards without pairs.json (their teacher is unknown); "
                             "move the folder aside or pass --out")
        write_atomic(meta, json.dumps({**recipe, "count": 0}, indent=2))
        return
    stored = read_json(meta)
    keys = [k for k in dict.fromkeys([*recipe, *stored]) if k not in ("teacher", "count")]  # (its weights, not its path)
    changed = [k for k in keys if stored.get(k) != recipe.get(k)]
    if changed:
        raise ValueError(f"{out} holds ODE pairs made with another {', '.join(changed)} "
                         f"({', '.join(f'{k}: {stored.get(k)!r}' for k in changed if k != 'sigmas')}); "
                         "move the folder aside or pass --out")


def check_pairs_for_student(pairs: Path, teacher: str, sigmas: torch.Tensor) -> None:
    """The ODE stage regresses onto pairs recorded at its own student sigmas by the teacher it
    starts from: anything else would train a sampler other than the one the app runs."""
    meta = pairs / "pairs.json"
    if not meta.is_file():
        raise ValueError(f"{pairs}: no pairs.json, so the pairs' teacher and sigmas are unknown; "
                         "make them again with `shotstream ode-pairs`")
    stored = read_json(meta)
    recorded = torch.tensor(stored.get("sigmas", []), dtype=sigmas.dtype)
    if recorded.shape != sigmas.shape or not torch.allclose(recorded, sigmas):
        raise ValueError(f"{pairs}: pairs recorded at sigmas {recorded.tolist()}, the student samples at {sigmas.tolist()}")
    if stored.get("teacher_weights") != weights_digest(teacher):
        raise ValueError(f"{pairs}: pairs made by another teacher than {teacher} (weights {stored.get('teacher_weights')!r}); "
                         "make them again with `shotstream ode-pairs`")


# ---------------------------------------------------------------------------------------------
# Teacher forcing


def teacher_forcing_mask(context: int, frames: int, chunk: int, device=None) -> torch.Tensor:
    """Frame mask [C+2F, C+2F] over [context | clean target | noisy target] (True = may attend).

    Context: itself. Clean chunk j: context and clean chunks <= j (the cache-writing pass).
    Noisy chunk j: context, clean chunks < j and itself (a streamed chunk being denoised).
    """
    C, F = context, frames
    block = torch.arange(F, device=device) // chunk  # chunk id of each target frame
    n = C + 2 * F
    mask = torch.zeros(n, n, dtype=torch.bool, device=device)
    mask[:, :C] = True
    mask[:C, C:] = False
    clean, noisy = slice(C, C + F), slice(C + F, n)
    mask[clean, clean] = block[None, :] <= block[:, None]
    mask[noisy, clean] = block[None, :] < block[:, None]
    mask[noisy, noisy] = block[None, :] == block[:, None]
    return mask


def teacher_forcing_velocity(model: WanDiT, batch: NextShotBatch, clean: torch.Tensor, noisy: torch.Tensor,
                             sigma: torch.Tensor, text=None, text_mask=None) -> torch.Tensor:
    """Velocity of the noisy target [B, F, ...] at per-frame sigma [B, F], with clean chunks before it."""
    B, F = noisy.shape[:2]
    cond = batch.conditioning(model.cfg.chunk_frames, text, text_mask)
    seq = torch.cat([cond.context.to(noisy.dtype), clean.to(noisy.dtype), noisy], 1)
    s = torch.cat([torch.zeros(B, cond.num_context + F, device=noisy.device), sigma], 1)
    frames = concat_frames(cond.frames(F), cond.target_frames(0, F))  # the noisy copy: the clean one's places
    v = model_velocity(model, seq, s, cond, frames, key_mask=cond.key_mask(2 * F),
                       frame_mask=teacher_forcing_mask(cond.num_context, F, model.cfg.chunk_frames, noisy.device))
    return v[:, cond.num_context + F:]


# ---------------------------------------------------------------------------------------------
# The ODE regression stage


@dataclass
class ODEConfig:
    preset: str = "tiny"
    model_overrides: tuple[str, ...] = ()  # ablations: model.shot_indicator=none|learned
    teacher: str = paths.TEACHER  # the student starts from the teacher's weights
    pairs: str = paths.ODE_PAIRS
    kind: str = "causal"  # "causal" (dual cache) or "rolling" (ablation: rolling window across shots)
    export_name: str = "student_ode"
    export_to: str = ""


def init_student(source: str, config, device) -> WanDiT:
    """A student of `config.model` with the weights of the model folder `source` (the teacher, or
    an earlier student stage). The shot indicator may differ (the ablations branch off here): a
    learned indicator's embedding starts at zero, an unused one is dropped. Everything else must
    match."""
    model, _, _ = from_pretrained(source, device=device)
    weights = {k: v for k, v in model.state_dict().items()
               if k != "shot_embedding" or config.model.shot_indicator == "learned"}
    student = WanDiT(config.model, config.video.latent_channels).to(device)
    missing, unexpected = student.load_state_dict(weights, strict=False)
    if unexpected or any(k != "shot_embedding" for k in missing):
        raise ValueError(f"{source}: its weights do not match the student config (missing {missing}, unexpected {unexpected})")
    return student


class ODEStage:
    Config = ODEConfig

    def __init__(self, config: ODEConfig, train: TrainConfig):
        self.cfg, self.train = config, train
        self.device = torch.device(train.device)
        self.config = build_config(config.preset, config.model_overrides, config.teacher)
        self.model = init_student(config.teacher, self.config, self.device)
        files = sorted(Path(config.pairs).glob("pairs_*.safetensors"))
        if not files:
            raise FileNotFoundError(f"{config.pairs}: no ODE pairs; run `shotstream ode-pairs` first")
        sigmas = fm.student_sigmas(self.config.sampler.student_timesteps, self.config.sampler.shift)
        check_pairs_for_student(Path(config.pairs), config.teacher, sigmas)
        shards = [load_tensors(f) for f in files]
        self.pairs = {k: torch.cat([s[k] for s in shards]) for k in shards[0]}
        self.sigmas = sigmas.float()

    def modules(self):
        return {"model": self.model}

    def optimizers(self):
        return {"model": OptimizerSpec(("model",))}

    def batch(self, step: int, shard: int, num_shards: int):
        g = torch.Generator().manual_seed(derive_seed(self.train.seed, step, shard))
        idx = torch.randint(len(self.pairs["x0"]), (self.train.batch_size,), generator=g)
        pick = {k: v[idx].to(self.device) for k, v in self.pairs.items()}
        F = pick["x0"].shape[1]
        # one of the student's steps per chunk, as it meets them when streaming
        step_idx = torch.randint(len(self.sigmas), (len(idx), -(-F // self.config.model.chunk_frames)), generator=g)
        return pick, step_idx.repeat_interleave(self.config.model.chunk_frames, 1)[:, :F].to(self.device)

    def loss(self, name: str, batch, step: int):
        pick, step_idx = batch
        f = lambda k: pick[k].float()  # noqa: E731
        nb = NextShotBatch(f("x0"), f("context"), pick["context_valid"], pick["context_shots"], f("text"),
                           pick["text_mask"], pick["shot"])
        B, F = step_idx.shape
        states = f("states")  # [B, S, F, C, h, w]
        noisy = torch.gather(states, 1, step_idx[:, None, :, None, None, None].expand(-1, 1, -1, *states.shape[3:]))[:, 0]
        sigma = self.sigmas.to(self.device)[step_idx]  # [B, F]
        v = teacher_forcing_velocity(self.model, nb, nb.target, noisy, sigma)
        x0_pred = fm.predict_x0(noisy, v, sigma)
        return torch.mean((x0_pred.float() - nb.target) ** 2), {}

    def export(self, out_dir: Path) -> list[Path]:
        return export_model(self.model, self.config, out_dir / self.cfg.export_name, self.cfg.export_to, kind=self.cfg.kind)


def cmd_pairs(args) -> int:
    from shotstream.config import apply_overrides

    cfg = apply_overrides(PairsConfig(teacher=args.teacher, out=args.out, steps=args.steps,
                                      guidance_scale=args.guidance, autoencoder=args.autoencoder), args.override)
    set_threads(args.threads)
    out = make_pairs(cfg, args.count, device=args.device, seed=args.seed)
    print(f"ODE pairs in {out}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("ode-pairs", help="sample teacher trajectories for ODE initialisation (resumable)",
                       description=make_pairs.__doc__)
    p.add_argument("--teacher", default=paths.TEACHER, help="bidirectional teacher folder")
    p.add_argument("--autoencoder", default=paths.AUTOENCODER)
    p.add_argument("--count", type=int, default=256, help="number of trajectories (rounded up to whole shards)")
    p.add_argument("--out", default=paths.ODE_PAIRS, help="output folder (outside git)")
    p.add_argument("--steps", type=int, default=PairsConfig.steps, help="teacher Euler steps (+ CFG: two forwards each)")
    p.add_argument("--guidance", type=float, default=PairsConfig.guidance_scale, help="teacher CFG scale")
    p.add_argument("--seed", type=int, default=0)
    add_runtime_args(p, dtype=None, threads=torch.get_num_threads())
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="PairsConfig field, e.g. shard_size=4, preset=tiny")
    p.set_defaults(func=cmd_pairs)

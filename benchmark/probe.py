"""The StoryWorld label probe: reads a shot and says who is in it, where, how framed, doing what.

The label metrics (`identity_acc`, `scene_acc`, `framing_acc`, `action_acc`) need exact answers
about a generated shot. StoryWorld renders carry ground-truth labels, so a small CNN trained on
ground-truth renders (training seeds only, never the evaluation suite) is the judge:

    probe = load_probe("checkpoints/probe")
    probe.predict(frames)   # uint8 [F, H, W, 3] -> {"identity": "red striped star", "scene": "snow", ...}

Input: `PROBE_FRAMES` frames evenly spaced over the shot (first and last included), resized to
`PROBE_SIZE`^2 and stacked along channels (early fusion), so the network sees motion (the
action label) as well as appearance; plus the middle frame at `DETAIL_SIZE`^2 (a second stem,
merged at S/2) for the fine identity details (patterns) of far-away characters. One head per label space of `shotstream.world.vocab`
(shape, colour, pattern, scene, framing, action); identity is right only when shape, colour
and pattern all are. Training augments with blur, noise, colour jitter and down-up sampling,
the artefacts a small generative model adds, so the probe judges content, not render crispness.

Layouts: frames uint8 [F, H, W, 3]; probe input float [B, PROBE_FRAMES * 3, S, S] (motion) and
[B, 3, 2S, 2S] (detail), in [0, 1].
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from shotstream import paths
from shotstream.checkpoint import CheckpointError, check_keys, load_checkpoint, save_checkpoint
from shotstream.world import vocab

PROBE_FRAMES = 8  # frames read per shot
PROBE_SIZE = 64  # pixels (square) each frame is resized to
# The middle frame is also read at twice that size: a wide shot's character is ~20 px at 128 and
# its stripes / dots vanish at 64 (pattern accuracy on wide shots fell to ~60% without it).
DETAIL_SIZE = 2 * PROBE_SIZE
CHECKPOINT_FORMAT = "shotstream-probe/2"
# The label spaces the probe predicts, in head order (indices are vocab tuple positions).
HEADS: dict[str, tuple[str, ...]] = {k: vocab.LABEL_SPACES[k] for k in ("shape", "colour", "pattern", "scene", "framing", "action")}
# Labels the benchmark scores (benchmark.metrics.LABEL_KEYS values); identity = shape+colour+pattern.
SCORED_LABELS = ("identity", "scene", "framing", "action")


def identity_name(shape: str, colour: str, pattern: str) -> str:
    """The identity label of a character: 'red striped star' (colour, pattern, shape)."""
    return f"{colour} {pattern} {shape}"


def shot_labels(labels) -> dict:
    """StoryWorld `ShotLabels` -> the benchmark's label dict (the LABEL_KEYS contract).

    characters[0] is the main character; its identity, the shot's scene, framing and action,
    `pronoun` (the caption says "it"), and the attributes separately for diagnostics. No box: the
    character metrics locate the character in every method's frames alike (benchmark.localiser)."""
    main = labels.main
    return {"identity": identity_name(main.shape, main.colour, main.pattern), "scene": labels.scene,
            "framing": labels.framing, "action": labels.action, "pronoun": bool(labels.pronoun),
            "shape": main.shape, "colour": main.colour, "pattern": main.pattern}


def sample_frame_indices(num_frames: int, n: int = PROBE_FRAMES) -> np.ndarray:
    """n indices evenly spaced over [0, num_frames - 1], first and last included; a shot shorter
    than n repeats frames (the probe always sees n)."""
    if num_frames < 1:
        raise ValueError("a shot needs at least one frame")
    return np.round(np.linspace(0, num_frames - 1, n)).astype(int)


def probe_input(frames: np.ndarray, n: int = PROBE_FRAMES, size: int = PROBE_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [F, H, W, 3] -> (motion float [n * 3, size, size], detail float [3, 2 size, 2 size]),
    in [0, 1]: n sampled frames stacked, and the middle frame at twice the size."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"probe: expected uint8 frames [F, H, W, 3], got {frames.dtype} {frames.shape}")
    x = torch.from_numpy(np.ascontiguousarray(frames[sample_frame_indices(len(frames), n)]))
    x = rearrange(x, "f h w c -> f c h w").float() / 255.0
    detail = _resize(x[n // 2 : n // 2 + 1], 2 * size)[0]  # (3, 2S, 2S)
    return rearrange(_resize(x, size), "f c h w -> (f c) h w"), detail


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.clamp(0, 1)


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.GELU())


class ProbeNet(nn.Module):
    """Early-fusion CNN: stacked frames [B, n*3, S, S] + detail frame [B, 3, 2S, 2S] -> one logit
    vector per label space.

    Both stems reach S/2 and are concatenated; then halvings to S/16 and a 2x2 average pool that
    keeps left/right: the main character is the one on the left when a companion stands on the right."""

    def __init__(self, frames: int = PROBE_FRAMES, width: int = 48):
        super().__init__()
        w = width
        self.motion_stem = _conv(3 * frames, w, 2)  # S/2
        self.detail_stem = nn.Sequential(_conv(3, w // 2, 2), _conv(w // 2, w, 2))  # 2S -> S/2
        self.features = nn.Sequential(
            _conv(2 * w, 2 * w, 2),  # S/4
            _conv(2 * w, 2 * w, 1),
            _conv(2 * w, 4 * w, 2),  # S/8
            _conv(4 * w, 4 * w, 1),
            _conv(4 * w, 4 * w, 2),  # S/16
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),  # (B, 16 w)
            nn.Dropout(0.1),
        )
        self.heads = nn.ModuleDict({k: nn.Linear(16 * w, len(v)) for k, v in HEADS.items()})

    def forward(self, x: torch.Tensor, detail: torch.Tensor) -> dict[str, torch.Tensor]:
        # x (B, n*3, S, S), detail (B, 3, 2S, 2S)
        h = torch.cat([self.motion_stem(x), self.detail_stem(detail)], dim=1)  # (B, 2w, S/2, S/2)
        h = self.features(h)  # (B, 16 w)
        return {k: head(h) for k, head in self.heads.items()}  # each (B, n_classes)


class StoryWorldProbe:
    """A trained ProbeNet behind the benchmark's `LabelProbe` protocol (`predict(frames)`)."""

    def __init__(self, net: ProbeNet, config: dict):
        self.net, self.config = net.float().eval(), config
        self.device = next(net.parameters()).device
        self.frames, self.size = config["frames"], config["size"]

    @torch.no_grad()
    def predict_batch(self, shots: Sequence[np.ndarray]) -> list[dict]:
        if not shots:
            return []
        inputs = [probe_input(s, self.frames, self.size) for s in shots]
        x = torch.stack([m for m, _ in inputs]).to(self.device)  # (B, n*3, S, S)
        detail = torch.stack([d for _, d in inputs]).to(self.device)  # (B, 3, 2S, 2S)
        logits = self.net(x, detail)
        out = [{} for _ in shots]
        for k, names in HEADS.items():
            for d, i in zip(out, logits[k].argmax(-1).tolist()):
                d[k] = names[i]
        for d in out:
            d["identity"] = identity_name(d["shape"], d["colour"], d["pattern"])
        return out

    def predict(self, frames: np.ndarray) -> dict:
        """uint8 [F, H, W, 3] -> {"identity", "scene", "framing", "action", "shape", "colour", "pattern"}."""
        return self.predict_batch([frames])[0]


def load_probe(folder: str | Path, device: str = "cpu") -> StoryWorldProbe:
    """Load a probe folder written by `train_probe` (config.json + model.safetensors)."""
    config, tensors = load_checkpoint(folder)
    if config.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{folder}: not a StoryWorld probe (config.json format != {CHECKPOINT_FORMAT})")
    if {k: list(v) for k, v in HEADS.items()} != config.get("heads"):
        raise CheckpointError(f"{folder}: the probe's label spaces differ from shotstream.world.vocab")
    net = ProbeNet(config["frames"], config["width"])
    check_keys(net.state_dict(), tensors, str(Path(folder) / "model.safetensors"))
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in tensors.items()})
    return StoryWorldProbe(net.to(device), config)


# --- data ---------------------------------------------------------------------------------------


def render_clips(stories: Iterable, video_cfg=None, n: int = PROBE_FRAMES, size: int = PROBE_SIZE):
    """Ground-truth clips of labelled stories: (x uint8 [N, n*3, S, S], detail uint8 [N, 3, 2S, 2S],
    y int64 [N, len(HEADS)])."""
    from shotstream.world import render_shot

    xs, ds, ys = [], [], []
    for story in stories:
        for k, shot in enumerate(story.shots):
            frames, _ = render_shot(story, k, video_cfg)
            motion, detail = probe_input(frames, n, size)
            xs.append((motion * 255).round().to(torch.uint8))
            ds.append((detail * 255).round().to(torch.uint8))
            main = shot.labels.main
            values = {"shape": main.shape, "colour": main.colour, "pattern": main.pattern, "scene": shot.labels.scene,
                      "framing": shot.labels.framing, "action": shot.labels.action}
            ys.append([HEADS[h].index(values[h]) for h in HEADS])
    return torch.stack(xs), torch.stack(ds), torch.tensor(ys, dtype=torch.long)


def training_clips(num_stories: int, start: int = 0):
    """Clips of training stories start..start+num_stories-1 (seeds >= TRAIN_SEED_OFFSET)."""
    from shotstream.world import training_stories

    return render_clips(training_stories(start, start + num_stories, render_frames=False))


def augment(x: torch.Tensor, g: torch.Generator, px: float = 1.0) -> torch.Tensor:
    """Generative-model artefacts on a batch [B, f*3, S, S] in [0, 1], one draw per clip (same for
    all its frames): colour gain/offset, blur, down-up sampling, noise. `px`: pixels of this
    input per pixel of the PROBE_SIZE one (the blur is in PROBE_SIZE pixels)."""
    B, C, S, _ = x.shape
    u = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731
    frames = rearrange(x, "b (f c) h w -> b f c h w", c=3)
    gain = (0.85 + 0.3 * u(B, 1, 1, 1, 1)) * (0.93 + 0.14 * u(B, 1, 3, 1, 1))  # brightness x per-channel
    offset = 0.08 * (u(B, 1, 3, 1, 1) - 0.5)
    frames = frames * gain + offset
    out = []
    for b in range(B):
        clip = frames[b]  # (f, 3, S, S)
        r = u(3)
        if r[0] < 0.5:  # gaussian blur, sigma 0.3..1.2 px
            clip = _blur(clip, px * (0.3 + 0.9 * u(1).item()), r=2 * round(px))
        if r[1] < 0.35:  # down-up sampling (a lossy decoder's softness)
            s = int(S * (0.45 + 0.4 * u(1).item()))
            clip = F.interpolate(F.interpolate(clip, size=(s, s), mode="bilinear", antialias=True, align_corners=False),
                                 size=(S, S), mode="bilinear", align_corners=False)
        if r[2] < 0.5:
            clip = clip + 0.04 * u(1).item() * torch.randn(clip.shape, generator=g)
        out.append(clip)
    return rearrange(torch.stack(out).clamp(0, 1), "b f c h w -> b (f c) h w")


def _blur(x: torch.Tensor, sigma: float, r: int = 2) -> torch.Tensor:
    """Separable gaussian blur of [N, 3, H, W] (kernel radius r)."""
    k = torch.exp(-(torch.arange(-r, r + 1, dtype=x.dtype) ** 2) / (2 * sigma**2))
    k = k / k.sum()
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).repeat(3, 1, 1, 1), groups=3)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).repeat(3, 1, 1, 1), groups=3)


# --- training and evaluation --------------------------------------------------------------------


def train_probe(x: torch.Tensor, detail: torch.Tensor, y: torch.Tensor, out_dir: str | Path, *, steps: int = 800, batch_size: int = 64,
                lr: float = 2e-3, width: int = 48, seed: int = 0, log_every: int = 100,
                extra_config: dict | None = None) -> StoryWorldProbe:
    """Train a ProbeNet on clips (render_clips' x, detail, y) and save it (fp16 weights)."""
    if len(x) < batch_size:
        raise ValueError(f"need at least batch_size={batch_size} clips, got {len(x)}")
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    frames = x.shape[1] // 3
    net = ProbeNet(frames, width).train()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        idx = torch.randint(len(x), (batch_size,), generator=g)
        # No mirroring: the main character is the left one when a companion stands on the right.
        xb, db, yb = augment(x[idx].float() / 255.0, g), augment(detail[idx].float() / 255.0, g, px=2.0), y[idx]
        logits = net(xb, db)
        loss = sum(F.cross_entropy(logits[k], yb[:, i], label_smoothing=0.05) for i, k in enumerate(HEADS))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log_every and (step % log_every == 0 or step == steps):
            print(f"train-probe step {step}/{steps} loss {loss.item():.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    net.eval()
    config = {"format": CHECKPOINT_FORMAT, "frames": frames, "size": x.shape[-1], "width": width,
              "heads": {k: list(v) for k, v in HEADS.items()},
              "train": {"clips": len(x), "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
                        "final_loss": float(loss.item())}, **(extra_config or {})}
    # fp16 on disk keeps the shipped folder small; loading casts back to fp32.
    save_checkpoint(out_dir, config, net.state_dict(), dtype=torch.float16)
    return load_probe(out_dir)


def evaluate_probe(probe: StoryWorldProbe, stories: Sequence, video_cfg=None, batch: int = 32) -> dict[str, float]:
    """Accuracy per label (identity, shape, colour, pattern, scene, framing, action) on the
    ground-truth renders of labelled `stories`; also the number of shots."""
    from shotstream.world import render_shot

    hits: dict[str, list[float]] = {}
    pending: list[tuple[np.ndarray, dict]] = []

    def flush():
        for (_, truth), pred in zip(pending, probe.predict_batch([f for f, _ in pending])):
            for k in ("identity", "shape", "colour", "pattern", "scene", "framing", "action"):
                hits.setdefault(k, []).append(float(pred[k] == truth[k]))
        pending.clear()

    for story in stories:
        for k, shot in enumerate(story.shots):
            pending.append((render_shot(story, k, video_cfg)[0], shot_labels(shot.labels)))
            if len(pending) >= batch:
                flush()
    flush()
    return {**{k: float(np.mean(v)) for k, v in hits.items()}, "shots": len(hits.get("identity", []))}


# --- command ------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=str(paths.PROBE), help="probe folder to write (default: checkpoints/probe)")
    parser.add_argument("--stories", type=int, default=1200, help="training stories to render (training seeds)")
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--width", type=int, default=48, help="CNN base width")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    parser.add_argument("--no-eval", action="store_true", help="skip the accuracy check on the eval suite's renders")


def run(args: argparse.Namespace) -> int:
    from shotstream.world import load_eval_suite

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    x, detail, y = training_clips(args.stories)
    print(f"train-probe: {len(x)} clips from {args.stories} training stories ({time.perf_counter() - t0:.0f} s)", flush=True)
    probe = train_probe(x, detail, y, args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr, width=args.width,
                        seed=args.seed, extra_config={"train_stories": args.stories})
    if not args.no_eval:
        acc = evaluate_probe(probe, load_eval_suite())
        config, tensors = load_checkpoint(args.out)
        save_checkpoint(args.out, {**config, "eval_suite_accuracy": acc}, tensors)
        print("train-probe: accuracy on the eval suite's ground-truth renders: "
              + ", ".join(f"{k} {v:.3f}" if k != "shots" else f"{v} shots" for k, v in acc.items()))
    print(f"saved {args.out}")
    return 0

"""The StoryWorld character localiser: where is the main character in each frame?

`inter_shot_identity` must compare the character, not the frame (a whole-frame cosine mostly
measures the scene). A generated shot's character box is unknown, so a small CNN trained on
ground-truth StoryWorld renders (training seeds only, never the evaluation suite) finds it:

    localiser = load_localiser("checkpoints/localiser")
    localiser.locate(frames)   # uint8 [F, H, W, 3] -> float32 [F, 4] boxes (x0, y0, x1, y1) in pixels

Ground truth: `render_shot` returns, beside each frame, the tight box of the pixels every
character painted (outline included, main character first); StoryWorld's labels are untouched.

Network: each frame resized to `LOCALISER_SIZE`^2, three stride-2 stages to a G x G grid
(G = S/8); each cell gives a logit ("the main character's centre is here") and its box
(centre offset in cells, log width and height as a fraction of the frame). One softmax over the
cells: a frame has exactly one main character. A global context vector is added to every cell,
so a cell can tell the main character (left) from an idle companion (right), as the renderer
places them. Training augments with the probe's generative-model artefacts (blur, down-up
sampling, noise, colour gain) and a random zoom and shift, so sizes between the three framings
and a misplaced character are still found.

Layouts: frames uint8 [F, H, W, 3]; network input float [B, 3, S, S] in [0, 1]; output
[B, 5, G, G] (logit, dx, dy, log w, log h); boxes float [N, 4] in pixels, x1/y1 exclusive.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from benchmark.probe import _conv, augment
from shotstream import paths
from shotstream.checkpoint import CheckpointError, check_keys, load_checkpoint, save_checkpoint

LOCALISER_SIZE = 64  # pixels (square) each frame is resized to
STRIDE = 8  # input pixels per grid cell
CHECKPOINT_FORMAT = "shotstream-localiser/1"
FRAMES_PER_SHOT = 6  # training frames taken from each rendered shot (evenly spaced, random phase)


def localiser_input(frames: np.ndarray, size: int = LOCALISER_SIZE) -> torch.Tensor:
    """uint8 [F, H, W, 3] -> float [F, 3, size, size] in [0, 1] (anisotropic resize, antialiased)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"localiser: expected uint8 frames [F, H, W, 3], got {frames.dtype} {frames.shape}")
    x = rearrange(torch.from_numpy(np.ascontiguousarray(frames)), "f h w c -> f c h w").float() / 255.0
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.clamp(0, 1)


class LocaliserNet(nn.Module):
    """Frames [B, 3, S, S] -> per-cell (logit, dx, dy, log w, log h) [B, 5, S/8, S/8]."""

    def __init__(self, width: int = 16):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _conv(3, w, 2), _conv(w, w, 1),  # S/2
            _conv(w, 2 * w, 2), _conv(2 * w, 2 * w, 1),  # S/4
            _conv(2 * w, 4 * w, 2), _conv(4 * w, 4 * w, 1),  # S/8
        )
        self.context = nn.Linear(4 * w, 4 * w)  # what the whole frame holds (is there a companion?)
        self.head = nn.Sequential(_conv(4 * w, 4 * w, 1), nn.Conv2d(4 * w, 5, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)  # (B, 4w, G, G)
        h = h + self.context(h.mean((2, 3)))[:, :, None, None]  # (B, 4w, G, G)
        return self.head(h)  # (B, 5, G, G)


def _cell_centres(grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell centres in cell units, each [G*G] in the flattened (row, column) order."""
    i, j = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    return (j.flatten() + 0.5).float(), (i.flatten() + 0.5).float()


def decode(out: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Network output [B, 5, G, G] -> (boxes [B, 4] in input pixels, confidence [B]: the softmax
    mass of the chosen cell)."""
    B, _, G, _ = out.shape
    flat = rearrange(out, "b c h w -> b (h w) c")  # (B, G*G, 5)
    prob = flat[..., 0].softmax(-1)  # (B, G*G)
    conf, cell = prob.max(-1)  # (B,)
    pick = flat[torch.arange(B), cell]  # (B, 5)
    cx0, cy0 = _cell_centres(G)
    cx = (cx0.to(out.device)[cell] + pick[:, 1]) * size / G
    cy = (cy0.to(out.device)[cell] + pick[:, 2]) * size / G
    bw, bh = pick[:, 3].exp() * size, pick[:, 4].exp() * size
    boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1).clamp(0, size)  # (B, 4)
    return boxes, conf


class CharacterLocaliser:
    """A trained LocaliserNet behind the metrics' `CharacterLocator` protocol (`locate(frames)`)."""

    def __init__(self, net: LocaliserNet, config: dict, batch_size: int = 128):
        self.net, self.config = net.float().eval(), config
        self.device = next(net.parameters()).device
        self.size, self.batch_size = config["size"], batch_size

    @torch.no_grad()
    def locate(self, frames: np.ndarray) -> np.ndarray:
        """uint8 [F, H, W, 3] -> float32 [F, 4]: the main character's box (x0, y0, x1, y1) in frame pixels."""
        x = localiser_input(frames, self.size)  # (F, 3, S, S)
        boxes = torch.cat([decode(self.net(x[i : i + self.batch_size].to(self.device)), self.size)[0].cpu()
                           for i in range(0, len(x), self.batch_size)])  # (F, 4), input pixels
        H, W = np.asarray(frames).shape[1:3]
        return (boxes * torch.tensor([W, H, W, H]) / self.size).numpy().astype(np.float32)


def load_localiser(folder: str | Path, device: str = "cpu") -> CharacterLocaliser:
    """Load a localiser folder written by `train_localiser` (config.json + model.safetensors)."""
    config, tensors = load_checkpoint(folder)
    if config.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{folder}: not a StoryWorld character localiser (config.json format != {CHECKPOINT_FORMAT})")
    net = LocaliserNet(config["width"])
    check_keys(net.state_dict(), tensors, str(Path(folder) / "model.safetensors"))
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in tensors.items()})
    return CharacterLocaliser(net.to(device), config)


# --- data ---------------------------------------------------------------------------------------


def render_frames(stories: Iterable, per_shot: int = FRAMES_PER_SHOT, size: int = LOCALISER_SIZE, seed: int = 0,
                  video_cfg=None):
    """Frames of labelled stories with the main character's ground-truth box:
    (x uint8 [N, 3, S, S], boxes float32 [N, 4] in S pixels, framing index int64 [N]).
    per_shot frames evenly spaced over each shot from a random first one (0: every frame);
    frames where the main character painted no pixel are left out."""
    from shotstream.world import FRAMINGS, render_shot

    rng = np.random.default_rng(seed)
    xs, bs, fs = [], [], []
    for story in stories:
        for k, shot in enumerate(story.shots):
            frames, boxes = render_shot(story, k, video_cfg)
            n = len(frames)
            idx = np.arange(n) if per_shot <= 0 else (rng.integers(n) + np.arange(per_shot) * n // per_shot) % n
            main = boxes[idx, 0]  # (n, 4), frame pixels
            keep = idx[~np.isnan(main).any(-1)]
            H, W = frames.shape[1:3]
            xs.append((localiser_input(frames[keep], size) * 255).round().to(torch.uint8))
            bs.append(torch.from_numpy(boxes[keep, 0] * np.array([size / W, size / H, size / W, size / H], np.float32)))
            fs.append(torch.full((len(keep),), FRAMINGS.index(shot.labels.framing)))
    return torch.cat(xs), torch.cat(bs).float(), torch.cat(fs)


def training_frames(num_stories: int, start: int = 0, per_shot: int = FRAMES_PER_SHOT, seed: int = 0):
    """render_frames of training stories start..start+num_stories-1 (seeds >= TRAIN_SEED_OFFSET)."""
    from shotstream.world import training_stories

    return render_frames(training_stories(start, start + num_stories, render_frames=False), per_shot, seed=seed)


def zoom_shift(x: torch.Tensor, boxes: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random zoom (0.8..1.25) and shift of a batch [B, 3, S, S] with its boxes [B, 4] (S pixels):
    characters of sizes between the three framings, anywhere in the frame. Edges are replicated."""
    B, _, S, _ = x.shape
    zoom = 0.8 + 0.45 * torch.rand(B, generator=g)  # output pixels per input pixel
    shift = 0.3 * (torch.rand(B, 2, generator=g) - 0.5)  # input centre offset, normalised [-1, 1] units
    theta = torch.zeros(B, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / zoom
    theta[:, :, 2] = shift
    out = F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False), mode="bilinear",
                        padding_mode="border", align_corners=False)
    # a point at normalised input p lands at (p - shift) * zoom
    norm = boxes / S * 2 - 1  # (B, 4)
    moved = (norm - shift.repeat(1, 2)) * zoom[:, None]
    return out, ((moved + 1) / 2 * S).clamp(0, S)


def box_targets(boxes: torch.Tensor, size: int, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes [B, 4] (input pixels) -> (the cell holding each centre [B], per-cell regression targets
    [B, G*G, 4]: the centre's offset from that cell's centre in cells, log w and log h / size)."""
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2 * grid / size, (boxes[:, 1] + boxes[:, 3]) / 2 * grid / size  # cells
    cell = cy.long().clamp(0, grid - 1) * grid + cx.long().clamp(0, grid - 1)  # (B,)
    x0, y0 = _cell_centres(grid)
    wh = ((boxes[:, 2:] - boxes[:, :2]).clamp(min=1.0) / size).log()  # (B, 2)
    targets = torch.stack([cx[:, None] - x0, cy[:, None] - y0, *wh[:, :, None].expand(-1, -1, grid * grid).unbind(1)], -1)
    return cell, targets  # (B,), (B, G*G, 4)


def localiser_loss(out: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Cross-entropy over the cells (the centre's cell) + L1 on the box at that cell and its 8
    neighbours (so a near miss of the argmax still decodes the right box)."""
    G = out.shape[-1]
    flat = rearrange(out, "b c h w -> b (h w) c")  # (B, G*G, 5)
    cell, targets = box_targets(boxes, size, G)
    rows, cols = torch.arange(G * G) // G, torch.arange(G * G) % G
    near = ((rows[None] - (cell // G)[:, None]).abs() <= 1) & ((cols[None] - (cell % G)[:, None]).abs() <= 1)  # (B, G*G)
    l1 = (flat[..., 1:] - targets).abs().sum(-1)  # (B, G*G)
    return F.cross_entropy(flat[..., 0], cell) + (l1 * near).sum() / near.sum()


def box_iou(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> np.ndarray:
    """IoU of paired boxes [N, 4] (x0, y0, x1, y1) -> [N]."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    iw = (np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0])).clip(min=0)
    ih = (np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1])).clip(min=0)
    inter = iw * ih
    area = lambda z: (z[:, 2] - z[:, 0]).clip(min=0) * (z[:, 3] - z[:, 1]).clip(min=0)  # noqa: E731
    return inter / np.maximum(area(a) + area(b) - inter, 1e-9)


# --- training and evaluation --------------------------------------------------------------------


def train_localiser(x: torch.Tensor, boxes: torch.Tensor, out_dir: str | Path, *, steps: int = 1000,
                    batch_size: int = 32, lr: float = 3e-3, width: int = 16, seed: int = 0, log_every: int = 100,
                    extra_config: dict | None = None) -> CharacterLocaliser:
    """Train a LocaliserNet on frames (render_frames' x, boxes) and save it (bf16 weights)."""
    if len(x) < batch_size:
        raise ValueError(f"need at least batch_size={batch_size} frames, got {len(x)}")
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    size = x.shape[-1]
    net = LocaliserNet(width).train()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        idx = torch.randint(len(x), (batch_size,), generator=g)
        # No mirroring: the main character is the left one when a companion stands on the right.
        xb, bb = zoom_shift(x[idx].float() / 255.0, boxes[idx], g)
        loss = localiser_loss(net(augment(xb, g)), bb, size)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log_every and (step % log_every == 0 or step == steps):
            print(f"train-localiser step {step}/{steps} loss {loss.item():.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    net.eval()
    config = {"format": CHECKPOINT_FORMAT, "size": size, "width": width, "stride": STRIDE,
              "train": {"frames": len(x), "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
                        "final_loss": float(loss.item())}, **(extra_config or {})}
    # bf16 on disk keeps the shipped folder small; loading casts back to fp32.
    save_checkpoint(out_dir, config, net.state_dict(), dtype=torch.bfloat16)
    return load_localiser(out_dir)


def evaluate_localiser(localiser: CharacterLocaliser, stories: Sequence, video_cfg=None) -> dict:
    """IoU of the located box with the ground-truth box over every frame of labelled `stories`'
    renders: mean, share >= 0.5, mean per framing, and the number of frames."""
    from shotstream.world import FRAMINGS, render_shot

    ious, framings = [], []
    for story in stories:
        for k, shot in enumerate(story.shots):
            frames, boxes = render_shot(story, k, video_cfg)
            keep = ~np.isnan(boxes[:, 0]).any(-1)
            ious.append(box_iou(localiser.locate(frames[keep]), boxes[keep, 0]))
            framings += [shot.labels.framing] * int(keep.sum())
    iou, framings = np.concatenate(ious), np.array(framings)
    return {"iou": float(iou.mean()), "iou>=0.5": float((iou >= 0.5).mean()),
            **{f"iou[{f}]": float(iou[framings == f].mean()) for f in FRAMINGS if (framings == f).any()},
            "frames": int(len(iou))}


# --- command ------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=str(paths.LOCALISER), help="localiser folder to write (default: checkpoints/localiser)")
    parser.add_argument("--stories", type=int, default=250, help="training stories to render (training seeds)")
    parser.add_argument("--frames-per-shot", type=int, default=FRAMES_PER_SHOT, help="training frames per rendered shot")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--width", type=int, default=16, help="CNN base width")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    parser.add_argument("--no-eval", action="store_true", help="skip the IoU check on the eval suite's renders")


def run(args: argparse.Namespace) -> int:
    from shotstream.world import load_eval_suite

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    x, boxes, _ = training_frames(args.stories, per_shot=args.frames_per_shot, seed=args.seed)
    print(f"train-localiser: {len(x)} frames from {args.stories} training stories ({time.perf_counter() - t0:.0f} s)", flush=True)
    localiser = train_localiser(x, boxes, args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                width=args.width, seed=args.seed,
                                extra_config={"train_stories": args.stories, "frames_per_shot": args.frames_per_shot})
    if not args.no_eval:
        result = evaluate_localiser(localiser, load_eval_suite())
        config, tensors = load_checkpoint(args.out)
        save_checkpoint(args.out, {**config, "eval_suite_iou": result}, tensors)
        print("train-localiser: IoU with the ground-truth box on the eval suite's renders: "
              + ", ".join(f"{k} {v:.3f}" if k != "frames" else f"{v} frames" for k, v in result.items()))
    print(f"saved {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark.localiser", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (ValueError, OSError, CheckpointError) as e:
        print(f"benchmark.localiser: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

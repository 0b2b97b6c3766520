"""Train the in-domain CLIP (`ShotStream-CLIP-tiny`) contrastively on (image, caption) pairs.

No CLIP weights can be downloaded here, so the benchmark's CLIP score and identity embeddings
come from a small open_clip model trained on StoryWorld frames and captions. Any iterable of
(uint8 image [H, W, 3], caption) pairs works; a re-iterable source (a list, a dataset object)
is cycled until `steps`, a one-shot iterator stops when exhausted.

Loss: symmetric InfoNCE over the batch, with every pair sharing the same caption counted as a
positive (frames of one shot share a caption; plain CLIP would push them apart).

    shotstream-bench train-clip                          # StoryWorld training renders -> checkpoints/clip-tiny
    shotstream-bench train-clip --manifest m.json --out folder   # any scoring manifest's videos
"""

from __future__ import annotations

import argparse
import itertools
import random
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import open_clip
import torch
import torch.nn.functional as F

from benchmark.clip import CHECKPOINT_FORMAT, DEFAULT_ARCH, ClipEncoder, build_clip
from shotstream import paths
from shotstream.checkpoint import load_checkpoint, save_checkpoint

Pair = tuple[np.ndarray, str]


def train_clip(
    pairs: Iterable[Pair],
    out_dir: str | Path,
    *,
    arch: str = DEFAULT_ARCH,
    steps: int = 2000,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 0.1,
    shuffle_buffer: int = 4096,
    seed: int = 0,
    log_every: int = 100,
    dtype: torch.dtype | None = None,
) -> ClipEncoder:
    """Train `arch` from scratch on `pairs` and save it as a checkpoint folder `out_dir`
    (`dtype`, e.g. torch.float16, casts the saved weights; loading casts back to fp32)."""
    if steps < 1 or batch_size < 2:
        raise ValueError(f"need steps >= 1 and batch_size >= 2, got steps={steps}, batch_size={batch_size}")
    model = build_clip(arch, seed=seed).train()
    encoder = ClipEncoder(model, open_clip.get_tokenizer(arch), name=arch)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    rng = random.Random(seed)

    step, seen = 0, 0
    for images, captions in _batches(pairs, batch_size, shuffle_buffer, rng):
        x = encoder.preprocess(images)  # (B, 3, S, S)
        tokens = encoder.tokenizer(captions)  # (B, L)
        loss = clip_loss(model, x, tokens, captions)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():  # CLIP's recipe: the learned temperature is capped at 100
            model.logit_scale.clamp_(0, np.log(100.0))
        step, seen = step + 1, seen + len(captions)
        if log_every and (step % log_every == 0 or step == steps):
            print(f"train-clip step {step}/{steps} loss {loss.item():.4f}", flush=True)
        if step >= steps:
            break
    if step == 0:
        raise ValueError(f"no training batch: need at least {batch_size} (image, caption) pairs")

    model.eval()
    config = {
        "format": CHECKPOINT_FORMAT,
        "arch": arch,
        "model_cfg": open_clip.get_model_config(arch),
        "train": {"steps": step, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
                  "seed": seed, "pairs_seen": seen, "final_loss": float(loss.item())},
    }
    save_checkpoint(out_dir, config, model.state_dict(), dtype=dtype)
    return ClipEncoder.from_checkpoint(out_dir)


def clip_loss(model: torch.nn.Module, images: torch.Tensor, tokens: torch.Tensor, captions: list[str]) -> torch.Tensor:
    """Symmetric contrastive loss; pairs with identical captions are all positives (soft targets)."""
    img = F.normalize(model.encode_image(images), dim=-1)  # (B, D)
    txt = F.normalize(model.encode_text(tokens), dim=-1)  # (B, D)
    logits = model.logit_scale.exp() * img @ txt.T  # (B, B)
    same = torch.tensor([[a == b for b in captions] for a in captions], dtype=logits.dtype)
    targets = same / same.sum(dim=1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


def _batches(pairs: Iterable[Pair], batch_size: int, buffer: int, rng: random.Random) -> Iterator[tuple[list, list]]:
    """Shuffled batches through a bounded buffer; cycles re-iterable sources, ends one-shot iterators."""
    reiterable = iter(pairs) is not pairs
    if reiterable and next(iter(pairs), None) is None:
        return  # cycling an empty source would never end
    source = itertools.chain.from_iterable(itertools.repeat(pairs)) if reiterable else pairs
    pool: list[Pair] = []
    for image, caption in source:
        pool.append((np.asarray(image), str(caption)))
        if len(pool) >= max(buffer, batch_size):
            yield _take(pool, batch_size, rng)
    while len(pool) >= batch_size:
        yield _take(pool, batch_size, rng)


def _take(pool: list[Pair], n: int, rng: random.Random) -> tuple[list, list]:
    picked = [pool.pop(rng.randrange(len(pool))) for _ in range(n)]
    return [p[0] for p in picked], [p[1] for p in picked]


def pairs_from_manifest(path: str | Path, every: int = 4) -> Iterator[Pair]:
    """(frame, caption) pairs from a scoring manifest (every `every`-th frame of each shot)."""
    from benchmark.manifest import load_manifest

    for story in load_manifest(path).stories:
        for frames, caption in zip(story.load_frames(), story.captions):
            for frame in frames[::every]:
                yield frame, caption


def storyworld_pairs(num_stories: int, start: int = 0, every: int = 8, size: int = 64) -> list[Pair]:
    """(frame, shot caption) pairs from StoryWorld training stories start..start+num_stories-1
    (training seeds, never the evaluation suite): every `every`-th frame of each shot, resized to
    size^2 once (the tiny CLIP reads 64^2; held in memory so training never re-renders)."""
    from shotstream.world import render_shot, training_stories

    pairs = []
    for story in training_stories(start, start + num_stories, render_frames=False):
        for k, shot in enumerate(story.shots):
            frames, _ = render_shot(story, k)
            for frame in _resize(frames[::every], size):
                pairs.append((frame, shot.caption))
    return pairs


def _resize(frames: np.ndarray, size: int) -> np.ndarray:
    """uint8 [N, H, W, 3] -> uint8 [N, size, size, 3] (antialiased, as CLIP's preprocessing does)."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()


def retrieval_check(clip: ClipEncoder, stories, seed: int = 0) -> dict[str, float]:
    """Sanity of a CLIP on ground-truth renders of labelled StoryWorld `stories`: for each shot,
    does its own caption score above a shuffled caption (a random shot of another story)?

    Returns the fraction of shots where it does, the mean CLIP score with the matching and with
    the shuffled caption, and the number of shots."""
    from shotstream.world import render_shot

    shots = [(s, k) for s in stories for k in range(s.num_shots)]
    rng = random.Random(seed)
    wins, own, other = [], [], []
    for i, (story, k) in enumerate(shots):
        while True:  # a caption of another story
            j = rng.randrange(len(shots))
            if shots[j][0] is not story:
                break
        frames = render_shot(story, k)[0]
        img = clip.encode_images(frames)  # (F, D)
        txt = clip.encode_texts([story.shots[k].caption, shots[j][0].shots[shots[j][1]].caption])  # (2, D)
        scores = 100 * (img @ txt.T).mean(0)  # (2,)
        own.append(scores[0].item())
        other.append(scores[1].item())
        wins.append(float(scores[0] > scores[1]))
    return {"match_beats_shuffled": float(np.mean(wins)), "clip_score_match": float(np.mean(own)),
            "clip_score_shuffled": float(np.mean(other)), "shots": len(shots)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark.train_clip", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", default=None,
                        help="train on a scoring manifest's shots instead of StoryWorld training renders")
    parser.add_argument("--stories", type=int, default=1500, help="StoryWorld training stories to render (default data)")
    parser.add_argument("--every", type=int, default=8, help="take every N-th frame of a shot")
    parser.add_argument("--out", default=str(paths.CLIP_TINY), help="checkpoint folder to write (default: checkpoints/clip-tiny)")
    parser.add_argument("--arch", default=DEFAULT_ARCH, help=f"open_clip architecture (default {DEFAULT_ARCH})")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    parser.add_argument("--no-eval", action="store_true", help="skip the retrieval check on the eval suite's renders")


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    if args.manifest:
        # A generator re-reads the videos each epoch instead of holding every frame in memory.
        class _Pairs:
            def __iter__(self):
                return pairs_from_manifest(args.manifest, every=args.every)

        pairs = _Pairs()
    else:
        pairs = storyworld_pairs(args.stories, every=args.every)
        print(f"train-clip: {len(pairs)} (frame, caption) pairs from {args.stories} StoryWorld training stories",
              flush=True)
    clip = train_clip(pairs, args.out, arch=args.arch, steps=args.steps, batch_size=args.batch_size,
                      lr=args.lr, seed=args.seed, dtype=torch.float16)  # fp16 on disk: the shipped folder stays small
    if not args.no_eval:
        from shotstream.world import load_eval_suite

        check = retrieval_check(clip, load_eval_suite())
        config, tensors = load_checkpoint(args.out)
        config["train"]["data"] = args.manifest or f"storyworld training stories 0..{args.stories - 1}, every {args.every}th frame"
        save_checkpoint(args.out, {**config, "eval_suite_retrieval": check}, tensors)
        print("train-clip: eval suite renders: matching caption beats a shuffled one on "
              f"{100 * check['match_beats_shuffled']:.1f}% of {check['shots']} shots (CLIP score "
              f"{check['clip_score_match']:.1f} vs {check['clip_score_shuffled']:.1f})")
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

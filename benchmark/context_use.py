"""Does a bidirectional next-shot model read its earlier shots? A check in a minute, no sampling.

    python -m benchmark.context_use                                       # shipped teacher, 20 stories
    python -m benchmark.context_use --model runs/teacher_finetune/final/teacher --limit 50

For every shot k >= 1 of the evaluation suite the model denoises the ground-truth shot, at fixed
noise levels and with the same noise in each of three conditions:

    true    its own earlier shots as context (select_context_frames, as in training)
    hidden  no context (every conditional frame masked out)
    other   the context of a shot of another story (another character: the wrong one to copy)

and the flow-matching error is measured on the latent cells of the main character
(`character_weight`). A model that carries its character from shot to shot has hidden / true
and other / true above 1, most of all on "it" shots, whose caption does not name the character.
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from shotstream import flow_matching as fm
from shotstream.autoencoder import TinyVideoAutoencoder
from shotstream.model.loading import from_pretrained
from shotstream.text_encoder import TextEncoder
from shotstream.training.data import NextShotBatch, character_weight, collate, next_shot_example
from shotstream.world.dataset import load_eval_suite

CONDITIONS = ("true", "hidden", "other")


def with_context_of(batch: NextShotBatch, other: NextShotBatch) -> NextShotBatch:
    """`batch` with the conditional frames (latents, shots, captions) of `other`."""
    C = batch.budget
    text, mask = batch.text.clone(), batch.text_mask.clone()
    text[:, :C], mask[:, :C] = other.text[:, :C], other.text_mask[:, :C]
    return dataclasses.replace(batch, context=other.context, context_valid=other.context_valid,
                               context_shots=other.context_shots, text=text, text_mask=mask)


@torch.no_grad()
def character_error(model, batch: NextShotBatch, noise: torch.Tensor, sigma: float, cells: torch.Tensor) -> torch.Tensor:
    """Per example [B]: mean squared velocity error over its character's latent cells [B, F, h, w]."""
    s = torch.full((batch.target.shape[0],), sigma, device=batch.target.device)
    v = batch.velocity(model, fm.add_noise(batch.target, noise, s), s)
    err = ((v - fm.velocity_target(batch.target, noise)) ** 2).mean(2)  # [B, F, h, w]
    return (err * cells).sum((1, 2, 3)) / cells.sum((1, 2, 3)).clamp(min=1)


def measure(model, config, autoencoder, text_encoder, stories, sigmas=(0.6, 0.9), batch_size=4, seed=0,
            progress=True) -> pd.DataFrame:
    """One row per (shot, sigma): the character-cell error in each condition."""
    examples = [next_shot_example(story, k, config) for story in stories for k in range(1, story.num_shots)]
    if len(examples) < 2:
        raise ValueError("context_use needs at least two shots with a history (stories of 2+ shots)")
    partner = [examples[(i + len(examples) // 2) % len(examples)] for i in range(len(examples))]
    device = model.device
    rows = []
    for start in tqdm(range(0, len(examples), batch_size), desc="context use", disable=not progress):
        group = examples[start:start + batch_size]
        batch = collate(group, autoencoder, text_encoder, config, device)
        variants = {"true": batch,
                    "hidden": dataclasses.replace(batch, context_valid=torch.zeros_like(batch.context_valid)),
                    "other": with_context_of(batch, collate(partner[start:start + batch_size], autoencoder,
                                                            text_encoder, config, device))}
        cells = torch.from_numpy(np.stack([character_weight(e.target_boxes, config, 2.0) > 1.5 for e in group]))
        cells = cells.to(device, batch.target.dtype)
        generator = torch.Generator().manual_seed(seed + start)
        noise = torch.randn(batch.target.shape, generator=generator).to(device, batch.target.dtype)
        for sigma in sigmas:
            errors = {c: character_error(model, b, noise, sigma, cells).cpu() for c, b in variants.items()}
            for i, e in enumerate(group):
                rows.append({"story": e.story.seed, "shot": e.shot, "sigma": sigma,
                             "subset": "pronoun" if e.story.shots[e.shot].labels.pronoun else "named",
                             **{c: float(errors[c][i]) for c in CONDITIONS}})
    return pd.DataFrame(rows)


def summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean error per (subset, sigma) and condition, and the ratios that say whether context is read."""
    table = rows.groupby(["subset", "sigma"])[list(CONDITIONS)].mean()
    table.insert(0, "shots", rows.groupby(["subset", "sigma"]).size())
    table["hidden/true"] = table["hidden"] / table["true"]
    table["other/true"] = table["other"] / table["true"]
    return table.reset_index()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="checkpoints/tiny/teacher", help="a bidirectional model folder")
    ap.add_argument("--autoencoder", default="checkpoints/tiny/autoencoder")
    ap.add_argument("--limit", type=int, default=20, help="stories of the evaluation suite (0 = all 50)")
    ap.add_argument("--sigmas", default="0.6,0.9", help="noise levels, comma-separated, in (0, 1)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    ap.add_argument("--out", default="", help="also write the per-shot rows to this CSV")
    args = ap.parse_args(argv)
    try:
        sigmas = tuple(float(s) for s in args.sigmas.split(","))
    except ValueError:
        ap.error(f"--sigmas: {args.sigmas!r} is not a comma-separated list of numbers")
    if not all(0 < s < 1 for s in sigmas):
        ap.error(f"--sigmas must lie in (0, 1), got {args.sigmas}")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        model, config, kind = from_pretrained(args.model)
        autoencoder = TinyVideoAutoencoder.from_pretrained(args.autoencoder).eval()
    except (OSError, ValueError) as e:
        ap.exit(2, f"context_use: {e}\n")
    if kind != "bidirectional":
        ap.exit(2, f"context_use: {args.model} is a {kind} model; this check reads a bidirectional one\n")
    rows = measure(model.eval(), config, autoencoder, TextEncoder(max_len=config.model.text_len),
                   load_eval_suite()[: args.limit or None], sigmas)
    if args.out:
        rows.to_csv(args.out, index=False)
    print(f"{args.model}: flow-matching error on the main character's latent cells")
    print(summary(rows).to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

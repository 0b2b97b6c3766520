"""Reconstruction PSNR of the autoencoder on the evaluation suite's ground-truth renders.

    python -m benchmark.codec                                  # shipped autoencoder, every shot
    python -m benchmark.codec --autoencoder runs/autoencoder/final/autoencoder --limit 20

PSNR = 10 log10(peak^2 / MSE) on frames in [-1, 1] (peak-to-peak 2), per shot, then averaged.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from tqdm import tqdm

from shotstream import paths
from shotstream.autoencoder import TinyVideoAutoencoder
from shotstream.video import to_model_video
from shotstream.world.dataset import load_eval_suite
from shotstream.world.render import render_shot


def shot_psnr(ae, frames: np.ndarray) -> float:
    video = to_model_video(frames, "cpu")[None]
    with torch.no_grad():
        recon = ae.decode(ae.encode(video))
    mse = torch.mean((recon.clamp(-1, 1) - video) ** 2).item()
    return 10 * np.log10(4.0 / max(mse, 1e-12))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--autoencoder", default=paths.AUTOENCODER)
    ap.add_argument("--limit", type=int, default=0, help="stories of the suite to use (0 = all 50)")
    args = ap.parse_args(argv)
    ae = TinyVideoAutoencoder.from_pretrained(args.autoencoder).eval()
    stories = load_eval_suite()[: args.limit or None]
    values = [shot_psnr(ae, render_shot(s, k, ae.cfg)[0]) for s in tqdm(stories, desc="stories") for k in range(s.num_shots)]
    print(f"{args.autoencoder}: PSNR {np.mean(values):.2f} dB (min {np.min(values):.2f}, max {np.max(values):.2f}) "
          f"over {len(values)} eval shots")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

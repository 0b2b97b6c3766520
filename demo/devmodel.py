"""Write a tiny *random* model + autoencoder folder, to run the app before a checkpoint ships.

    python -m demo.devmodel /tmp/shotstream-dev        # then: python -m demo.app --model /tmp/shotstream-dev/student

The weights are random (the video is noise-like); the geometry is the tiny preset shrunk so that
tests and a first look at the UI take seconds on a CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

import torch

DEV_OVERRIDES = (
    "model.dim=64", "model.ffn_dim=128", "model.num_heads=2", "model.num_layers=2",
    "video.height=64", "video.width=64", "video.frames_per_shot=9",
)  # fmt: skip


def write_dev_checkpoint(folder, seed: int = 0, overrides=DEV_OVERRIDES) -> Path:
    """folder/student (causal DiT) and folder/autoencoder, random weights; returns the student folder."""
    from shotstream.autoencoder import TinyVideoAutoencoder
    from shotstream.config import apply_overrides, get_preset
    from shotstream.model.dit import WanDiT
    from shotstream.model.loading import save_pretrained

    folder = Path(folder)
    cfg = apply_overrides(get_preset("tiny"), overrides).validate()
    torch.manual_seed(seed)
    model = WanDiT(cfg.model, cfg.video.latent_channels).eval()
    with torch.no_grad():  # adaLN-zero init gives a constant video; perturb so frames move
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_pretrained(model, cfg, folder / "student", kind="causal")
    TinyVideoAutoencoder(cfg.video, base_channels=8).save_pretrained(folder / "autoencoder")
    return folder / "student"


class SlowedPipeline:
    """`pipe`, but each session streams at `speed` x real time (video seconds per wall second, the
    model's own time included): the page as it is when generation is slower than playback (the
    real model on a small GPU), on any model. Used by the browser test and demo.playback_check."""

    def __init__(self, pipe, speed: float):
        if not speed > 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        self.pipe, self.speed = pipe, speed

    def __getattr__(self, name):
        return getattr(self.pipe, name)

    def session(self, *args, **kwargs):
        return _SlowedSession(self.pipe.session(*args, **kwargs), self.speed, self.pipe.config.video.fps)


class _SlowedSession:
    def __init__(self, session, speed: float, fps: float):
        self._session, self._speed, self._fps = session, speed, fps

    def __getattr__(self, name):
        return getattr(self._session, name)

    def stream(self, *args, **kwargs):
        t0, made = time.perf_counter(), 0.0
        with contextlib.closing(self._session.stream(*args, **kwargs)) as chunks:
            for chunk in chunks:  # chunk i no sooner than the video so far / speed after the start
                made += len(chunk.frames) / self._fps
                time.sleep(max(0.0, t0 + made / self._speed - time.perf_counter()))
                yield chunk


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    print(write_dev_checkpoint(args.folder, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

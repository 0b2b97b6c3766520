"""Plain helpers shared by test modules: ports and environments for `torchrun` subprocesses, and a
small random pipeline (model, pixel-space codec stand-in, hashed captions) for streaming tests."""

import os
import socket

import torch

from shotstream.autoencoder import PixelSpaceStandIn
from shotstream.config import ModelConfig, ShotStreamConfig, VideoConfig
from shotstream.model.dit import WanDiT
from shotstream.session import ShotStreamPipeline

VIDEO = VideoConfig(height=32, width=32, frames_per_shot=17, latent_channels=12)  # 5 latent frames
CHUNK = 2  # -> chunks of 2, 2, 1 latent frames


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env() -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}


class FakeTextEncoder:
    """Deterministic caption states (hash of the words) so session tests need no language model.
    `max_len` words are kept: long enough, captions behind one global caption still differ."""

    dim = 16

    def __init__(self, max_len: int = 8):
        self.max_len = max_len

    def encode(self, captions):
        states = torch.zeros(len(captions), self.max_len, self.dim)
        mask = torch.zeros(len(captions), self.max_len, dtype=torch.bool)
        for i, c in enumerate(captions):
            for j, word in enumerate(c.split()[: self.max_len]):
                g = torch.Generator().manual_seed(sum(map(ord, word)))
                states[i, j] = torch.randn(self.dim, generator=g)
                mask[i, j] = True
        return states, mask

    def null_caption(self, batch_size=1):
        states, mask = torch.zeros(batch_size, self.max_len, self.dim), torch.zeros(batch_size, self.max_len, dtype=torch.bool)
        mask[:, 0] = True
        return states, mask


def make_pipe(kind="causal", text_len: int = 8, **model_kw) -> ShotStreamPipeline:
    """A random 2-layer model on 32x32 frames (5 latent frames a shot, chunks of 2, 2, 1)."""
    cfg = ShotStreamConfig(
        video=VIDEO,
        model=ModelConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=2, text_dim=16, chunk_frames=CHUNK, **model_kw),
    )
    cfg.sampler.teacher_steps = 3
    torch.manual_seed(0)
    model = WanDiT(cfg.model, cfg.video.latent_channels).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return ShotStreamPipeline(model, cfg, PixelSpaceStandIn(cfg.video), FakeTextEncoder(text_len), kind)

"""Plain helpers shared by test modules: ports and environments for `torchrun` subprocesses, a
small random pipeline (model, pixel-space codec stand-in, hashed captions) for streaming tests,
and tiny random "released" Wan2.1 / ShotStream downloads in both layouts, imported with
`shotstream import` (test_import, the benchmark's and the demo's imported-folder tests)."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from shotstream.autoencoder import PixelSpaceStandIn
from shotstream.config import ModelConfig, ShotStreamConfig, VideoConfig
from shotstream.model.dit import WanDiT
from shotstream.session import ShotStreamPipeline
from shotstream.training.cli import load_stage, resolve_config
from shotstream.training.trainer import train

VIDEO = VideoConfig(height=32, width=32, frames_per_shot=17, latent_channels=12)  # 5 latent frames
CHUNK = 2  # -> chunks of 2, 2, 1 latent frames


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env() -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}


def metrics_registered_on_import() -> set[str]:
    """The metrics a fresh process has after importing benchmark.metrics alone, as an entry point
    does (a test module that imports a metric's module itself would register it anyway)."""
    names = subprocess.run([sys.executable, "-c", "from benchmark.metrics import METRICS; print(*METRICS)"],
                           cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, check=True)
    return set(names.stdout.split())


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


# ---------------------------------------------------------------------------------------------
# A tiny random release, in the real download layouts

SMALL_VIDEO = ["video.height=16", "video.width=16", "video.frames_per_shot=17"]  # 5 latent frames: chunks of 3, 2


def random_dit(seed: int) -> dict:
    """A 2-layer DiT in WanModel names, text_dim = the tiny umT5's width, 16 latent channels."""
    from test_umt5 import D_MODEL

    torch.manual_seed(seed)
    model = WanDiT(ModelConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=2, text_dim=D_MODEL, text_len=512), 16)
    with torch.no_grad():  # the zero-initialised head would make every output 0
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.state_dict()


def diffusers_dit(seed: int):
    """random_dit's architecture as diffusers' WanTransformer3DModel (the Diffusers layout's transformer/)."""
    from diffusers import WanTransformer3DModel
    from test_umt5 import D_MODEL

    torch.manual_seed(seed)
    model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=16,
                                  out_channels=16, text_dim=D_MODEL, freq_dim=256, ffn_dim=64, num_layers=2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def write_release(root, layout: str):
    """A Wan2.1-T2V download at tiny size: 'original' or 'diffusers' layout."""
    import json

    from safetensors.torch import save_file
    from test_umt5 import random_wan_umt5, write_tokenizer
    from test_wan_vae import tiny_vae, wan_original_keys
    from transformers import AutoTokenizer, UMT5EncoderModel

    from shotstream.text_encoder import umt5_from_wan

    root.mkdir()
    vae = tiny_vae()
    if layout == "original":
        save_file(random_dit(1), str(root / "diffusion_pytorch_model.safetensors"))
        (root / "config.json").write_text(json.dumps({
            "_class_name": "WanModel", "dim": 32, "eps": 1e-06, "ffn_dim": 64, "freq_dim": 256, "in_dim": 16,
            "model_type": "t2v", "num_heads": 2, "num_layers": 2, "out_dim": 16, "text_len": 512}))
        torch.save(wan_original_keys(vae.state_dict()), root / "Wan2.1_VAE.pth")
        vocab = write_tokenizer(root / "google" / "umt5-xxl")
        torch.save(random_wan_umt5(vocab), root / "models_t5_umt5-xxl-enc-bf16.pth")
    else:
        (root / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline"}))
        diffusers_dit(1).save_pretrained(root / "transformer")
        vae.save_pretrained(root / "vae")
        vocab = write_tokenizer(root / "tokenizer")
        config, state = umt5_from_wan(random_wan_umt5(vocab))
        text_encoder = UMT5EncoderModel(config)
        text_encoder.load_state_dict(state)
        text_encoder.save_pretrained(root / "text_encoder")
        AutoTokenizer.from_pretrained(root / "tokenizer")  # loads offline
    return root


def write_shotstream_checkpoint(file, seed: int = 2) -> dict:
    """A ShotStream training checkpoint, {"generator_ema": {"model.<WanModel key>": ...}}; returns
    the DiT's state in WanModel names."""
    state = random_dit(seed)
    torch.save({"generator_ema": {f"model.{k}": v for k, v in state.items()}}, file)
    return state


def import_tiny_release(root, layout: str = "original"):
    """`shotstream import` of a tiny random release (Wan download + ShotStream checkpoint) into
    root/model, at SMALL_VIDEO's 16x16, 17-frame shots; returns the model folder."""
    from shotstream.importer import import_release

    root.mkdir(parents=True, exist_ok=True)
    wan = write_release(root / f"Wan2.1-T2V-{layout}", layout)
    write_shotstream_checkpoint(root / "shotstream.pt")
    return import_release(wan, root / "model", checkpoint=root / "shotstream.pt", overrides=SMALL_VIDEO)


def run_stage(stage, config, out, *overrides):
    """Train a stage from a shipped config and overrides; its final/ folder."""
    cfg = resolve_config(stage, config, list(overrides), out=str(out))
    train(load_stage(stage), cfg, name=stage)
    return out / "final"

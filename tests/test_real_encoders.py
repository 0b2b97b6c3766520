"""Real encoders for `shotstream-bench score`, each tested on a tiny random model written in its
released layout: CLIP in every open_clip file layout (state dict, OpenAI's TorchScript archive, a
wrapped training checkpoint), DINOv2 (identity) and OWLv2 (the character's box) as transformers
folders, and the CLI that takes them (--clip-*, --identity-encoder, --detector, --device)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from benchmark.cli import main as bench_main
from benchmark.clip import ClipEncoder, build_clip
from shotstream.checkpoint import CheckpointError

ARCH = "ShotStream-CLIP-tiny"  # an open_clip CLIP in OpenAI's key layout (token_embedding, visual.conv1, ...)


def frames(seed=0, n=3, size=48) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def clip_model() -> torch.nn.Module:
    return build_clip(ARCH, seed=3).eval()


def write_openai_torchscript(model: torch.nn.Module, file: Path) -> None:
    """The layout of OpenAI's ViT-B-32.pt: a traced fp16 CLIP whose state dict also holds its sizes
    (input_resolution, context_length, vocab_size) and the causal attention mask."""
    import copy

    m = copy.deepcopy(model)
    for k, v in (("input_resolution", 64), ("context_length", 77), ("vocab_size", 49408)):
        m.__dict__.pop(k, None)
        m.register_buffer(k, torch.tensor(v))
    traced = torch.jit.trace(m, (torch.zeros(1, 3, 64, 64), torch.zeros(1, 77, dtype=torch.long)),
                             check_trace=False, strict=False)
    torch.jit.save(traced.half(), str(file))


@pytest.mark.parametrize("layout", ["safetensors", "torchscript", "wrapped"])
def test_clip_loads_from_every_open_clip_file_layout(layout, clip_model, tmp_path, capsys):
    state = clip_model.state_dict()
    file = tmp_path / ("w.safetensors" if layout == "safetensors" else "w.pt")
    if layout == "safetensors":
        save_file(state, file)
    elif layout == "torchscript":
        write_openai_torchscript(clip_model, file)
    else:  # open_clip's training checkpoint: DDP's module. prefix inside "state_dict", beside the optimiser
        torch.save({"epoch": 3, "name": "run", "state_dict": {f"module.{k}": v for k, v in state.items()},
                    "optimizer": {"state": {}, "param_groups": []}}, file)
    enc = ClipEncoder.from_arch(ARCH, file)
    ref = ClipEncoder(clip_model, enc.tokenizer, name="ref")
    # TorchScript's weights are fp16 (as OpenAI ships them): equal to the model's up to that rounding
    tol = 2e-3 if layout == "torchscript" else 0
    assert torch.allclose(enc.encode_images(frames()), ref.encode_images(frames()), atol=tol, rtol=0)
    assert torch.allclose(enc.encode_texts(["a red fox"]), ref.encode_texts(["a red fox"]), atol=tol, rtol=0)
    assert enc.name.startswith(f"{ARCH}@")
    # an OpenAI archive was trained with QuickGELU: an architecture without it is named in a warning
    assert ("pass --clip-arch ShotStream-CLIP-tiny-quickgelu" in capsys.readouterr().err) == (layout == "torchscript")


def test_clip_file_errors_say_what_is_wrong(clip_model, tmp_path):
    truncated = tmp_path / "t.pt"
    write_openai_torchscript(clip_model, truncated)
    truncated.write_bytes(truncated.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="unreadable or truncated"):
        ClipEncoder.from_arch(ARCH, truncated)
    other = tmp_path / "other.safetensors"
    save_file({"visual.conv1.weight": torch.zeros(2, 2)}, other)
    with pytest.raises(CheckpointError, match="missing keys"):
        ClipEncoder.from_arch(ARCH, other)

"""CLIP encoders for the benchmark: any open_clip architecture, weights from a local file only.

Nothing here downloads. `ClipEncoder.from_arch("ViT-B-32", "/path/weights.safetensors")` builds the
architecture with `pretrained=None` and loads the weights from the path, in any of the layouts
open_clip reads (`read_clip_weights`): a state dict (.safetensors / .pt / .bin), OpenAI's
TorchScript release (ViT-B-32.pt: pass the `-quickgelu` architecture it was trained with), or a
wrapped training checkpoint ({"state_dict": {"module.visual...": ...}, "epoch": ...}); a missing
or mismatched file is a clear error. The in-domain default (`ShotStream-CLIP-tiny`, config in
`clip_configs/ShotStream-CLIP-tiny.json`, the one place its sizes live) is trained by
`benchmark/train_clip.py` and saved as a checkpoint folder, loaded with `load_clip(folder)`.

Layouts: images in are numpy uint8 [N, H, W, 3] (or a list of [H, W, 3] of any sizes);
embeddings out are torch float [N, D], L2-normalised.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from einops import rearrange
from open_clip.model import convert_to_custom_text_state_dict

from shotstream.checkpoint import CheckpointError, check_keys, file_digest, load_checkpoint, load_tensors

CLIP_CONFIG_DIR = Path(__file__).parent / "clip_configs"
DEFAULT_ARCH = "ShotStream-CLIP-tiny"
CHECKPOINT_FORMAT = "shotstream-clip/1"

# Registering the folder makes the project's architectures known to open_clip by name
# (open_clip.create_model("ShotStream-CLIP-tiny", pretrained=None)).
open_clip.add_model_config(CLIP_CONFIG_DIR)

# OpenAI CLIP normalisation, open_clip's default for architectures without a preprocess config.
_MEAN = open_clip.OPENAI_DATASET_MEAN
_STD = open_clip.OPENAI_DATASET_STD


class ClipEncoder:
    """An open_clip model + its tokenizer + the pixel preprocessing, with normalised embeddings."""

    def __init__(self, model: torch.nn.Module, tokenizer, name: str, batch_size: int = 64):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name  # recorded in every row as the protocol's `encoder`
        self.batch_size = batch_size
        visual = model.visual
        size = visual.image_size
        self.image_size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        cfg = getattr(visual, "preprocess_cfg", None) or {}
        self.mean = torch.tensor(cfg.get("mean", _MEAN)).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.get("std", _STD)).view(1, 3, 1, 1)

    @classmethod
    def from_arch(cls, arch: str, weights: str | Path, device: str = "cpu") -> "ClipEncoder":
        """Build open_clip `arch` untrained, then load the state dict from the local file `weights`."""
        if arch not in open_clip.list_models():
            raise ValueError(f"unknown open_clip architecture {arch!r} (see open_clip.list_models())")
        weights = Path(weights)
        if not weights.is_file():
            raise FileNotFoundError(
                f"{weights}: CLIP weights file not found (weights are never downloaded; pass a local "
                f".safetensors/.pt file, or train the in-domain one with `shotstream-bench train-clip`)"
            )
        model = _create_untrained(arch, device)
        if is_torchscript(weights) and not (open_clip.get_model_config(arch) or {}).get("quick_gelu"):
            print(f"shotstream-bench: warning: {weights.name} is a TorchScript CLIP (OpenAI's release), trained with "
                  f"QuickGELU; {arch!r} uses GELU: pass --clip-arch {arch}-quickgelu", file=sys.stderr)
        _load_state(model, read_clip_weights(weights), str(weights))
        return cls(model, open_clip.get_tokenizer(arch), name=f"{arch}@{file_digest(weights)}")

    @classmethod
    def from_checkpoint(cls, folder: str | Path, device: str = "cpu") -> "ClipEncoder":
        """Load a folder written by `benchmark.train_clip.train_clip` (config.json + model.safetensors)."""
        config, tensors = load_checkpoint(folder)
        if config.get("format") != CHECKPOINT_FORMAT or "arch" not in config:
            raise CheckpointError(f"{folder}: not a ShotStream CLIP checkpoint (config.json format != {CHECKPOINT_FORMAT})")
        arch = config["arch"]
        if arch not in open_clip.list_models():
            raise CheckpointError(f"{folder}: architecture {arch!r} is not registered with open_clip")
        if open_clip.get_model_config(arch) != config.get("model_cfg"):
            raise CheckpointError(
                f"{folder}: saved model_cfg differs from the registered {arch!r} config "
                f"({CLIP_CONFIG_DIR / (arch + '.json')}); the config changed since training"
            )
        model = _create_untrained(arch, device)
        _load_state(model, tensors, str(folder))
        weights = Path(folder) / "model.safetensors"
        return cls(model, open_clip.get_tokenizer(arch), name=f"{arch}@{file_digest(weights)}")

    def preprocess(self, images: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
        """uint8 [N, H, W, 3] (or list of [H, W, 3]) -> float [N, 3, S, S], CLIP-normalised.

        Resize the short side to S then centre-crop, as CLIP's own transform does.
        """
        if isinstance(images, np.ndarray) and images.ndim == 3:
            images = images[None]
        out = []
        for img in images:
            img = np.asarray(img)
            if img.ndim != 3 or img.shape[-1] != 3 or img.dtype != np.uint8:
                raise ValueError(f"expected uint8 images [H, W, 3], got {img.dtype} {img.shape}")
            out.append(_resize_center_crop(torch.from_numpy(np.ascontiguousarray(img)), self.image_size))
        x = torch.stack(out)  # (N, 3, S, S) in [0, 1]
        return (x - self.mean) / self.std

    @torch.no_grad()
    def encode_images(self, images: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
        """Normalised image embeddings, float [N, D]."""
        feats = []
        for i in range(0, len(images), self.batch_size):
            x = self.preprocess(images[i : i + self.batch_size])
            feats.append(self.model.encode_image(x.to(_device(self.model))).float().cpu())
        return F.normalize(torch.cat(feats), dim=-1)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Normalised text embeddings, float [M, D]."""
        tokens = self.tokenizer(list(texts)).to(_device(self.model))
        return F.normalize(self.model.encode_text(tokens).float().cpu(), dim=-1)

    def clip_score(self, frames: np.ndarray, caption: str) -> float:
        """max(100 * mean_f cos(E_image(frame_f), E_text(caption)), 0), torchmetrics' CLIPScore."""
        cos = self.encode_images(frames) @ self.encode_texts([caption])[0]  # (F,)
        return max(100.0 * cos.mean().item(), 0.0)


def load_clip(folder: str | Path, device: str = "cpu") -> ClipEncoder:
    """Load the in-domain CLIP trained by `shotstream-bench train-clip`."""
    return ClipEncoder.from_checkpoint(folder, device=device)


def build_clip(arch: str = DEFAULT_ARCH, seed: int = 0) -> torch.nn.Module:
    """A freshly initialised open_clip model of `arch` (deterministic by seed), for training."""
    torch.manual_seed(seed)
    return _create_untrained(arch)


def _create_untrained(arch: str, device: str = "cpu") -> torch.nn.Module:
    # open_clip warns "No pretrained weights loaded" on every pretrained=None build; here that is
    # the intent (weights come from a local file next), so the warning is filtered.
    with _quiet_open_clip():
        return open_clip.create_model(arch, pretrained=None, device=device)


@contextlib.contextmanager
def _quiet_open_clip():
    class _Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "No pretrained weights loaded" not in record.getMessage()

    root, drop = logging.getLogger(), _Drop()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def is_torchscript(file: Path) -> bool:
    """A TorchScript archive (torch.jit.save): a zip holding the module's code beside its tensors."""
    try:
        with zipfile.ZipFile(file) as z:
            return any(name.split("/", 1)[-1].startswith("code/") for name in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def read_clip_weights(file: str | Path) -> dict[str, torch.Tensor]:
    """A CLIP state dict from any local open_clip file: safetensors, a torch state dict, OpenAI's
    TorchScript release, or a wrapped training checkpoint ("state_dict" / "model" key, "module."
    prefix of DistributedDataParallel). Errors name the file and what it is."""
    file = Path(file)
    if is_torchscript(file):
        try:
            state = torch.jit.load(str(file), map_location="cpu").state_dict()
        except RuntimeError as e:
            raise CheckpointError(f"{file}: unreadable TorchScript archive ({str(e).splitlines()[0]})") from None
        # OpenAI's archive keeps its sizes as tensors beside the weights (as open_clip drops them)
        state = {k: v for k, v in state.items() if k not in ("input_resolution", "context_length", "vocab_size")}
    else:
        state = load_tensors(file)  # (unwraps "state_dict" / "model")
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def _load_state(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    expected = model.state_dict()
    # Non-persistent buffers (the text tower's causal attn_mask) are rebuilt by the model; a
    # traced archive stores them, so they are not weights to compare.
    rebuilt = {name for name, _ in model.named_buffers()} - set(expected)
    tensors = {k: v for k, v in tensors.items() if k not in rebuilt}
    if "positional_embedding" in tensors and "positional_embedding" not in expected:
        tensors = convert_to_custom_text_state_dict(tensors)  # CLIP layout into a CustomTextCLIP
    for k in ("logit_scale", "logit_bias"):  # a scalar or a 1-element vector, by open_clip version
        if k in tensors and k in expected and tensors[k].numel() == expected[k].numel() == 1:
            tensors[k] = tensors[k].reshape(expected[k].shape)
    check_keys(expected, tensors, source)
    model.load_state_dict(tensors, strict=True)  # (copies cast OpenAI's fp16 weights to the model's dtype)


def _resize_center_crop(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 [H, W, 3] -> float [3, h, w] in [0, 1]."""
    x = rearrange(img, "h w c -> 1 c h w").float() / 255.0
    h, w = x.shape[-2:]
    scale = max(size[0] / h, size[1] / w)
    nh, nw = max(size[0], round(h * scale)), max(size[1], round(w * scale))
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    top, left = (nh - size[0]) // 2, (nw - size[1]) // 2
    return x[0, :, top : top + size[0], left : left + size[1]].clamp(0, 1)


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


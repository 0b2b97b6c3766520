"""Real-video judges from local transformers folders: DINOv2 (identity) and OWLv2 (the character's box).

Nothing here downloads: each loads a folder as `save_pretrained` (or a hub download) writes it,
with `local_files_only`. On real videos the character is located by an open-vocabulary detector
and its crops are embedded by DINOv2, as multi-shot papers measure identity (the subject, not the
frame); on StoryWorld the in-domain localiser and CLIP do the same.

    IdentityEncoder.from_pretrained("dinov2-base/")           crops -> normalised [N, D] (CLS, layer-normed)
    CharacterDetector.from_pretrained("owlv2-base/", "a fox")  frames [F, H, W, 3] -> boxes [F, 4] (`locate`)

Each has a `name` (model type, folder, checksum of its config and weights) recorded in every row's
`encoder`, beside the CLIP's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from shotstream.checkpoint import CheckpointError, file_digest

DINO_TYPES = ("dinov2", "dinov2_with_registers")
DETECTOR_TYPES = ("owlv2",)


def _open(folder: str | Path, kinds: tuple[str, ...], what: str, flag: str):
    """(config, folder's name) of a transformers folder of one of `kinds`, or a clear error."""
    from transformers import AutoConfig

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder}: not a transformers folder (no config.json); {flag} takes a local {what} "
                              "folder (weights are never downloaded)")
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
    except (ValueError, OSError) as e:
        raise CheckpointError(f"{folder}/config.json: unreadable ({str(e).splitlines()[0]})") from None
    if config.model_type not in kinds:
        raise CheckpointError(f"{folder}: a {config.model_type!r} model; {flag} takes {what} "
                              f"(config.json model_type {' or '.join(map(repr, kinds))})")
    return config


def folder_name(folder: str | Path, model_type: str) -> str:
    """`<model_type>:<folder>@<checksum of config.json and the weights>`: which model scored a row."""
    folder = Path(folder)
    files = [folder / "config.json", *sorted(f for f in folder.iterdir() if f.suffix in (".safetensors", ".bin"))]
    return f"{model_type}:{folder.resolve().name}@{file_digest(*files)}"


def _load(loader, folder: Path, device: str):
    try:
        return loader.from_pretrained(folder, local_files_only=True).to(device).eval()
    except (OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{folder}: unreadable model ({str(e).splitlines()[0]})") from None


def _processor(loader, folder: Path):
    try:
        return loader.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{folder}: no usable preprocessing files (preprocessor_config.json, tokenizer) "
                              f"({str(e).splitlines()[0]})") from None


class IdentityEncoder:
    """DINOv2 image embeddings: the layer-normed CLS token, L2-normalised (the DINO identity score's)."""

    def __init__(self, model: torch.nn.Module, processor, name: str, batch_size: int = 32):
        self.model, self.processor, self.name, self.batch_size = model, processor, name, batch_size

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str = "cpu") -> "IdentityEncoder":
        from transformers import AutoImageProcessor, AutoModel

        config = _open(folder, DINO_TYPES, "a DINOv2 folder", "--identity-encoder")
        folder = Path(folder)
        return cls(_load(AutoModel, folder, device), _processor(AutoImageProcessor, folder),
                   folder_name(folder, config.model_type))

    @torch.no_grad()
    def encode_images(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """uint8 images [H, W, 3] of any sizes -> float [N, D], normalised."""
        device = next(self.model.parameters()).device
        out = []
        for i in range(0, len(images), self.batch_size):
            batch = [np.ascontiguousarray(img) for img in images[i : i + self.batch_size]]
            pixels = self.processor(images=batch, return_tensors="pt")["pixel_values"].to(device)
            out.append(self.model(pixel_values=pixels).pooler_output.float().cpu())  # (B, D)
        return F.normalize(torch.cat(out), dim=-1)


class CharacterDetector:
    """OWLv2: the box that best matches a text query (the story's main character) in every frame.

    Always one box per frame, the highest-scoring one, so a shot's crops follow the character even
    where the detector is unsure (`character_crops` in benchmark.metrics crops to it)."""

    def __init__(self, model: torch.nn.Module, processor, query: str, name: str, batch_size: int = 8):
        if not query.strip():
            raise ValueError("the detector's query is empty: say what the main character is (--detector-query)")
        self.model, self.processor, self.query, self.batch_size = model, processor, query, batch_size
        self.name = f"{name}[{query}]"

    @classmethod
    def from_pretrained(cls, folder: str | Path, query: str = "a person", device: str = "cpu") -> "CharacterDetector":
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        config = _open(folder, DETECTOR_TYPES, "an OWLv2 folder", "--detector")
        folder = Path(folder)
        return cls(_load(AutoModelForZeroShotObjectDetection, folder, device), _processor(AutoProcessor, folder),
                   query, folder_name(folder, config.model_type))

    @torch.no_grad()
    def locate(self, frames: np.ndarray) -> np.ndarray:
        """uint8 [F, H, W, 3] -> float [F, 4]: (x0, y0, x1, y1) in pixels, inside the frame."""
        device = next(self.model.parameters()).device
        h, w = frames.shape[1:3]
        boxes = []
        for i in range(0, len(frames), self.batch_size):
            batch = list(frames[i : i + self.batch_size])
            inputs = self.processor(text=[[self.query]] * len(batch), images=batch, return_tensors="pt")
            out = self.model(**inputs.to(device))
            best = out.logits[..., 0].argmax(-1)  # (B,) the patch whose box matches the query best
            cx, cy, bw, bh = out.pred_boxes[torch.arange(len(batch)), best].float().cpu().unbind(-1)  # (B,) each
            # OWLv2 pads every image to a square at its bottom and right: boxes are relative to that square
            side = max(h, w)
            boxes.append(torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1) * side)
        xyxy = torch.cat(boxes).numpy()  # (F, 4)
        return np.clip(xyxy, 0, [w, h, w, h])

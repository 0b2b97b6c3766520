"""Checkpoints are folders: `config.json` + `model.safetensors` (diffusers-style), written atomically.

An interrupted save never corrupts the last good checkpoint: everything is written into a
temporary sibling folder which is renamed over the target only when complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class CheckpointError(ValueError):
    """A checkpoint folder is missing, unreadable, or does not match the model."""


def save_checkpoint(
    path: str | Path,
    config: dict,
    tensors: dict[str, torch.Tensor],
    extra: dict[str, dict[str, torch.Tensor]] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write `config` and `tensors` (and optional extra safetensors files) as folder `path`.

    `dtype` casts floating tensors before saving (e.g. torch.bfloat16 for shipped weights).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2), encoding="utf-8")
        files = {WEIGHTS_NAME: tensors, **{f"{k}.safetensors": v for k, v in (extra or {}).items()}}
        for name, group in files.items():
            group = {
                k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().contiguous().cpu()
                for k, v in group.items()
            }
            save_file(group, str(tmp / name))
        _fsync_dir(tmp)
        # Replace atomically: move the old folder aside, rename the new one in, drop the old one.
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def load_checkpoint(path: str | Path, name: str = WEIGHTS_NAME) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read (config dict, tensors) from a checkpoint folder, with errors that name the file."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: checkpoint folder not found")
    cfg_file, weights = path / CONFIG_NAME, path / name
    if not weights.is_file():
        raise CheckpointError(f"{weights}: missing from checkpoint folder")
    return read_json(cfg_file), load_tensors(weights)


def read_json(file: str | Path) -> dict:
    """A checkpoint's config.json, or a CheckpointError naming the file."""
    file = Path(file)
    if not file.is_file():
        raise CheckpointError(f"{file}: missing from checkpoint folder")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{file}: expected a JSON object, got {type(data).__name__}")
    return data


def file_digest(*files: str | Path, length: int = 10) -> str:
    """Short sha256 of the files' bytes, in order: names a weights version (e.g. in results)."""
    h = hashlib.sha256()
    for path in files:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:length]


def load_tensors(file: str | Path) -> dict[str, torch.Tensor]:
    """Load a safetensors (or torch .pt/.pth/.bin) file; a truncated file gives a clear error."""
    file = Path(file)
    if not file.is_file():
        raise CheckpointError(f"{file}: weights file not found")
    try:
        if file.suffix == ".safetensors":
            return load_file(str(file))
        state = torch.load(str(file), map_location="cpu", weights_only=True)
    except (SafetensorError, RuntimeError, OSError, EOFError, ValueError) as e:
        raise CheckpointError(f"{file}: unreadable or truncated weights file ({e})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict", state.get("model")), dict):
        state = state.get("state_dict", state.get("model"))  # common .pt wrappers
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{file}: expected a dict of tensors")
    return state


def check_keys(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], source: str) -> None:
    """Strict key and shape check; the error names every missing, unexpected and misshaped key."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = [
        f"{k}: checkpoint {tuple(found[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(found))
        if tuple(found[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {_abbrev(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_abbrev(unexpected)}")
        if shapes:
            parts.append(f"shape mismatch {_abbrev(shapes)}")
        raise CheckpointError(f"{source}: " + "; ".join(parts))


def _abbrev(items: list[str], n: int = 8) -> str:
    head = ", ".join(items[:n])
    return f"[{head}{f', ... ({len(items) - n} more)' if len(items) > n else ''}]"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write `data` to `path` through a fsync'ed temporary sibling and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass

"""Model folders (config.json + model.safetensors) and the official Wan2.1 / ShotStream layouts.

`WanDiT` uses Wan's own parameter names, so an official checkpoint maps onto it by stripping the
wrappers training code adds (`model.`, `generator.`, `module.`, FSDP / compile prefixes). Loading
is strict: any missing, unexpected or misshaped key is named in the error.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from shotstream.checkpoint import CheckpointError, check_keys, load_checkpoint, load_tensors, read_json, save_checkpoint
from shotstream.config import ModelConfig, ShotStreamConfig, from_dict
from shotstream.model.dit import WanDiT

# Prefixes that Wan / Self-Forcing / ShotStream training wrappers put in front of WanModel keys.
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "_fsdp_wrapped_module.", "generator.", "model.")
# Entries of an official .pt dict that hold the weights, in order of preference.
STATE_ENTRIES = ("generator_ema", "generator", "model", "state_dict")
# Our parameters that the official layout does not have.
SHOTSTREAM_ONLY = ("shot_embedding",)


def save_pretrained(model: WanDiT, config: ShotStreamConfig, path: str | Path, kind: str = "causal",
                    dtype: torch.dtype | None = None) -> Path:
    """Write a model folder. `kind` records how the weights were trained (causal / bidirectional)."""
    meta = {"kind": kind, **config.to_dict()}
    return save_checkpoint(path, meta, model.state_dict(), dtype=dtype)


def export_model(model: WanDiT, config: ShotStreamConfig, run_copy: str | Path, shipped: str | Path | None,
                 kind: str) -> list[Path]:
    """A training stage's result: the run's copy in fp32, which the next stage starts from, and the
    shipped copy (if `shipped`) in bf16, half the size. Starting from bf16 weights would round away a
    short fine-tuning stage: most weight changes of a 600-step DMD stage are below half a bf16 step."""
    paths = [save_pretrained(model, config, run_copy, kind=kind)]
    if shipped:
        paths.append(save_pretrained(model, config, shipped, kind=kind, dtype=torch.bfloat16))
    return paths


def parse_model_config(meta: dict, source: str | Path) -> tuple[ShotStreamConfig, str]:
    """(config, kind) from the config.json of a model folder."""
    meta = dict(meta)
    kind = meta.pop("kind", "causal")
    try:
        return ShotStreamConfig.from_dict(meta).validate(), kind
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{source}: {e.args[0] if e.args else e}") from None


def read_config(path: str | Path) -> tuple[ShotStreamConfig, str]:
    """The (config, kind) of a model folder, without loading its weights."""
    file = Path(path) / "config.json"
    return parse_model_config(read_json(file), file)


def from_pretrained(path: str | Path, device="cpu", dtype: torch.dtype = torch.float32) -> tuple[WanDiT, ShotStreamConfig, str]:
    """Load a model folder written by `save_pretrained`: (model in eval mode, config, kind)."""
    meta, tensors = load_checkpoint(path)
    config, kind = parse_model_config(meta, Path(path) / "config.json")
    model = WanDiT(config.model, config.video.latent_channels)
    check_keys(model.state_dict(), tensors, str(Path(path) / "model.safetensors"))
    model.load_state_dict(tensors)
    return model.to(device=device, dtype=dtype).eval(), config, kind


def expansion_plan(old: int, num_layers: int) -> list[tuple[int, bool]]:
    """For each block of an `old`-layer model expanded to `num_layers`: (the block it copies, is it
    a new identity block?)."""
    if not old <= num_layers <= 2 * old:
        raise ValueError(f"expand_blocks: {num_layers} layers must lie between the model's {old} and twice that")
    if num_layers == old:
        return [(i, False) for i in range(old)]
    plan = []
    for group in torch.tensor_split(torch.arange(old), num_layers - old):
        plan += [(i, False) for i in group.tolist()] + [(group[-1].item(), True)]
    return plan


def expand_blocks(model: WanDiT, num_layers: int) -> WanDiT:
    """A deeper copy of `model` that computes the same function: LLaMA Pro's block expansion.

    The blocks are split into `num_layers - L` even groups and each group is followed by a copy of
    its last block whose output projections (self-attention, cross-attention, FFN) are zero, so the
    copy adds nothing until training moves them. Starting from a trained model this adds capacity
    without retraining from scratch."""
    old = model.cfg.num_layers
    sources = expansion_plan(old, num_layers)
    deeper = WanDiT(dataclasses.replace(model.cfg, num_layers=num_layers), model.latent_channels)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("blocks.")}
    for new, (i, identity) in enumerate(sources):
        block = {k: v.clone() for k, v in model.blocks[i].state_dict().items()}
        if identity:
            for out in ("self_attn.o", "cross_attn.o", "ffn.2"):
                block[f"{out}.weight"].zero_(), block[f"{out}.bias"].zero_()
        state |= {f"blocks.{new}.{k}": v for k, v in block.items()}
    deeper.load_state_dict(state)
    deeper = deeper.to(device=model.device, dtype=model.dtype)
    return deeper.train(model.training)


def model_config_from_wan(wan_config: dict) -> ModelConfig:
    """Map an official Wan2.1 `config.json` (dim, ffn_dim, num_heads, ...) onto ModelConfig."""
    keys = {"dim", "ffn_dim", "num_heads", "num_layers", "text_dim", "text_len", "freq_dim", "eps", "qk_norm", "cross_attn_norm"}
    cfg = from_dict(ModelConfig, {k: v for k, v in wan_config.items() if k in keys}, where="wan config")
    if "patch_size" in wan_config:
        cfg.patch_size = tuple(wan_config["patch_size"])
    return cfg


def official_state_dict(file: str | Path) -> dict[str, torch.Tensor]:
    """Read an official checkpoint file and return WanModel-named tensors."""
    file = Path(file)
    if file.suffix == ".safetensors":
        state = load_tensors(file)
    else:
        try:
            raw = torch.load(str(file), map_location="cpu", weights_only=True)
        except (RuntimeError, OSError, EOFError, ValueError) as e:
            raise CheckpointError(f"{file}: unreadable or truncated weights file ({e})") from None
        state = next((raw[k] for k in STATE_ENTRIES if isinstance(raw, dict) and isinstance(raw.get(k), dict)), raw)
        if not isinstance(state, dict):
            raise CheckpointError(f"{file}: expected a state dict")
    return {strip_prefixes(k): v for k, v in state.items()}


def strip_prefixes(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in WRAPPER_PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


def load_official(model: WanDiT, path: str | Path) -> WanDiT:
    """Load official Wan2.1 / ShotStream weights (a file, or a folder holding them) into `model`.

    Strict: the error names every missing, unexpected or misshaped key. Parameters that exist
    only in this implementation (the learned-indicator ablation) keep their initial values.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.pt")) or sorted(path.glob("*.pth"))
        if not files:
            raise CheckpointError(f"{path}: no .safetensors / .pt weights in folder")
        state = {}
        for f in files:  # sharded checkpoints
            state.update(official_state_dict(f))
    elif path.is_file():
        state = official_state_dict(path)
    else:
        raise CheckpointError(f"{path}: weights not found")
    expected = {k: v for k, v in model.state_dict().items() if k not in SHOTSTREAM_ONLY}
    check_keys(expected, state, str(path))
    model.load_state_dict(state, strict=False)
    return model


def load_wan_folder(path: str | Path, latent_channels: int = 16, device="cpu", dtype=torch.float32) -> WanDiT:
    """Build a WanDiT from an official Wan2.1 folder (config.json + diffusion_pytorch_model*.safetensors)."""
    path = Path(path)
    wan_cfg = read_json(path / "config.json")
    model = WanDiT(model_config_from_wan(wan_cfg), wan_cfg.get("in_dim", latent_channels))
    return load_official(model, path).to(device=device, dtype=dtype).eval()

"""Model folders (config.json + model.safetensors) and the official Wan2.1 / ShotStream layouts.

`WanDiT` uses Wan's own parameter names, so an official checkpoint maps onto it by stripping the
wrappers training code adds (`model.`, `generator.`, `module.`, FSDP / compile prefixes). Loading
is strict: any missing, unexpected or misshaped key is named in the error.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch

from shotstream import paths
from shotstream.checkpoint import CheckpointError, check_keys, load_checkpoint, load_tensors, read_json, save_checkpoint
from shotstream.config import ModelConfig, ShotStreamConfig, from_dict
from shotstream.model.dit import WanDiT

# Prefixes that Wan / Self-Forcing / ShotStream training wrappers put in front of WanModel keys.
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "_fsdp_wrapped_module.", "generator.", "model.")
# Entries of an official .pt dict that hold the weights, in order of preference.
STATE_ENTRIES = ("generator_ema", "generator", "model", "state_dict")
# Our parameters that the official layout does not have.
SHOTSTREAM_ONLY = ("shot_embedding",)


# A folder of shipped models names them in its index: {name: {"description", "autoencoder"}}, the
# autoencoder a folder beside them (checkpoints/tiny/index.json).
INDEX = "index.json"


def shipped_models(root: str | Path = paths.SHIPPED) -> dict[str, dict]:
    """The models shipped in `root`, by name, as its index lists them ({} without one)."""
    index = Path(root) / INDEX
    return read_json(index) if index.is_file() else {}


def resolve_model(name: str | Path, root: str | Path = paths.SHIPPED) -> Path:
    """A path to a model folder, or the name of a model shipped in `root` (`student`, `teacher`, ...)."""
    path = Path(name)
    if path.is_dir():
        return path
    if (Path(root) / path / "config.json").is_file():  # a listed model, or a component (`autoencoder`)
        return Path(root) / path
    shipped = shipped_models(root)
    raise FileNotFoundError(f"model {str(name)!r} is neither a folder nor a shipped model "
                            f"(shipped: {', '.join(shipped) or 'none yet'})")


def model_autoencoder(path: str | Path) -> Path:
    """The autoencoder a model folder was trained with: its index's entry for a shipped model, else
    the `autoencoder` folder beside it (the layout `shotstream train` exports and
    demo.devmodel writes)."""
    path = Path(path)
    entry = shipped_models(path.parent).get(path.name, {})
    return path.parent / entry.get("autoencoder", "autoencoder")


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


def model_config_from_wan(wan_config: dict, state: dict[str, torch.Tensor] | None = None) -> ModelConfig:
    """Map an official Wan2.1 `config.json` onto ModelConfig, every size read from the weights.

    Wan's own config.json has no `text_dim` (its code fixes it at 4096) nor `patch_size`,
    `qk_norm`, `cross_attn_norm`, so the weights' shapes are the source of truth: dim, in/out
    channels and patch from `patch_embedding`, text_dim from `text_embedding.0`, freq_dim from
    `time_embedding.0`, ffn_dim from `blocks.0.ffn.0`, num_layers from the block count; qk_norm and
    cross_attn_norm from whether their weights exist. Only num_heads, eps and text_len (which
    no shape holds) come from the config. A config value that contradicts the weights is an error.
    """
    keys = {"dim", "ffn_dim", "num_heads", "num_layers", "text_dim", "text_len", "freq_dim", "eps", "qk_norm", "cross_attn_norm"}
    values = {k: v for k, v in wan_config.items() if k in keys}
    if "patch_size" in wan_config:
        values["patch_size"] = tuple(wan_config["patch_size"])
    if state is not None:
        values = _check_against_weights(values, _sizes_from_weights(state), wan_config)
    if "num_heads" not in values:
        raise CheckpointError("wan config: no num_heads (the weights' shapes cannot tell it)")
    return from_dict(ModelConfig, values, where="wan config")


def _sizes_from_weights(state: dict[str, torch.Tensor]) -> dict:
    """The ModelConfig sizes (and in/out channels) that WanModel-named tensors imply."""
    need = ("patch_embedding.weight", "text_embedding.0.weight", "time_embedding.0.weight", "blocks.0.ffn.0.weight",
            "head.head.weight")
    missing = [k for k in need if k not in state]
    if missing:
        raise CheckpointError(f"not a Wan2.1 DiT checkpoint: missing {missing}")
    dim, in_dim, *patch = state["patch_embedding.weight"].shape  # [dim, in_dim, pt, ph, pw]
    blocks = {int(k.split(".")[1]) for k in state if k.startswith("blocks.")}
    return {
        "dim": dim,
        "in_dim": in_dim,
        "patch_size": tuple(patch),
        "text_dim": state["text_embedding.0.weight"].shape[1],  # [dim, text_dim]
        "freq_dim": state["time_embedding.0.weight"].shape[1],  # [dim, freq_dim]
        "ffn_dim": state["blocks.0.ffn.0.weight"].shape[0],  # [ffn_dim, dim]
        "num_layers": len(blocks),
        "out_dim": state["head.head.weight"].shape[0] // math.prod(patch),  # [out_dim * pt*ph*pw, dim]
        "qk_norm": "blocks.0.self_attn.norm_q.weight" in state,
        "cross_attn_norm": "blocks.0.norm3.weight" in state,
    }


def _check_against_weights(values: dict, sizes: dict, wan_config: dict) -> dict:
    stated = {**values, **{k: wan_config[k] for k in ("in_dim", "out_dim") if k in wan_config}}
    clash = [f"{k}: config {stated[k]} vs weights {v}" for k, v in sizes.items()
             if k in stated and (tuple(stated[k]) if k == "patch_size" else stated[k]) != v]
    if clash:
        raise CheckpointError(f"wan config contradicts the weights' shapes: {'; '.join(clash)}")
    if sizes["in_dim"] != sizes["out_dim"]:
        raise CheckpointError(f"in_dim {sizes['in_dim']} != out_dim {sizes['out_dim']}: WanDiT predicts its input's channels")
    return values | {k: v for k, v in sizes.items() if k not in ("in_dim", "out_dim")}


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


def checkpoint_files(path: str | Path) -> list[Path]:
    """The weight files of `path`: the file itself, or a folder's safetensors (one file, or the
    shards its `*.safetensors.index.json` names), or its single .pt / .pth.

    A folder holding several .pt / .pth (a ShotStream run keeps `generator` snapshots side by
    side) is refused: merging them would let the last one silently win."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise CheckpointError(f"{path}: weights not found")
    indexes = sorted(path.glob("*.safetensors.index.json"))
    if len(indexes) == 1:  # sharded (Wan2.1-14B): the index maps each tensor to its shard
        shards = sorted(set(read_json(indexes[0]).get("weight_map", {}).values()))
        if not shards:
            raise CheckpointError(f"{indexes[0]}: no weight_map")
        return [path / s for s in shards]
    for pattern in ("*.safetensors", "*.pt", "*.pth"):
        files = sorted(path.glob(pattern))
        if len(files) == 1:
            return files
        if len(files) > 1:
            names = ", ".join(f.name for f in files)
            raise CheckpointError(f"{path}: several checkpoints in the folder ({names}); name the file to load")
    raise CheckpointError(f"{path}: no .safetensors / .pt weights in folder")


def read_official(path: str | Path) -> dict[str, torch.Tensor]:
    """WanModel-named tensors of a checkpoint file or folder (see `checkpoint_files`); a
    diffusers `WanTransformer3DModel` (the Diffusers layout's transformer/) is renamed to them."""
    state = {}
    for f in checkpoint_files(path):
        if not f.is_file():
            raise CheckpointError(f"{f}: shard not found")
        state.update(official_state_dict(f))
    if any(k.startswith(DIFFUSERS_MARK) for k in state):
        state = wan_state_from_diffusers(state)
    return state


DIFFUSERS_MARK = "condition_embedder."  # every diffusers WanTransformer3DModel has it, no WanModel does


def wan_state_from_diffusers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers' WanTransformer3DModel tensors renamed to WanModel's (the same tensors: Wan's
    layout and diffusers' differ only in names).

    The names come from diffusers' own converter (`convert_wan_transformer_to_diffusers`, Wan ->
    diffusers), run on this model's names and inverted, so they follow the pinned diffusers
    version rather than a table kept here. Names it does not know are left for the strict key
    check to report."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    blocks = {int(k.split(".")[1]) for k in state if k.startswith("blocks.")}
    with torch.device("meta"):  # names only: the layer count is all they depend on
        names = WanDiT(ModelConfig(dim=16, ffn_dim=16, num_heads=2, num_layers=max(len(blocks), 1), text_dim=8)).state_dict()
    wan_name = convert_wan_transformer_to_diffusers({k: k for k in names if k not in SHOTSTREAM_ONLY})  # diffusers -> Wan
    return {wan_name.get(k, k): v for k, v in state.items()}


def load_official(model: WanDiT, path: str | Path, state: dict[str, torch.Tensor] | None = None) -> WanDiT:
    """Load official Wan2.1 / ShotStream weights (a file, or a folder holding them; or `state`,
    the tensors `read_official(path)` already returned) into `model`.

    Strict: the error names every missing, unexpected or misshaped key. Parameters that exist
    only in this implementation (the learned-indicator ablation) keep their initial values.
    """
    state = read_official(path) if state is None else state
    expected = {k: v for k, v in model.state_dict().items() if k not in SHOTSTREAM_ONLY}
    check_keys(expected, state, str(path))
    model.load_state_dict(state, strict=False)
    return model


def load_wan_folder(path: str | Path, weights: str | Path | None = None, device="cpu", dtype=torch.float32) -> WanDiT:
    """Build a WanDiT from an official Wan2.1 folder: config.json + the DiT's safetensors (or
    `weights`, e.g. a ShotStream .pt, for the same architecture). Sizes come from the weights."""
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{config_file}: not found (expected an official Wan2.1 folder)")
    source = Path(weights) if weights is not None else path
    state = read_official(source)
    try:
        cfg = model_config_from_wan(read_json(config_file), state)
        cfg.validate()
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{config_file}: {e.args[0] if e.args else e}") from None
    model = WanDiT(cfg, state["patch_embedding.weight"].shape[1])  # [dim, in_dim, pt, ph, pw]
    return load_official(model, source, state).to(device=device, dtype=dtype).eval()

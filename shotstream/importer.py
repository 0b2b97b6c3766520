"""`shotstream import`: released Wan2.1 / ShotStream weights -> a model folder that
`ShotStreamPipeline.from_pretrained` (and so `shotstream generate`) loads like the tiny one.

    shotstream import --wan Wan2.1-T2V-1.3B --checkpoint shotstream.pt -o models/shotstream

The folder holds config.json (the resolved ShotStreamConfig: the `wan2.1-1.3b` preset with
every DiT size read from the weights, and the model kind), model.safetensors (the DiT in
WanModel names, the wrappers of a training checkpoint stripped) and components.json, the index:
the DiT's weights, the VAE, the umT5 text encoder and its tokenizer (links into the Wan
download, not copies), and, for a reader, the sampler and the released model's behaviour as
config.json sets them (prompt template, no text padding mask, the first shot's zero context);
config.json is what loads.

Either Wan download layout works:
- original: config.json + diffusion_pytorch_model.safetensors (the base DiT), Wan2.1_VAE.pth,
  models_t5_umt5-xxl-enc-bf16.pth, google/umt5-xxl/ (tokenizer);
- Diffusers: model_index.json, transformer/ (the base DiT in diffusers' WanTransformer3DModel
  names, renamed to WanModel's on import), vae/, text_encoder/, tokenizer/.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from shotstream.checkpoint import CheckpointError, read_json

COMPONENTS = "components.json"  # what marks an imported folder
WAN_PARTS = {  # the original layout's file names
    "vae": "Wan2.1_VAE.pth",
    "text_encoder": "models_t5_umt5-xxl-enc-bf16.pth",
    "tokenizer": "google/umt5-xxl",
}


@dataclass
class WanRelease:
    """Where each part of a Wan2.1 download lies."""

    layout: str  # "original" or "diffusers"
    dit: Path  # the base DiT's weights (a file or folder; read_official renames diffusers' names)
    dit_config: dict  # Wan-style sizes the weights cannot tell: num_heads, eps, text_len
    vae: Path
    text_encoder: Path
    tokenizer: Path


def find_release(folder: str | Path) -> WanRelease:
    """Detect the layout of a Wan2.1 download and check that every part is there."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: Wan2.1 folder not found")
    if (folder / "model_index.json").is_file() or (folder / "transformer").is_dir():
        t = read_json(folder / "transformer" / "config.json")
        if "num_attention_heads" not in t:
            raise CheckpointError(f"{folder / 'transformer' / 'config.json'}: no num_attention_heads")
        # The Diffusers pipeline pads prompts to 512 tokens, as Wan's own code does.
        release = WanRelease("diffusers", folder / "transformer",
                             {"num_heads": t["num_attention_heads"], "eps": t.get("eps", 1e-6), "text_len": 512},
                             folder / "vae", folder / "text_encoder", folder / "tokenizer")
    else:
        config = read_json(folder / "config.json")
        release = WanRelease("original", folder, {k: config[k] for k in ("num_heads", "eps", "text_len") if k in config},
                             *(folder / WAN_PARTS[k] for k in ("vae", "text_encoder", "tokenizer")))
    for part in ("dit", "vae", "text_encoder", "tokenizer"):
        if not getattr(release, part).exists():
            raise FileNotFoundError(f"{folder}: the {release.layout} layout's {part} is missing ({getattr(release, part)})")
    return release


def import_release(wan: str | Path, output: str | Path, checkpoint: str | Path | None = None, preset: str = "wan2.1-1.3b",
                   overrides=(), kind: str = "causal", dtype: torch.dtype | None = None) -> Path:
    """Write the model folder `output` (see the module docstring); returns its path.

    checkpoint: the ShotStream DiT (.pt with its training wrappers, or safetensors); without it,
    the Wan folder's own (base) DiT. overrides: `key=value` config changes (e.g.
    video.height=240). dtype: of the written DiT weights (None: as stored)."""
    from shotstream.config import apply_overrides, get_preset
    from shotstream.model.dit import WanDiT
    from shotstream.model.loading import load_official, model_config_from_wan, read_official, save_pretrained

    if kind not in ("causal", "bidirectional", "rolling"):
        raise ValueError(f"kind must be causal, bidirectional or rolling, got {kind!r}")
    release = find_release(wan)
    source = Path(checkpoint) if checkpoint is not None else release.dit
    state = read_official(source)
    sizes = model_config_from_wan(release.dit_config, state)
    config = get_preset(preset)
    size_fields = ("dim", "ffn_dim", "num_heads", "num_layers", "text_dim", "text_len", "freq_dim", "patch_size",
                   "qk_norm", "cross_attn_norm", "eps")
    config.model = dataclasses.replace(config.model, **{k: getattr(sizes, k) for k in size_fields})
    config.video.latent_channels = state["patch_embedding.weight"].shape[1]  # [dim, in_dim, pt, ph, pw]
    apply_overrides(config, overrides)
    config.validate()
    model = WanDiT(config.model, config.video.latent_channels)
    load_official(model, source, state)
    output = save_pretrained(model, config, output, kind=kind, dtype=dtype)
    components = {}
    for part in ("vae", "text_encoder", "tokenizer"):
        target = getattr(release, part).resolve()
        name = part if target.is_dir() else target.name
        os.symlink(target, output / name, target_is_directory=target.is_dir())
        components[part] = name
    index = {"layout": release.layout, "dit": "model.safetensors", **components,
             "sampler": {"student_timesteps": config.sampler.student_timesteps, "shift": config.sampler.shift},
             "prompt_template": config.prompt.template, "prompt_max_chars": config.prompt.max_chars,
             "text_mask": config.model.text_mask, "first_shot_zero_context": config.model.first_shot_zero_context}
    (output / COMPONENTS).write_text(json.dumps(index, indent=2), encoding="utf-8")
    return output


def load_components(path: str | Path, config, device="cpu", dtype: torch.dtype = torch.float32,
                    text_device=None, text_encoder=None):
    """(autoencoder, text encoder) of an imported folder: the Wan VAE and umT5, in `dtype`, the
    text encoder on `text_device` (default: `device`) unless one is given."""
    from shotstream.text_encoder import TextEncoder
    from shotstream.wan_vae import WanVideoAutoencoder

    path = Path(path)
    components = read_json(path / COMPONENTS)
    missing = [k for k in ("vae", "text_encoder", "tokenizer") if k not in components]
    if missing:
        raise CheckpointError(f"{path / COMPONENTS}: no {', '.join(missing)}")
    ae = WanVideoAutoencoder.from_pretrained(path / components["vae"], device=device, dtype=dtype)
    if text_encoder is None:
        text_encoder = TextEncoder(path / components["text_encoder"], tokenizer=path / components["tokenizer"],
                                   max_len=config.model.text_len, device=text_device or device, dtype=dtype,
                                   weight_dtype=dtype)
    if text_encoder.dim != config.model.text_dim:
        raise CheckpointError(f"{path}: the text encoder gives {text_encoder.dim}-d states, the DiT expects "
                              f"{config.model.text_dim}")
    return ae, text_encoder


def cmd_import(args) -> int:
    from shotstream.runtime import torch_dtype

    out = import_release(args.wan, args.output, checkpoint=args.checkpoint, preset=args.preset, overrides=args.set,
                         kind=args.kind, dtype=torch_dtype(args.dtype) if args.dtype else None)
    print(f"wrote {out}: config.json, model.safetensors, {COMPONENTS} "
          f"(load it with `shotstream generate --model {out}`)")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("import", help="turn released Wan2.1 / ShotStream weights into a model folder",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--wan", required=True, help="Wan2.1-T2V-1.3B download (original or Diffusers layout)")
    p.add_argument("--checkpoint", help="ShotStream DiT weights (.pt or .safetensors; default: the Wan folder's own DiT)")
    p.add_argument("-o", "--output", required=True, help="model folder to write")
    p.add_argument("--preset", default="wan2.1-1.3b", help="config preset the weights' sizes go into")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, e.g. video.height=240")
    p.add_argument("--kind", default="causal", choices=("causal", "bidirectional", "rolling"),
                   help="causal: a ShotStream student; bidirectional: a teacher or the base Wan model")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), help="dtype of the written DiT (default: as stored)")
    p.set_defaults(func=cmd_import)

"""The Wan2.1 VAE (diffusers' `AutoencoderKLWan`) behind the project's autoencoder interface.

Same geometry as the tiny codec (4x in time, 8x in space, frame 0 alone: 4k+1 frames <-> k+1
latent frames), but the encoder and decoder are causal 3D convolutions: each latent frame's
decoded pixels depend on the frames before it, through a cache of the last input frames every
causal convolution saw. Streaming therefore keeps that cache between the chunks of a shot: the
session owns one `WanDecodeState` per shot and passes it to every `decode_chunk`. Decoding 6
latent frames in two chunks of 3 then equals decoding them at once (21 frames); decoding each
chunk with a fresh cache would give 1 + 8 + 9 = 18 frames and seams at the chunk boundary.

Latents are normalised per channel with the VAE config's `latents_mean` / `latents_std`
(diffusers' defaults are Wan2.1's, the values ShotStream and Self-Forcing use).

Two layouts load (`from_pretrained`): the Diffusers one (`vae/`: config.json + safetensors)
and Wan's original `Wan2.1_VAE.pth`, whose keys diffusers' own converter renames; its
architecture config is built locally (diffusers' defaults = Wan2.1, widths from the shapes),
never fetched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from einops import rearrange

from shotstream.autoencoder import CausalVideoAutoencoder
from shotstream.checkpoint import CheckpointError, check_keys, load_tensors, read_json
from shotstream.config import VideoConfig


@dataclass
class WanDecodeState:
    """The causal decoder's memory within one shot: for each causal conv, the last input frames
    it saw (diffusers' `feat_cache`), and how many latent frames of the shot were decoded."""

    feat_cache: list = field(default_factory=list)
    frames: int = 0


class WanVideoAutoencoder(CausalVideoAutoencoder):
    """encode / encode_image / decode / decode_chunk over a diffusers `AutoencoderKLWan`."""

    def __init__(self, vae):
        from diffusers import AutoencoderKLWan

        if not isinstance(vae, AutoencoderKLWan):
            raise TypeError(f"expected a diffusers AutoencoderKLWan, got {type(vae).__name__}")
        c = vae.config
        if c.patch_size is not None or c.is_residual:
            raise ValueError("only the Wan2.1 VAE is supported (this config is Wan2.2's patchified / residual one)")
        super().__init__(VideoConfig(latent_channels=c.z_dim, temporal_stride=c.scale_factor_temporal,
                                     spatial_stride=c.scale_factor_spatial))
        self.vae = vae.eval().requires_grad_(False)
        self.register_buffer("latent_mean", torch.tensor(c.latents_mean, dtype=torch.float32))  # [C]
        self.register_buffer("latent_std", torch.tensor(c.latents_std, dtype=torch.float32))  # [C]
        if self.latent_mean.numel() != c.z_dim or self.latent_std.numel() != c.z_dim:
            raise ValueError(f"latents_mean / latents_std need {c.z_dim} values (z_dim)")
        # Causal convs in the decoder: the length of a fresh decode cache.
        self._decoder_convs = sum(type(m).__name__ == "WanCausalConv3d" for m in vae.decoder.modules())

    @property
    def dtype(self) -> torch.dtype:
        return self.vae.dtype

    def normalize(self, z):  # z: [B, f, C, h, w]
        return (z - self.latent_mean.view(-1, 1, 1).to(z)) / self.latent_std.view(-1, 1, 1).to(z)

    def denormalize(self, z):
        return z * self.latent_std.view(-1, 1, 1).to(z) + self.latent_mean.view(-1, 1, 1).to(z)

    # -- encoding --------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_raw(self, video: torch.Tensor) -> torch.Tensor:
        """video [B, F, 3, H, W], F = 4k+1 -> raw latents [B, k+1, C, h, w] (the posterior's mean,
        as Wan's own VAE wrapper returns)."""
        from shotstream.config import latent_frame_count

        self._check_pixels(video, "encode")
        latent_frame_count(video.shape[1], self.temporal_stride)
        x = rearrange(video.to(self.dtype), "b f c h w -> b c f h w")
        z = self.vae.encode(x).latent_dist.mode()  # [B, C, f, h, w]
        return rearrange(z, "b c f h w -> b f c h w")

    def _encode_first(self, frames):  # (N, 3, H, W) -> (N, C, h, w): a one-frame video
        return self.encode_raw(frames[:, None])[:, 0]

    # -- decoding --------------------------------------------------------------------------------

    def decode_state(self) -> WanDecodeState:
        return WanDecodeState(feat_cache=[None] * self._decoder_convs)

    def decode_chunk(self, latents: torch.Tensor, first_chunk: bool, clamp: bool = True,
                     state: WanDecodeState | None = None) -> torch.Tensor:
        """Normalised latents [B, f, C, h, w] -> video [B, n, 3, H, W]: n = 1 + 4(f-1) for the
        shot's first chunk, 4f after it. Later chunks need the `state` the earlier ones filled."""
        self._check_latents(latents, "decode_chunk")
        if state is None:
            if not first_chunk:
                raise ValueError("decode_chunk: the Wan VAE's causal decoder needs the decode state (decode_state()) "
                                 "that the shot's earlier chunks filled")
            state = self.decode_state()
        elif first_chunk:
            state.feat_cache, state.frames = [None] * self._decoder_convs, 0
        elif state.frames == 0:
            raise ValueError("decode_chunk: this decode state has not seen the shot's first chunk")
        video = self._decode(self.denormalize(latents.float()), state)
        return video.clamp(-1, 1) if clamp else video

    @torch.no_grad()
    def _decode(self, z: torch.Tensor, state: WanDecodeState) -> torch.Tensor:
        x = self.vae.post_quant_conv(rearrange(z.to(self.dtype), "b f c h w -> b c f h w"))  # 1x1x1: per frame
        frames = []
        for i in range(x.shape[2]):  # one latent frame at a time, as the causal cache expects
            frames.append(self.vae.decoder(x[:, :, i:i + 1], feat_cache=state.feat_cache, feat_idx=[0],
                                           first_chunk=state.frames == 0))  # [B, 3, 1 or 4, H, W]
            state.frames += 1
        return rearrange(torch.cat(frames, dim=2), "b c f h w -> b f c h w")

    def decode_raw(self, z: torch.Tensor, first_chunk: bool = True) -> torch.Tensor:
        if not first_chunk:
            raise ValueError("decode_raw: the Wan VAE decodes a shot from its first latent frame (use decode_chunk "
                             "with a decode state to stream)")
        return self._decode(z, self.decode_state())

    # -- loading ---------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: str | Path, device="cpu", dtype: torch.dtype = torch.float32,
                        config: dict | None = None) -> "WanVideoAutoencoder":
        """Load the Diffusers layout's `vae/` folder (config.json + safetensors) or Wan's original
        `Wan2.1_VAE.pth` (keys converted by diffusers; base_dim and z_dim read from its shapes, the
        rest diffusers' defaults, which are Wan2.1's; `config` overrides both). Strict: every
        missing, unexpected or misshaped key is named."""
        from diffusers import AutoencoderKLWan
        from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

        path = Path(path)
        if path.is_dir():
            config_file = path / "config.json"
            files = sorted(path.glob("*.safetensors"))
            if not config_file.is_file() or len(files) != 1:
                raise CheckpointError(f"{path}: expected a Diffusers vae/ folder (config.json + one .safetensors), "
                                      f"found {sorted(p.name for p in path.iterdir())}")
            arch = read_json(config_file)
            if arch.get("_class_name", "AutoencoderKLWan") != "AutoencoderKLWan":
                raise CheckpointError(f"{config_file}: _class_name is {arch['_class_name']!r}, expected 'AutoencoderKLWan'")
            arch, source, state = arch | (config or {}), files[0], load_tensors(files[0])
        elif path.is_file():
            raw = load_tensors(path)
            if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
                raise CheckpointError(f"{path}: expected a state dict of tensors (Wan2.1_VAE.pth)")
            sizes = {}  # the two widths Wan2.1's VAE architecture leaves open, read from the shapes
            if "encoder.conv1.weight" in raw and "conv2.weight" in raw:
                sizes = {"base_dim": raw["encoder.conv1.weight"].shape[0],  # [base_dim, 3, 3, 3, 3]
                         "z_dim": raw["conv2.weight"].shape[0]}  # [z_dim, z_dim, 1, 1, 1]
            arch, source, state = sizes | (config or {}), path, convert_wan_vae_to_diffusers(raw)
        else:
            raise CheckpointError(f"{path}: VAE weights not found")
        try:
            vae = AutoencoderKLWan.from_config({k: v for k, v in arch.items() if not k.startswith("_")})
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{source}: bad AutoencoderKLWan config ({e})") from None
        check_keys(vae.state_dict(), state, str(source))
        vae.load_state_dict(state)
        # nn.Module's own to(): AutoencoderKLWan keeps no module in fp32, but diffusers' to() warns
        # that it might whenever a dtype is passed
        return cls(torch.nn.Module.to(vae, device=device, dtype=dtype))

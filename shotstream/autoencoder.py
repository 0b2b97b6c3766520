"""A tiny causal video autoencoder with Wan-VAE geometry, and a parameter-free test stand-in.

Geometry (Wan2.1 VAE): 4x in time, 8x in height and width. Frame 0 of a shot is encoded alone
and every later group of 4 frames becomes one latent frame, so 4k+1 frames <-> k+1 latent
frames. Here each latent frame depends on its own pixel frames only (no temporal mixing across
groups), which makes the codec trivially causal and lets `decode_chunk` decode any contiguous
run of latent frames on its own: the streaming session decodes chunk by chunk and the result
equals decoding the whole shot.

Layouts: video [B, F, 3, H, W] in [-1, 1]; latents [B, f, C, h, w] with f = 1 + (F - 1) / 4,
h = H / 8, w = W / 8, C = VideoConfig.latent_channels.

TinyVideoAutoencoder is a 2D conv net (ResNet blocks, GroupNorm, SiLU): the 4 frames of a
group are stacked in channels and a 2x pixel-unshuffle stem replaces the costly full-resolution
convolutions; the decoder mirrors it. A lone frame (a shot's first frame, a conditional frame)
is encoded as a still group of 4 copies and decoded as the mean of its group, so every latent
frame lives in one latent space: the diffusion model never has to tell a first-frame latent from
a group latent (it has no absolute frame position to tell them apart by). It is deterministic
(no KL); latents are normalised per channel with a mean and std stored as buffers
(`fit_latent_stats`, run on data after training) so the diffusion model sees roughly
unit-variance latents.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from shotstream.checkpoint import WEIGHTS_NAME, CheckpointError, check_keys, load_checkpoint, save_checkpoint
from shotstream.config import VideoConfig, from_dict, latent_frame_count


# ---------------------------------------------------------------------------------------------
# The interface shared by the real codec and the stand-in


class CausalVideoAutoencoder(nn.Module):
    """encode / decode / decode_chunk / encode_image over four per-item hooks.

    Subclasses implement `_encode_first` [N, 3, H, W] -> [N, C, h, w], `_encode_groups`
    [N, T, 3, H, W] -> [N, C, h, w], `_decode_first` and `_decode_groups` (the inverses), on raw
    (unnormalised) latents, and may override `normalize` / `denormalize`.
    """

    def __init__(self, cfg: VideoConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg

    @property
    def latent_channels(self) -> int:
        return self.cfg.latent_channels

    @property
    def dtype(self) -> torch.dtype:
        """The dtype its inputs are given in (its weights'; float32 for a codec without any)."""
        return next((p.dtype for p in self.parameters()), torch.float32)

    @property
    def temporal_stride(self) -> int:
        return self.cfg.temporal_stride

    @property
    def spatial_stride(self) -> int:
        return self.cfg.spatial_stride

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z

    # -- public API --------------------------------------------------------------------------

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """video [B, F, 3, H, W] in [-1, 1], F = 4k+1 -> normalised latents [B, k+1, C, h, w]."""
        return self.normalize(self.encode_raw(video))

    def encode_image(self, frames: torch.Tensor) -> torch.Tensor:
        """frames [B, 3, H, W] -> [B, 1, C, h, w] through the first-frame path (context frames)."""
        if not isinstance(frames, torch.Tensor) or frames.ndim != 4 or frames.shape[1] != 3:
            shape = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
            raise ValueError(f"encode_image: expected frames [B, 3, H, W], got {shape}")
        self._check_pixels(frames[:, None], "encode_image")
        return self.normalize(self._encode_first(frames))[:, None]

    def decode(self, latents: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        """Normalised latents [B, f, C, h, w] of a whole shot -> video [B, 1 + 4(f-1), 3, H, W]."""
        return self.decode_chunk(latents, first_chunk=True, clamp=clamp)

    def decode_state(self):
        """A fresh decode state for one shot, passed to each of its `decode_chunk` calls (the
        streaming session owns it). None here: these codecs decode every chunk on its own; the
        Wan VAE's causal decoder keeps its cache in it (shotstream.wan_vae)."""
        return None

    def decode_chunk(self, latents: torch.Tensor, first_chunk: bool, clamp: bool = True, state=None) -> torch.Tensor:
        """Decode a contiguous run of latent frames of a shot.

        first_chunk: the run starts at the shot's latent frame 0 (which decodes to 1 frame);
        otherwise every latent frame decodes to 4 frames. Concatenating the decoded chunks of a
        shot, all given the shot's `decode_state()`, equals `decode` of the whole shot.
        """
        self._check_latents(latents, "decode_chunk")
        video = self.decode_raw(self.denormalize(latents), first_chunk)
        return video.clamp(-1, 1) if clamp else video

    def encode_raw(self, video: torch.Tensor) -> torch.Tensor:
        """Unnormalised latents (what training of the codec itself sees)."""
        self._check_pixels(video, "encode")
        latent_frame_count(video.shape[1], self.temporal_stride)
        first = self._encode_first(video[:, 0])[:, None]  # [B, 1, C, h, w]
        if video.shape[1] == 1:
            return first
        groups = rearrange(video[:, 1:], "b (k t) c h w -> (b k) t c h w", t=self.temporal_stride)
        rest = rearrange(self._encode_groups(groups), "(b k) c h w -> b k c h w", b=video.shape[0])
        return torch.cat([first, rest], dim=1)  # [B, k+1, C, h, w]

    def decode_raw(self, z: torch.Tensor, first_chunk: bool = True) -> torch.Tensor:
        """Unnormalised latents -> unclamped video (what training of the codec itself sees)."""
        parts = []
        if first_chunk:
            parts.append(self._decode_first(z[:, 0])[:, None])  # [B, 1, 3, H, W]
            z = z[:, 1:]
        if z.shape[1]:
            frames = self._decode_groups(rearrange(z, "b k c h w -> (b k) c h w"))  # [(B k), T, 3, H, W]
            parts.append(rearrange(frames, "(b k) t c h w -> b (k t) c h w", b=z.shape[0]))
        return torch.cat(parts, dim=1)

    # -- validation ----------------------------------------------------------------------------

    def _check_pixels(self, video, where: str) -> None:
        if not isinstance(video, torch.Tensor) or video.ndim != 5 or video.shape[2] != 3:
            shape = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
            raise ValueError(f"{where}: expected video [B, F, 3, H, W], got {shape}")
        if not video.is_floating_point():
            raise ValueError(f"{where}: expected a float video in [-1, 1], got dtype {video.dtype}")
        h, w = video.shape[-2:]
        if h % self.spatial_stride or w % self.spatial_stride:
            raise ValueError(f"{where}: frame size {h}x{w} must be a multiple of {self.spatial_stride}")

    def _check_latents(self, z, where: str) -> None:
        if not isinstance(z, torch.Tensor) or z.ndim != 5 or z.shape[2] != self.latent_channels:
            shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"{where}: expected latents [B, f, {self.latent_channels}, h, w], got {shape}")
        if z.shape[1] == 0:
            raise ValueError(f"{where}: no latent frames")


# ---------------------------------------------------------------------------------------------
# TinyVideoAutoencoder


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(8, ch), ch, eps=1e-6)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1 = _norm(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = _norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):  # (N, cin, h, w) -> (N, cout, h, w)
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Upsample(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)

    def forward(self, x):  # (N, cin, h, w) -> (N, cout, 2h, 2w)
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class TinyVideoAutoencoder(CausalVideoAutoencoder):
    """Small 2D-conv causal video codec (4x8x8), fast on CPU. See the module docstring.

    Levels: the stems pixel-unshuffle by 2 (half resolution, `base_channels * channel_mults[0]`),
    then each further level halves the resolution, for log2(spatial_stride) levels in total.
    """

    def __init__(
        self,
        cfg: VideoConfig | None = None,
        base_channels: int = 48,
        channel_mults: tuple[int, ...] = (1, 2, 2),
        num_res_blocks: int = 1,
    ):
        cfg = cfg or VideoConfig()
        super().__init__(cfg)
        levels = int(math.log2(cfg.spatial_stride))
        if cfg.spatial_stride < 2 or 2**levels != cfg.spatial_stride:
            raise ValueError(f"video.spatial_stride must be a power of 2 >= 2, got {cfg.spatial_stride}")
        if len(channel_mults) != levels:
            raise ValueError(
                f"channel_mults needs {levels} entries (one per 2x level of spatial_stride {cfg.spatial_stride}), "
                f"got {tuple(channel_mults)}"
            )
        self.base_channels, self.channel_mults, self.num_res_blocks = base_channels, tuple(channel_mults), num_res_blocks
        chs = [base_channels * m for m in channel_mults]
        T, C = cfg.temporal_stride, cfg.latent_channels

        # Encoder: a stem over T stacked frames at half resolution, then the trunk.
        self.enc_stem_group = nn.Conv2d(T * 3 * 4, chs[0], 3, padding=1)
        enc: list[nn.Module] = []
        cin = chs[0]
        for i, ch in enumerate(chs):
            if i > 0:
                enc.append(nn.Conv2d(cin, cin, 3, stride=2, padding=1))
            for _ in range(num_res_blocks):
                enc.append(ResBlock(cin, ch))
                cin = ch
        enc += [_norm(cin), nn.SiLU(), nn.Conv2d(cin, C, 3, padding=1)]
        self.encoder = nn.Sequential(*enc)

        # Decoder: mirror trunk, then a head that pixel-shuffles T frames back to full resolution.
        dec: list[nn.Module] = [nn.Conv2d(C, chs[-1], 3, padding=1)]
        cin = chs[-1]
        for i, ch in reversed(list(enumerate(chs))):
            for _ in range(num_res_blocks):
                dec.append(ResBlock(cin, ch))
                cin = ch
            if i > 0:
                dec.append(Upsample(cin, chs[i - 1]))
                cin = chs[i - 1]
        dec += [_norm(cin), nn.SiLU()]
        self.decoder = nn.Sequential(*dec)
        self.dec_head_group = nn.Conv2d(cin, T * 3 * 4, 3, padding=1)

        # Latent normalisation (identity until fit_latent_stats runs on data).
        self.register_buffer("latent_mean", torch.zeros(C))
        self.register_buffer("latent_std", torch.ones(C))
        self.initialize_weights()

    def initialize_weights(self) -> None:
        # Residual branches start at zero so each ResBlock is the identity (skip) at init.
        for m in self.modules():
            if isinstance(m, ResBlock):
                nn.init.zeros_(m.conv2.weight)
                nn.init.zeros_(m.conv2.bias)

    # -- hooks ---------------------------------------------------------------------------------

    def _encode_first(self, frames):  # (N, 3, H, W) -> (N, C, h, w): a still group of T copies
        return self._encode_groups(frames[:, None].expand(-1, self.temporal_stride, -1, -1, -1))

    def _encode_groups(self, groups):  # (N, T, 3, H, W) -> (N, C, h, w)
        x = F.pixel_unshuffle(rearrange(groups, "n t c h w -> n (t c) h w"), 2)  # (N, T*3*4, H/2, W/2)
        return self.encoder(self.enc_stem_group(x))

    def _decode_first(self, z):  # (N, C, h, w) -> (N, 3, H, W): the mean of the still group
        return self._decode_groups(z).mean(dim=1)

    def _decode_groups(self, z):  # (N, C, h, w) -> (N, T, 3, H, W)
        x = F.pixel_shuffle(self.dec_head_group(self.decoder(z)), 2)  # (N, T*3, H, W)
        return rearrange(x, "n (t c) h w -> n t c h w", t=self.temporal_stride)

    def normalize(self, z):  # z: [B, f, C, h, w]
        return (z - self.latent_mean.view(-1, 1, 1).to(z)) / self.latent_std.view(-1, 1, 1).to(z)

    def denormalize(self, z):
        return z * self.latent_std.view(-1, 1, 1).to(z) + self.latent_mean.view(-1, 1, 1).to(z)

    @torch.no_grad()
    def fit_latent_stats(self, videos: Iterable[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Set latent_mean / latent_std (per channel) from raw latents of `videos` [B, F, 3, H, W]."""
        total = total_sq = None
        count = 0
        for video in videos:
            z = self.encode_raw(video).double()  # [B, f, C, h, w]
            s, sq = z.sum(dim=(0, 1, 3, 4)), (z * z).sum(dim=(0, 1, 3, 4))
            total, total_sq = (s, sq) if total is None else (total + s, total_sq + sq)
            count += z.numel() // z.shape[2]
        if not count:
            raise ValueError("fit_latent_stats: no videos given")
        mean = total / count
        std = (total_sq / count - mean * mean).clamp_min(1e-12).sqrt()
        self.latent_mean.copy_(mean)
        self.latent_std.copy_(std)
        return self.latent_mean.clone(), self.latent_std.clone()

    # -- checkpoints ---------------------------------------------------------------------------

    def config_dict(self) -> dict:
        return {
            "class": type(self).__name__,
            "video": asdict(self.cfg),
            "base_channels": self.base_channels,
            "channel_mults": list(self.channel_mults),
            "num_res_blocks": self.num_res_blocks,
        }

    def save_pretrained(self, folder: str | Path, dtype: torch.dtype | None = None) -> Path:
        """Folder checkpoint: config.json + model.safetensors (atomic, see shotstream.checkpoint)."""
        return save_checkpoint(folder, self.config_dict(), self.state_dict(), dtype=dtype)

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device = "cpu") -> "TinyVideoAutoencoder":
        """Load a folder written by save_pretrained; every key and shape must match."""
        config, tensors = load_checkpoint(folder)
        source = Path(folder) / "config.json"
        if config.get("class") != cls.__name__:
            raise CheckpointError(f"{source}: class is {config.get('class')!r}, expected {cls.__name__!r}")
        known = {"class", "video", "base_channels", "channel_mults", "num_res_blocks"}
        unknown = sorted(set(config) - known)
        if unknown or "video" not in config:
            raise CheckpointError(f"{source}: unknown keys {unknown}" if unknown else f"{source}: missing 'video'")
        try:
            video = from_dict(VideoConfig, config["video"], where=f"{source}: video")
            model = cls(
                video,
                base_channels=int(config.get("base_channels", 48)),
                channel_mults=tuple(int(m) for m in config.get("channel_mults", (1, 2, 2))),
                num_res_blocks=int(config.get("num_res_blocks", 1)),
            )
        except (KeyError, ValueError, TypeError) as e:
            raise CheckpointError(f"{source}: bad autoencoder config ({e.args[0] if e.args else e})") from None
        check_keys(model.state_dict(), tensors, source=str(Path(folder) / WEIGHTS_NAME))
        model.load_state_dict(tensors, strict=True)
        return model.to(device).eval()


def reconstruction_loss(
    ae: CausalVideoAutoencoder,
    video: torch.Tensor,
    l1_weight: float = 1.0,
    mse_weight: float = 1.0,
    grad_weight: float = 0.5,
    latent_noise: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Training loss of the codec on video [B, F, 3, H, W]: returns (loss, logs).

    L1 + MSE on pixels, plus an L1 on finite differences (dx, dy within a frame, dt between
    frames): the procedural scenes are flat colours with sharp edges, which plain L1/MSE blur,
    and dt keeps motion consistent across the 4-frame group boundaries. Works on raw
    (unnormalised) latents, so fitting latent stats later does not change the codec.

    latent_noise > 0 decodes z + latent_noise * std(z) * N(0, 1) (std per sample, not
    back-propagated, so the encoder cannot shrink the noise away by scaling z up): the decoder
    learns to tolerate the small errors a diffusion model makes, and the encoder to keep what
    matters in coarse, well-separated latent values that are easier to generate.
    """
    z = ae.encode_raw(video)  # [B, f, C, h, w]
    if latent_noise > 0:
        z = z + latent_noise * z.detach().std(dim=(1, 2, 3, 4), keepdim=True) * torch.randn_like(z)
    recon = ae.decode_raw(z, first_chunk=True)  # [B, F, 3, H, W]
    target = video.to(recon.dtype)
    l1 = (recon - target).abs().mean()
    mse = ((recon - target) ** 2).mean()
    grads = [
        (recon.diff(dim=-1) - target.diff(dim=-1)).abs().mean(),  # dx
        (recon.diff(dim=-2) - target.diff(dim=-2)).abs().mean(),  # dy
    ]
    if video.shape[1] > 1:
        grads.append((recon.diff(dim=1) - target.diff(dim=1)).abs().mean())  # dt
    grad = torch.stack(grads).mean()
    loss = l1_weight * l1 + mse_weight * mse + grad_weight * grad
    psnr = 10 * torch.log10(4.0 / mse.detach().clamp_min(1e-12))  # peak-to-peak range 2 -> 2^2 = 4
    logs = {"loss": float(loss.detach()), "l1": float(l1.detach()), "mse": float(mse.detach()),
            "grad": float(grad.detach()), "psnr": float(psnr)}
    return loss, logs


# ---------------------------------------------------------------------------------------------
# Test stand-in


class PixelSpaceStandIn(CausalVideoAutoencoder):
    """TEST STAND-IN, not a codec: parameter-free 'latents' that are pooled pixels.

    Each latent frame holds the 8x8 average-pooled RGB of its pixel frames: the first frame in
    channels 0-2, a group's T frames in channels 0 to 3T-1, zeros elsewhere. Decoding repeats
    each pooled pixel 8x8. Shapes and the causal 4k+1 geometry match the real codec, so model,
    session and benchmark tests can run without trained weights. Needs latent_channels >= 3T.
    """

    def __init__(self, cfg: VideoConfig | None = None):
        cfg = cfg or VideoConfig()
        super().__init__(cfg)
        if cfg.latent_channels < 3 * cfg.temporal_stride:
            raise ValueError(
                f"PixelSpaceStandIn needs video.latent_channels >= {3 * cfg.temporal_stride}, got {cfg.latent_channels}"
            )

    def _pad(self, x):  # (N, c, h, w) -> (N, C, h, w)
        return F.pad(x, (0, 0, 0, 0, 0, self.latent_channels - x.shape[1]))

    def _encode_first(self, frames):
        return self._pad(F.avg_pool2d(frames, self.spatial_stride))

    def _encode_groups(self, groups):
        pooled = F.avg_pool2d(rearrange(groups, "n t c h w -> n (t c) h w"), self.spatial_stride)
        return self._pad(pooled)

    def _decode_first(self, z):
        return F.interpolate(z[:, :3], scale_factor=float(self.spatial_stride), mode="nearest")

    def _decode_groups(self, z):
        x = F.interpolate(z[:, : 3 * self.temporal_stride], scale_factor=float(self.spatial_stride), mode="nearest")
        return rearrange(x, "n (t c) h w -> n t c h w", t=self.temporal_stride)

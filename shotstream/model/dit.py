"""A Wan2.1-style latent video DiT that runs bidirectionally or block-causally with a KV cache.

Module names and parameter layout follow Wan's `WanModel` exactly (`patch_embedding`,
`text_embedding`, `time_embedding`, `time_projection`, `blocks.N.self_attn.q`, ..., `head.head`),
so official checkpoints load without renaming (see `model/loading.py`). What ShotStream adds:

- every latent frame carries (temporal position, shot flag, caption slot): the shot flag drives
  the RoPE discontinuity indicator and each frame cross-attends to its own shot's caption;
- timesteps are per frame, so clean context frames (t = 0) sit beside noisy target frames;
- the same weights attend either over the whole sequence (optionally under a frame-level
  mask, e.g. block-causal) or, chunk by chunk, over a `KVCache` prefix.

Layouts: latents [B, F, C, H, W]; tokens [B, N, D] with N = F * h * w (frame-major).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F_
from einops import rearrange, repeat

from shotstream.config import ModelConfig
from shotstream.model.memory import KVCache, LayerKV
from shotstream.model.rope import apply_rope, rope_angles, rope_phasors


@dataclass
class FrameInfo:
    """Per-frame metadata of a latent sequence, each [B, F].

    pos: temporal RoPE position (context frames 0..C-1, then the target's frames).
    shot: shot index of the frame (context: its source shot; target: the current shot).
    text_index: which caption slot of `text` the frame cross-attends to.
    cut: frames where the learned-indicator ablation adds its embedding (target's first chunk).
    """

    pos: torch.Tensor
    shot: torch.Tensor
    text_index: torch.Tensor
    cut: torch.Tensor

    @classmethod
    def build(cls, pos, shot, text_index=None, cut=None, batch: int = 1, device=None) -> "FrameInfo":
        """Broadcast lists or [F] tensors to [B, F] (text_index defaults to slot 0, cut to False)."""
        def bt(v, dtype):
            v = torch.as_tensor(v, dtype=dtype, device=device)
            return v.expand(batch, -1).contiguous() if v.dim() == 1 else v

        pos = bt(pos, torch.float32)
        return cls(
            pos=pos,
            shot=bt(shot, torch.float32),
            text_index=bt(text_index if text_index is not None else [0] * pos.shape[1], torch.long),
            cut=bt(cut if cut is not None else [False] * pos.shape[1], torch.bool),
        )

    def slice(self, start: int, stop: int) -> "FrameInfo":
        return FrameInfo(self.pos[:, start:stop], self.shot[:, start:stop], self.text_index[:, start:stop], self.cut[:, start:stop])

    @property
    def num_frames(self) -> int:
        return self.pos.shape[1]


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Wan's timestep embedding: [cos(t * w), sin(t * w)], w = 10000^(-i / half). t [...] -> [..., dim]."""
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    args = t.to(torch.float64)[..., None] * freqs
    return torch.cat([args.cos(), args.sin()], dim=-1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):  # (in fp32, as Wan's)
        return F_.rms_norm(x.float(), x.shape[-1:], eps=self.eps).to(x.dtype) * self.weight


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 (Wan's WanLayerNorm), returned in the input dtype. torch's kernels
    already normalise a bf16 or fp16 input in fp32 and round once, so an input in the weights' dtype
    goes straight in: 2x faster on the CPU than a round trip through fp32, with which it agrees
    but for ~1 value in 30,000 (one bf16 step: the reduction's order)."""

    def forward(self, x):
        if self.weight is None or self.weight.dtype == x.dtype:
            return super().forward(x).to(x.dtype)  # (CUDA's autocast runs layer_norm in fp32)
        b = self.bias.float() if self.bias is not None else None  # (fp32 weights, a bf16 input: autocast)
        return F_.layer_norm(x.float(), self.normalized_shape, self.weight.float(), b, self.eps).to(x.dtype)


class Attention(nn.Module):
    """Wan's q, k, v, o projections with RMS-normalised queries and keys."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k = RMSNorm(dim, eps) if qk_norm else nn.Identity()

    def heads(self, t):
        return t.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)  # [B, N, D] -> [B, H, N, Dh]


class SelfAttention(Attention):
    def forward(self, x, rope, attn_mask=None, cache: LayerKV | None = None):
        q = apply_rope(self.heads(self.norm_q(self.q(x))), rope)  # [B, H, N, Dh]
        k, v = self.keys_values(x, rope)
        if cache is not None:
            k, v = cache.extend(k, v)  # prefix (global + local context) + this chunk
        out = F_.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.o(merge_heads(out))

    def keys_values(self, x, rope):
        """The K/V [B, H, N, Dh] of tokens x: what a cache keeps of them."""
        return apply_rope(self.heads(self.norm_k(self.k(x))), rope), self.heads(self.v(x))


class CrossAttention(Attention):
    """Each frame attends to the caption in its own slot: queries grouped per frame."""

    def forward(self, x, text, text_mask, text_index, frames: int, cache: LayerKV | None = None):
        # x [B, N, D]; text [B, S, L, D]; text_mask [B, S, L] or None (attend to every token);
        # text_index [B, F]; cache: keeps the captions' K/V for the next pass (streaming)
        # Project only the slots these frames read: a streamed chunk reads one caption of the
        # session's up to C + 1, so its cost stays flat as the story's history fills the slots.
        slots, text_index = torch.unique(text_index, return_inverse=True)
        mask = text_mask[:, slots] if text_mask is not None else None
        project = lambda t: (self.norm_k(self.k(t)), self.v(t))  # noqa: E731
        k, v = cache.caption(text, slots, project) if cache is not None else project(text[:, slots])  # [B, S', L, D]
        q = self.norm_q(self.q(x))
        if len(slots) == 1:  # every frame reads the same caption (a streamed chunk): one attention for all
            return self.o(self.attend(q, k[:, 0], v[:, 0], mask[:, 0] if mask is not None else None))
        B, L = x.shape[0], k.shape[2]
        index = text_index[:, :, None].expand(-1, -1, L)
        per_frame = lambda t: rearrange(torch.gather(t, 1, index[..., None].expand(-1, -1, -1, t.shape[-1])),  # noqa: E731
                                        "b f l d -> (b f) l d")
        if mask is not None:
            mask = rearrange(torch.gather(mask, 1, index), "b f l -> (b f) l")
        out = self.attend(rearrange(q, "b (f n) d -> (b f) n d", f=frames), per_frame(k), per_frame(v), mask)
        return self.o(rearrange(out, "(b f) n d -> b (f n) d", b=B))

    def attend(self, q, k, v, mask):
        """Queries [B, N, D] to keys and values [B, L, D], where mask [B, L] (or None) allows -> [B, N, D]."""
        mask = mask[:, None, None] if mask is not None else None
        out = F_.scaled_dot_product_attention(self.heads(q), self.heads(k), self.heads(v), attn_mask=mask)
        return merge_heads(out)


class WanBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.dim
        self.norm1 = LayerNorm(d, eps=cfg.eps, elementwise_affine=False)
        self.self_attn = SelfAttention(d, cfg.num_heads, cfg.qk_norm, cfg.eps)
        self.norm3 = LayerNorm(d, eps=cfg.eps, elementwise_affine=True) if cfg.cross_attn_norm else nn.Identity()
        self.cross_attn = CrossAttention(d, cfg.num_heads, cfg.qk_norm, cfg.eps)
        self.norm2 = LayerNorm(d, eps=cfg.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(d, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, d))
        self.modulation = nn.Parameter(torch.randn(1, 6, d) / d**0.5)

    def forward(self, x, e, rope, text, text_mask, text_index, attn_mask=None, cache: LayerKV | None = None):
        # x [B, N, D]; e [B, F, 6, D]: per-frame shift/scale/gate, broadcast over a frame's tokens
        shift1, scale1, gate1, shift2, scale2, gate2 = (self.modulation[:, None] + e).unbind(2)  # each [B, F, D]
        x = x + gated(self.self_attn(modulate_frames(self.norm1(x), shift1, scale1), rope, attn_mask, cache), gate1)
        x = x + self.cross_attn(self.norm3(x), text, text_mask, text_index, e.shape[1], cache)
        return x + gated(self.ffn(modulate_frames(self.norm2(x), shift2, scale2)), gate2)

    def stage(self, x, e, rope, cache: LayerKV) -> None:
        """Only write x's keys and values to the cache: all a t = 0 pass needs of the last block."""
        shift1, scale1 = (self.modulation[:, None, :2] + e[:, :, :2]).unbind(2)
        cache.extend(*self.self_attn.keys_values(modulate_frames(self.norm1(x), shift1, scale1), rope))


# The per-block reshapes (heads, frames) are torch views rather than einops patterns: they run
# ~16 times a block, and einops' dispatch (~15 us a call) was ~3% of a streamed chunk on the CPU.


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[B, H, N, Dh] -> [B, N, H * Dh]."""
    return x.transpose(1, 2).flatten(2)


def modulate_frames(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Tokens x [B, N, D] modulated by their frame's shift and scale [B, F, D]."""
    h = x.unflatten(1, (shift.shape[1], -1))  # [B, F, n, D]
    return modulate(h, shift[:, :, None], scale[:, :, None]).flatten(1, 2)


def gated(x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """Tokens x [B, N, D] gated by their frame's gate [B, F, D]."""
    return (x.unflatten(1, (gate.shape[1], -1)) * gate[:, :, None]).flatten(1, 2)


class Head(nn.Module):
    def __init__(self, cfg: ModelConfig, out_dim: int):
        super().__init__()
        self.norm = LayerNorm(cfg.dim, eps=cfg.eps, elementwise_affine=False)
        self.head = nn.Linear(cfg.dim, out_dim * math.prod(cfg.patch_size))
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim**0.5)

    def forward(self, x, e):
        # x [B, N, D]; e [B, F, D]
        shift, scale = (self.modulation[:, None] + e[:, :, None]).unbind(2)  # [B, F, D]
        return self.head(modulate_frames(self.norm(x), shift, scale))


class WanDiT(nn.Module):
    def __init__(self, cfg: ModelConfig, latent_channels: int = 16):
        super().__init__()
        cfg.validate()
        self.cfg, self.latent_channels = cfg, latent_channels
        d = cfg.dim
        self.patch_embedding = nn.Conv3d(latent_channels, d, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, d), nn.GELU(approximate="tanh"), nn.Linear(d, d))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        self.blocks = nn.ModuleList(WanBlock(cfg) for _ in range(cfg.num_layers))
        self.head = Head(cfg, latent_channels)
        if cfg.shot_indicator == "learned":
            # Ablation: a learned embedding on the target's first chunk instead of the RoPE phase.
            self.shot_embedding = nn.Parameter(torch.zeros(d))
        self.initialize_weights()

    def initialize_weights(self):
        """Wan's init: Xavier linears and patch embedding, N(0, .02) embedders, zero output head."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.patch_embedding.weight.flatten(1))
        nn.init.zeros_(self.patch_embedding.bias)
        for seq in (self.text_embedding, self.time_embedding):
            for m in seq:
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, std=0.02)
        nn.init.zeros_(self.head.head.weight)
        nn.init.zeros_(self.head.head.bias)

    @property
    def dtype(self) -> torch.dtype:
        return self.patch_embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.patch_embedding.weight.device

    def grid(self, height: int, width: int) -> tuple[int, int]:
        _, ph, pw = self.cfg.patch_size
        return height // ph, width // pw

    def embed_text(self, text: torch.Tensor) -> torch.Tensor:
        """Text-encoder states [B, S, L, text_dim] -> [B, S, L, D]; cacheable per caption."""
        return self.text_embedding(text.to(self.dtype))

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        frames: FrameInfo,
        cache: KVCache | None = None,
        frame_mask: torch.Tensor | None = None,
        key_mask: torch.Tensor | None = None,
        text_embedded: bool = False,
        cache_only: bool = False,
    ) -> torch.Tensor | None:
        """Predict the flow-matching velocity of every frame.

        x: latents [B, F, C, H, W]; timestep: [B, F] on Wan's 0..1000 scale (0 = clean);
        text: [B, S, L, text_dim] caption slots (or [B, S, L, D] if `text_embedded`),
        text_mask: [B, S, L] bool (not applied when cfg.text_mask is False); frames: per-frame FrameInfo.
        cache: attend to its prefix and stage this input after it (block-causal streaming).
        frame_mask: [F, F] bool, True where frame q may attend to frame k (None = full).
        key_mask: [B, F] bool, False for frames nobody may attend to (dropped context).
        Returns velocity [B, F, C, H, W]; `cache_only` (a t = 0 pass that writes the cache): None,
        since what the last block computes after its keys and values and the head would be read by none.
        """
        B, F, C, H, W = self._check_inputs(x, timestep, text, text_mask, frames, text_embedded)
        if cache_only and cache is None:
            raise ValueError("cache_only needs a cache to write")
        pt, ph, pw = self.cfg.patch_size
        h, w = H // ph, W // pw

        tokens = self.patch_embedding(rearrange(x.to(self.dtype), "b f c h w -> b c f h w"))
        tokens = rearrange(tokens, "b d f h w -> b f (h w) d")  # [B, F, n, D]
        if self.cfg.shot_indicator == "learned":
            tokens = tokens + frames.cut[:, :, None, None].to(tokens.dtype) * self.shot_embedding
        tokens = rearrange(tokens, "b f n d -> b (f n) d")  # [B, N, D]

        t_emb = sinusoidal_embedding(timestep, self.cfg.freq_dim).to(self.dtype)  # [B, F, freq_dim]
        e = self.time_embedding(t_emb)  # [B, F, D]
        e6 = rearrange(self.time_projection(e), "b f (six d) -> b f six d", six=6)  # [B, F, 6, D]

        phi = self.cfg.shot_phase if self.cfg.shot_indicator == "rope" else 0.0
        angles = rope_angles(frames.pos, frames.shot, (h, w), self.cfg.head_dim, self.cfg.rope_theta, phi)
        rope = rope_phasors(angles)  # [B, 1, N, Dh/2] complex

        ctx = text.to(self.dtype) if text_embedded else self.embed_text(text)  # [B, S, L, D]
        text_mask = text_mask if self.cfg.text_mask else None  # (cfg.text_mask: the released model reads the padding)
        attn_mask = self._token_mask(frame_mask, key_mask, h * w, B, F)
        layers = cache.layers if cache is not None else (None,) * len(self.blocks)
        full = len(self.blocks) - cache_only  # (a cache-only pass: the last block only stages its K/V)
        for block, layer_cache in zip(self.blocks[:full], layers[:full], strict=True):
            tokens = block(tokens, e6, rope, ctx, text_mask, frames.text_index, attn_mask, layer_cache)
        if cache_only:
            self.blocks[-1].stage(tokens, e6, rope, layers[-1])
            return None
        out = self.head(tokens, e)  # [B, N, pt*ph*pw*C]
        return rearrange(out, "b (f h w) (pt ph pw c) -> b (f pt) c (h ph) (w pw)", f=F // pt, h=h, w=w, pt=pt, ph=ph, pw=pw)

    @staticmethod
    def _token_mask(frame_mask, key_mask, n, batch, frames):
        """Frame-level masks -> SDPA boolean mask [B|1, 1, N, N] (True = may attend)."""
        if frame_mask is None and key_mask is None:
            return None
        mask = torch.ones(frames, frames, dtype=torch.bool, device=(frame_mask if frame_mask is not None else key_mask).device)
        if frame_mask is not None:
            mask = mask & frame_mask
        mask = mask[None].expand(batch, -1, -1)
        if key_mask is not None:
            # every frame still sees itself, so no query row is left without keys
            mask = mask & (key_mask[:, None, :] | torch.eye(frames, dtype=torch.bool, device=mask.device))
        return repeat(mask, "b q k -> b 1 (q n) (k m)", n=n, m=n)

    def _check_inputs(self, x, timestep, text, text_mask, frames, text_embedded):
        if x.dim() != 5:
            raise ValueError(f"latents must be [B, F, C, H, W], got shape {tuple(x.shape)}")
        B, F, C, H, W = x.shape
        pt, ph, pw = self.cfg.patch_size
        if C != self.latent_channels:
            raise ValueError(f"latents have {C} channels, the model expects {self.latent_channels}")
        if H % ph or W % pw or F % pt:
            raise ValueError(f"latent size F={F}, H={H}, W={W} is not divisible by the patch size {self.cfg.patch_size}")
        if x.device != self.device:
            raise ValueError(f"latents are on {x.device} but the model is on {self.device}")
        if not x.is_floating_point():
            raise TypeError(f"latents must be floating point, got {x.dtype}")
        if tuple(timestep.shape) != (B, F):
            raise ValueError(f"timestep must be [B, F] = {(B, F)}, got {tuple(timestep.shape)}")
        if frames.pos.shape != (B, F):
            raise ValueError(f"frame info must be [B, F] = {(B, F)}, got {tuple(frames.pos.shape)}")
        width = self.cfg.dim if text_embedded else self.cfg.text_dim
        if text.dim() != 4 or text.shape[0] != B or text.shape[-1] != width:
            raise ValueError(f"text must be [B, S, L, {width}] with B={B}, got {tuple(text.shape)}")
        if tuple(text_mask.shape) != tuple(text.shape[:3]) or text_mask.dtype != torch.bool:
            raise ValueError(f"text_mask must be bool {tuple(text.shape[:3])}, got {text_mask.dtype} {tuple(text_mask.shape)}")
        if int(frames.text_index.max()) >= text.shape[1] or int(frames.text_index.min()) < 0:
            raise ValueError(f"frame text_index out of range for {text.shape[1]} caption slots")
        return B, F, C, H, W


def block_causal_mask(blocks: torch.Tensor) -> torch.Tensor:
    """Frame-level mask from block ids [F]: frame q sees frame k iff block[k] <= block[q]."""
    return blocks[None, :] <= blocks[:, None]


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

"""Next-shot conditioning: what shot k is conditioned on, and the one bidirectional path that reads it.

`NextShotConditioning` holds shot k's conditional frames (padded, with a valid mask), their shot
flags and caption slots, the caption slots themselves, and shot k's own slot and flag. It builds
the per-frame metadata the DiT reads (`context_frames`, `target_frames`, `frames`), the key mask,
and the conditionings of guidance's unconditional branch (`without_caption`, `without_context`).

The streaming session builds one from its history (session.prepare_context), training from a
batch (`NextShotBatch.conditioning`); both then run the same code:
- causal student: rollout.write_global_context / rollout_shot (through `model_velocity`);
- bidirectional models (teacher, baselines, ODE pairs, DMD's real and fake scores):
  `next_shot_velocity`, `unconditional`, `generate_shot_bidirectional`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch.profiler import record_function

from shotstream import flow_matching as fm
from shotstream.model.dit import FrameInfo, WanDiT


@dataclass
class NextShotConditioning:
    """Everything shot k is conditioned on (tensors on the model's device).

    context: clean latents of the conditional frames [B, Cf, C, h, w] (Cf may be 0).
    context_valid: [B, Cf] bool, False for padded or dropped frames (invisible to every query);
        None: all valid, and no key mask at all.
    context_shots: [B, Cf] source shot of each conditional frame (RoPE shot flag).
    context_slots: [B, Cf] caption slot each conditional frame attends to.
    text, text_mask: caption slots [B, S, L, D] / [B, S, L]; slot `target_slot` is shot k's.
        Embedded by the DiT (`text_embedded`), or text-encoder states that the DiT embeds itself.
    shot: k, the index of the shot being generated (or [B] when a training batch mixes shots).
    chunk_frames: the model's chunk size (the learned indicator marks the target's first chunk).
    target_flag: the RoPE shot flag of shot k's frames, when not k (the released model's first
        shot: flag 1 after its zero context, ModelConfig.first_shot_zero_context).
    """

    context: torch.Tensor
    context_shots: torch.Tensor
    context_slots: torch.Tensor
    text: torch.Tensor
    text_mask: torch.Tensor
    target_slot: int
    shot: int | torch.Tensor
    chunk_frames: int = 3
    target_flag: int | None = None
    context_valid: torch.Tensor | None = None
    text_embedded: bool = True

    @property
    def num_context(self) -> int:
        return self.context.shape[1]

    @property
    def has_context(self) -> bool:
        """Whether any conditional frame is visible (else hiding the context changes nothing)."""
        return self.num_context > 0 and (self.context_valid is None or bool(self.context_valid.any()))

    def context_frames(self) -> FrameInfo:
        """Context frames take positions 0..Cf-1 and their source shot as flag."""
        B, Cf = self.context_shots.shape
        pos = torch.arange(Cf, device=self.context.device).expand(B, -1)
        cut = torch.zeros(B, Cf, dtype=torch.bool, device=self.context.device)
        return FrameInfo(pos.float(), self.context_shots.float(), self.context_slots.long(), cut)

    def target_frames(self, start: int, count: int, pos_offset: int | None = None) -> FrameInfo:
        """Target frames [start, start+count) of shot k, after the context in position (or from
        `pos_offset`: the rolling-window ablation continues positions across shots)."""
        B, device = self.context.shape[0], self.context.device
        first = (self.num_context if pos_offset is None else pos_offset) + start
        pos = torch.arange(first, first + count, device=device).float().expand(B, -1)
        shot = torch.as_tensor(self.shot, device=device).float().reshape(-1, 1).expand(B, count)  # int or [B]
        idx = torch.arange(start, start + count, device=device)
        return FrameInfo(
            pos=pos,
            shot=shot if self.target_flag is None else torch.full_like(shot, self.target_flag),
            text_index=torch.full((B, count), self.target_slot, dtype=torch.long, device=device),
            # the learned-indicator ablation marks the first chunk after a cut (not the first shot's)
            cut=(idx[None] < self.chunk_frames) & (shot > 0),
        )

    def frames(self, count: int) -> FrameInfo:
        """FrameInfo of the sequence [context | target frames 0..count)."""
        return concat_frames(self.context_frames(), self.target_frames(0, count))

    def key_mask(self, count: int) -> torch.Tensor | None:
        """[B, Cf + count]: invalid conditional frames hidden, `count` target frames after them
        visible; None when every conditional frame is valid."""
        if self.context_valid is None:
            return None
        B = self.context.shape[0]
        return torch.cat([self.context_valid, torch.ones(B, count, dtype=torch.bool, device=self.context.device)], 1)

    def without_caption(self, null_text: torch.Tensor, null_mask: torch.Tensor, all_slots: bool = False) -> "NextShotConditioning":
        """The target's caption slot replaced by the null caption (null_text [1 or B, L, D] in the
        space of `text`, null_mask [1 or B, L]), as text dropout trained it; or every slot with
        `all_slots` (the official teacher: the negative prompt everywhere)."""
        text, mask = self.text.clone(), self.text_mask.clone()
        if all_slots:
            text[:], mask[:] = null_text[:, None], null_mask[:, None]
        else:
            text[:, self.target_slot], mask[:, self.target_slot] = null_text, null_mask
        return dataclasses.replace(self, text=text, text_mask=mask)

    def without_context(self) -> "NextShotConditioning":
        """No conditional frame visible, as context dropout trained it."""
        B, Cf = self.context.shape[:2]
        return dataclasses.replace(self, context_valid=torch.zeros(B, Cf, dtype=torch.bool, device=self.context.device))


def concat_frames(a: FrameInfo, b: FrameInfo) -> FrameInfo:
    return FrameInfo(*(torch.cat([getattr(a, k), getattr(b, k)], dim=1) for k in ("pos", "shot", "text_index", "cut")))


def model_velocity(model: WanDiT, x, sigma, cond: NextShotConditioning, frames: FrameInfo, **kw) -> torch.Tensor | None:
    """The DiT's velocity for latents x [B, F, ...] at noise level sigma [B] (or [B, F]), reading
    `cond`'s caption slots; `kw`: cache, frame_mask, key_mask, cache_only (then None: the pass
    only writes the cache). In the model's dtype."""
    t = sigma * fm.TIMESTEP_SCALE
    t = (t[:, None] if t.dim() == 1 else t).expand(x.shape[0], x.shape[1]).to(torch.float32)
    return model(x, t, cond.text, cond.text_mask, frames, text_embedded=cond.text_embedded, **kw)


def next_shot_velocity(model: WanDiT, cond: NextShotConditioning, x: torch.Tensor, sigma: torch.Tensor,
                       context_noise: torch.Tensor | None = None, float32: bool = False) -> torch.Tensor:
    """Bidirectional next-shot velocity of the target frames x [B, F, ...] at sigma [B]: the
    conditional latents concatenated before them, clean at t = 0, or, given `context_noise`
    [B, Cf, C, h, w], at the target's level, (1 - sigma) * context + sigma * context_noise (the
    official teacher's sampling). Every bidirectional next-shot model (teacher, critic, real score)
    reads its conditioning this way. In the model's dtype, or float32 (`float32`: the samplers
    integrate in float32 whatever the weights')."""
    B, F = x.shape[:2]
    Cf = cond.num_context
    ctx, ctx_sigma = cond.context.to(x.dtype), torch.zeros(B, Cf, device=x.device)
    if context_noise is not None:  # one flow-matching mix
        level = sigma.to(x.dtype)[:, None, None, None, None]
        ctx = (1 - level) * ctx + level * context_noise.to(x.dtype)
        ctx_sigma = sigma[:, None].expand(B, Cf).to(ctx_sigma.dtype)
    seq = torch.cat([ctx, x], dim=1)  # [B, Cf + F, C, h, w]
    s = torch.cat([ctx_sigma, sigma[:, None].expand(B, F)], dim=1)
    v = model_velocity(model, seq, s, cond, cond.frames(F), key_mask=cond.key_mask(F))[:, Cf:]
    return v.float() if float32 else v


def unconditional(model: WanDiT, cond: NextShotConditioning, null_text, scale: float, context_scale: float = 1.0,
                  all_slots: bool = False, context_noise: torch.Tensor | None = None,
                  float32: bool = False) -> fm.DenoiseFn | None:
    """Classifier-free guidance's unconditional branch as a velocity function (fm.unconditional_fn),
    None without guidance: the null caption (`without_caption`; null_text = (text [1 or B, L, D],
    mask [1 or B, L])), and for guidance on the earlier shots (`context_scale` != 1) no
    conditional frames either (`without_context`). `context_noise`, `float32`: as next_shot_velocity."""
    if scale == 1.0 and context_scale == 1.0:
        return None
    if null_text is None:
        raise ValueError("classifier-free guidance needs the null caption embedding")
    no_caption = cond.without_caption(*null_text, all_slots=all_slots)

    def velocity(c):
        return lambda x, sigma: next_shot_velocity(model, c, x, sigma, context_noise, float32)
    no_caption_fn = velocity(no_caption)
    no_context_fn = velocity(no_caption.without_context()) if cond.has_context else no_caption_fn
    return fm.unconditional_fn(no_caption_fn, no_context_fn, scale, context_scale)


def generate_shot_bidirectional(
    model: WanDiT,
    cond: NextShotConditioning,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    guidance_scale: float = 1.0,
    null_text: tuple[torch.Tensor, torch.Tensor] | None = None,
    callback=None,
    context_scale: float = 1.0,
    context_noise: torch.Tensor | None = None,
    null_all_slots: bool = False,
) -> torch.Tensor:
    """Teacher / baseline sampling: Euler ODE over the whole shot (`next_shot_velocity`, in
    float32), with guidance (`unconditional`). Context frames are never updated; only the
    target's velocity is used. Returns x0 [B, F, C, h, w]."""
    if context_noise is not None and context_noise.shape != cond.context.shape:
        raise ValueError(f"context_noise has shape {tuple(context_noise.shape)}, the context {tuple(cond.context.shape)}")
    uncond = unconditional(model, cond, null_text, guidance_scale, context_scale, null_all_slots, context_noise, True)
    with torch.no_grad(), record_function("denoise"):
        return fm.euler_sample(lambda x, sigma: next_shot_velocity(model, cond, x, sigma, context_noise, True),
                               noise, sigmas, guidance_scale, uncond, callback)

"""The one rollout loop: how a shot is generated, shared by inference and training.

`ShotStreamSession` (inference, demo, benchmark) and the self-forcing trainer call exactly these
functions; the trainer only adds gradient control (exit step, which chunks keep gradients).

Causal (student):  write_global_context() once per shot, then rollout_shot() chunk by chunk:
    a chunk of noise is denoised in a few steps against [global K/V, local K/V, itself], then its
    clean prediction is run once more at t = 0 to write its K/V into the local cache.
Bidirectional (teacher, baselines): generate_shot_bidirectional() denoises the whole shot at
    once, attending to the context frames concatenated before it (clean, or at the target's noise
    level as the official teacher samples), with CFG.

The phases carry `torch.profiler.record_function` labels (free unless a profiler is running):
benchmark/profile.py times them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.profiler import record_function

from shotstream import flow_matching as fm
from shotstream.model.dit import FrameInfo, WanDiT
from shotstream.model.memory import DualCache


@dataclass
class ShotConditioning:
    """Everything shot k is conditioned on (tensors on the model's device).

    context: clean latents of the conditional frames [B, Cf, C, h, w] (Cf may be 0).
    context_shots: [B, Cf] source shot of each conditional frame (RoPE shot flag).
    context_slots: [B, Cf] caption slot each conditional frame attends to.
    text, text_mask: embedded caption slots [B, S, L, D] / [B, S, L]; slot `target_slot` is shot k's.
    shot: k, the index of the shot being generated.
    target_flag: the RoPE shot flag of shot k's frames, when not k (the released model's first
        shot: flag 1 after its zero context, ModelConfig.first_shot_zero_context).
    """

    context: torch.Tensor
    context_shots: torch.Tensor
    context_slots: torch.Tensor
    text: torch.Tensor
    text_mask: torch.Tensor
    target_slot: int
    shot: int | torch.Tensor  # or [B] when the items of a training batch are at different shots
    chunk_frames: int = 3  # the model's chunk size (the learned indicator marks the first chunk)
    target_flag: int | None = None

    @property
    def num_context(self) -> int:
        return self.context.shape[1]

    def context_frames(self) -> FrameInfo:
        """Context frames take positions 0..Cf-1 and their source shot as flag."""
        B, Cf = self.context_shots.shape
        pos = torch.arange(Cf, device=self.context.device).expand(B, -1)
        cut = torch.zeros(B, Cf, dtype=torch.bool, device=self.context.device)
        return FrameInfo(pos.float(), self.context_shots.float(), self.context_slots.long(), cut)

    def target_frames(self, start: int, count: int, pos_offset: int | None = None) -> FrameInfo:
        """Target frames [start, start+count) of shot k, after the context in position."""
        B, device = self.context.shape[0], self.context.device
        first = (self.num_context if pos_offset is None else pos_offset) + start
        pos = torch.arange(first, first + count, device=device).float().expand(B, -1)
        shot = torch.as_tensor(self.shot, device=device).float().reshape(-1, 1).expand(B, count)  # int or [B]
        idx = torch.arange(start, start + count, device=device)
        return FrameInfo(
            pos=pos,
            shot=shot if self.target_flag is None else torch.full_like(shot, self.target_flag),
            text_index=torch.full((B, count), self.target_slot, dtype=torch.long, device=device),
            # learned-indicator ablation: mark the first chunk after a cut
            cut=(idx[None] < self.chunk_frames) & (shot > 0),
        )


def _velocity(model: WanDiT, x, sigma, cond: ShotConditioning, frames: FrameInfo, cache=None, **kw):
    """Model velocity in float32 for latents x [B, F, ...] at noise level sigma [B] (or [B, F])."""
    t = sigma * fm.TIMESTEP_SCALE
    t = (t[:, None] if t.dim() == 1 else t).expand(x.shape[0], x.shape[1]).to(torch.float32)
    v = model(x, t, cond.text, cond.text_mask, frames, cache=cache, text_embedded=True, **kw)
    return v.float()


def write_global_context(model: WanDiT, memory: DualCache, cond: ShotConditioning) -> None:
    """Rebuild the global context cache for shot k: one t = 0 pass over the conditional frames."""
    memory.global_context.begin()
    if cond.num_context:
        zero = torch.zeros(cond.context.shape[0], device=cond.context.device)
        with torch.no_grad(), record_function("global_cache_write"):
            _velocity(model, cond.context, zero, cond, cond.context_frames(), cache=memory.kv)
        memory.kv.commit()
    memory.global_context.seal()


def rollout_shot(
    model: WanDiT,
    memory: DualCache,
    cond: ShotConditioning,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    generator: torch.Generator | None = None,
    exit_steps: list[int] | None = None,
    grad_chunks: set[int] | None = None,
    pos_offset: int | None = None,
    reset_local: bool = True,
) -> Iterator[torch.Tensor]:
    """Generate one shot chunk by chunk; yields each chunk's clean latents [B, f, C, h, w].

    noise: [B, F, C, h, w] for the whole shot; sigmas: the student's levels (few_step_sample).
    exit_steps / grad_chunks: self-forcing training stops denoising chunk j at `exit_steps[j]` and
    keeps gradients only for the chunks in `grad_chunks` (at their exit step); inference leaves
    both None (every step, no gradients).
    pos_offset / reset_local: the rolling-window ablation keeps the local cache across shots and
    continues positions instead of starting after the context.
    """
    if reset_local:
        memory.local_context.reset()
    chunk = cond.chunk_frames = model.cfg.chunk_frames
    B, F = noise.shape[:2]
    for start in range(0, F, chunk):
        n = min(chunk, F - start)
        frames = cond.target_frames(start, n, pos_offset)
        memory.local_context.make_room(n)
        with_grad = torch.is_grad_enabled() and grad_chunks is not None and start // chunk in grad_chunks
        with torch.set_grad_enabled(with_grad), record_function("denoise"):
            x0 = fm.few_step_sample(
                lambda x, s: _velocity(model, x, s, cond, frames, cache=memory.kv),
                noise[:, start:start + n], sigmas, generator, grad_exit_only=True,
                exit_step=None if exit_steps is None else exit_steps[start // chunk],
            )
        # The chunk goes out first, so its decoding and display do not wait for its K/V; then
        # Self-Forcing: the clean chunk, run once at t = 0, becomes the local context.
        yield x0
        with torch.no_grad(), record_function("cache_write"):
            _velocity(model, x0.detach(), torch.zeros(B, device=x0.device), cond, frames, cache=memory.kv)
        memory.kv.commit()


def generate_shot_bidirectional(
    model: WanDiT,
    cond: ShotConditioning,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    guidance_scale: float = 1.0,
    null_text: tuple[torch.Tensor, torch.Tensor] | None = None,
    callback=None,
    context_scale: float = 1.0,
    context_noise: torch.Tensor | None = None,
    null_all_slots: bool = False,
) -> torch.Tensor:
    """Teacher / baseline: Euler ODE over the whole shot, context concatenated before it.

    Context frames are never updated; only the target's velocity is used. They sit clean at t = 0,
    or, given `context_noise` [B, Cf, C, h, w], at the target's level at every step,
    (1 - sigma) * context + sigma * context_noise (the official teacher's sampling). With
    guidance, the unconditional branch replaces the target's caption by `null_text` (embedded
    [B, 1, L, D] + mask), as text dropout did in training, or every caption slot with
    `null_all_slots` (the official teacher: the negative prompt everywhere); `context_scale` != 1
    also guides on the earlier shots, whose frames are hidden as context dropout did
    (fm.unconditional_fn). Returns x0 [B, F, C, h, w].
    """
    B, F = noise.shape[:2]
    Cf = cond.num_context
    if context_noise is not None and context_noise.shape != cond.context.shape:
        raise ValueError(f"context_noise has shape {tuple(context_noise.shape)}, the context {tuple(cond.context.shape)}")
    frames = _concat_frames(cond.context_frames(), cond.target_frames(0, F))

    def velocity(text, text_mask, key_mask=None):
        def fn(x, sigma):
            ctx, ctx_sigma = cond.context.to(x.dtype), torch.zeros(B, Cf, device=x.device)
            if context_noise is not None:  # the context at the target's level: one flow-matching mix
                level = sigma.to(x.dtype)[:, None, None, None, None]
                ctx = (1 - level) * ctx + level * context_noise.to(x.dtype)
                ctx_sigma = sigma[:, None].expand(B, Cf).to(ctx_sigma.dtype)
            seq = torch.cat([ctx, x], dim=1)  # [B, Cf + F, C, h, w]
            s = torch.cat([ctx_sigma, sigma[:, None].expand(B, F)], dim=1)
            c = dataclasses.replace(cond, text=text, text_mask=text_mask)
            return _velocity(model, seq, s, c, frames, key_mask=key_mask)[:, Cf:]
        return fn

    uncond = None
    if guidance_scale != 1.0 or context_scale != 1.0:
        if null_text is None:
            raise ValueError("classifier-free guidance needs the null caption embedding")
        text, mask = cond.text.clone(), cond.text_mask.clone()
        if null_all_slots:
            text[:], mask[:] = null_text[0], null_text[1]  # [B, 1, ...] over every slot
        else:
            text[:, cond.target_slot], mask[:, cond.target_slot] = null_text[0][:, 0], null_text[1][:, 0]
        no_caption = velocity(text, mask)
        no_context = no_caption
        if Cf:
            hidden = torch.ones(B, Cf + F, dtype=torch.bool, device=noise.device)
            hidden[:, :Cf] = False
            no_context = velocity(text, mask, hidden)
        uncond = fm.unconditional_fn(no_caption, no_context, guidance_scale, context_scale)
    with torch.no_grad(), record_function("denoise"):
        return fm.euler_sample(velocity(cond.text, cond.text_mask), noise, sigmas, guidance_scale, uncond, callback)


def _concat_frames(a: FrameInfo, b: FrameInfo) -> FrameInfo:
    return FrameInfo(*(torch.cat([getattr(a, k), getattr(b, k)], dim=1) for k in ("pos", "shot", "text_index", "cut")))

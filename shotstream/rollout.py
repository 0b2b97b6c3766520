"""The one rollout loop: how a shot is generated, shared by inference and training.

`ShotStreamSession` (inference, demo, benchmark) and the self-forcing trainer call exactly these
functions; the trainer only adds gradient control (exit step, which chunks keep gradients).

Causal (student):  write_global_context() once per shot, then rollout_shot() chunk by chunk:
    a chunk of noise is denoised in a few steps against [global K/V, local K/V, itself], then its
    clean prediction is run once more at t = 0 to write its K/V into the local cache (not the
    shot's last chunk, which no later chunk reads, unless the memory rolls on across shots).
Bidirectional models (teacher, baselines) denoise a whole shot at once: conditioning.py.
A pipeline picks one `Generation` by its model's kind when it loads (GENERATIONS).

The phases carry `torch.profiler.record_function` labels (free unless a profiler is running):
benchmark/profile.py times them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import torch
from torch.profiler import record_function

from shotstream import flow_matching as fm
from shotstream.conditioning import NextShotConditioning, generate_shot_bidirectional, model_velocity
from shotstream.model.dit import WanDiT
from shotstream.model.memory import DualCache


def write_global_context(model: WanDiT, memory: DualCache, cond: NextShotConditioning) -> None:
    """Rebuild the global context cache for shot k: one t = 0 pass over the conditional frames."""
    memory.clear()
    if cond.num_context:
        zero = torch.zeros(cond.context.shape[0], device=cond.context.device)
        with torch.no_grad(), record_function("global_cache_write"):
            model_velocity(model, cond.context, zero, cond, cond.context_frames(), cache=memory.kv, cache_only=True)
    memory.seal_global()


def rollout_shot(
    model: WanDiT,
    memory: DualCache,
    cond: NextShotConditioning,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    generator: torch.Generator | None = None,
    exit_steps: list[int] | None = None,
    grad_chunks: set[int] | None = None,
) -> Iterator[torch.Tensor]:
    """Generate one shot chunk by chunk; yields each chunk's clean latents [B, f, C, h, w].

    noise: [B, F, C, h, w] for the whole shot; sigmas: the student's levels (few_step_sample).
    exit_steps / grad_chunks: self-forcing training stops denoising chunk j at `exit_steps[j]` and
    keeps gradients only for the chunks in `grad_chunks` (at their exit step); inference leaves
    both None (every step, no gradients).
    A rolling memory (the rolling-window ablation) keeps its local window across shots, and the
    shot's positions continue from its last frame instead of starting after the context.
    """
    memory.start_shot()
    chunk = model.cfg.chunk_frames
    cond = dataclasses.replace(cond, chunk_frames=chunk)  # (the learned indicator marks the model's first chunk)
    B, F = noise.shape[:2]
    first = memory.next_position
    for start in range(0, F, chunk):
        n = min(chunk, F - start)
        frames = cond.target_frames(start, n, first)
        cache = memory.stage(n)
        with_grad = torch.is_grad_enabled() and grad_chunks is not None and start // chunk in grad_chunks
        with torch.set_grad_enabled(with_grad), record_function("denoise"):
            x0 = fm.few_step_sample(
                lambda x, s: model_velocity(model, x, s, cond, frames, cache=cache).float(),
                noise[:, start:start + n], sigmas, generator, grad_exit_only=True,
                exit_step=None if exit_steps is None else exit_steps[start // chunk],
            )
        # The chunk goes out first, so its decoding and display do not wait for its K/V; then
        # Self-Forcing: the clean chunk, run once at t = 0, becomes the local context of the shot's
        # later chunks. The last chunk's would be read by none (the next shot starts from its global
        # context alone), unless the memory rolls on across shots.
        yield x0
        if start + n < F or memory.carries_over:
            with torch.no_grad(), record_function("cache_write"):
                model_velocity(model, x0.detach(), torch.zeros(B, device=x0.device), cond, frames, cache=cache,
                               cache_only=True)
            memory.commit()


class Generation:
    """How a kind of model makes a shot from its conditioning, chosen once when a pipeline loads
    (`GENERATIONS[kind]`): the session's loop asks it, never the kind's name."""

    reads_context = True  # conditional frames from earlier shots (the rolling ablation: its window instead)
    caches_context = False  # those frames' K/V written into the session's memory once per shot
    rolling = False  # the memory's local window and positions run on across shots
    streams = True  # chunks come one by one (a bidirectional model's all exist at once)

    def latent_chunks(self, pipe, memory: DualCache, cond: NextShotConditioning, noise: torch.Tensor,
                      generator: torch.Generator) -> Iterator[torch.Tensor]:
        raise NotImplementedError


class CausalGeneration(Generation):
    """The student: chunk by chunk against the dual cache, in the student's few steps."""

    caches_context = True

    def latent_chunks(self, pipe, memory, cond, noise, generator):
        sampler = pipe.config.sampler
        sigmas = fm.student_sigmas(sampler.student_timesteps, sampler.shift)
        yield from rollout_shot(pipe.model, memory, cond, noise, sigmas, generator)


class RollingGeneration(CausalGeneration):
    """The rolling-window ablation: no global context, one local window across the whole story."""

    reads_context = caches_context = False
    rolling = True


class BidirectionalGeneration(Generation):
    """Teacher and baselines: the whole shot at once, with the sampler's guidance."""

    streams = False

    def latent_chunks(self, pipe, memory, cond, noise, generator):
        sampler = pipe.config.sampler
        sigmas = fm.teacher_sigmas(sampler.teacher_steps, sampler.teacher_shift)
        guided = sampler.guidance_scale != 1.0 or sampler.context_scale != 1.0
        context_noise = None
        if sampler.teacher_context_noise == "target":  # one draw per shot, on CPU like the target's
            context_noise = torch.randn(cond.context.shape, generator=generator).to(cond.context)
        x0 = generate_shot_bidirectional(pipe.model, cond, noise, sigmas, sampler.guidance_scale,
                                         pipe.null_caption() if guided else None, context_scale=sampler.context_scale,
                                         context_noise=context_noise, null_all_slots=sampler.teacher_null_slots == "all")
        yield from x0.split(pipe.config.model.chunk_frames, dim=1)


GENERATIONS: dict[str, Generation] = {"causal": CausalGeneration(), "rolling": RollingGeneration(),
                                      "bidirectional": BidirectionalGeneration()}

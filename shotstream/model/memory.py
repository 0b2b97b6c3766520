"""ShotStream's dual-cache memory and the dynamic sampling of its conditional frames.

One preallocated buffer per session holds, for every layer, the keys and values of
`[global context | local context | staged chunk]`, so attention always reads one contiguous
view and nothing grows by concatenation while streaming:

- `GlobalContextCache`: K/V of the conditional frames picked from earlier shots by
  `select_context_frames`, written once per shot by a single t = 0 pass.
- `LocalContextCache`: K/V of the current shot's finished chunks (written by the t = 0 pass on
  each clean chunk but the shot's last, which no later chunk reads), reset at every shot;
  optionally a rolling window with attention sink.
- The chunk being denoised is *staged* after them: it attends to itself and to everything before
  it, but is only committed (kept) by the clean t = 0 pass.
- Beside them, each layer's cross-attention keys and values of the captions being read, projected
  once a shot instead of at every pass (`KVCache.caption`).

Capacity is derived from the model config and the latent shape, never written as a literal, and
it does not depend on how many shots came before: the cost per chunk is bounded by construction.
"""

from __future__ import annotations

import numpy as np
import torch


def select_context_frames(shot_lengths: list[int], budget: int = 6) -> list[tuple[int, int]]:
    """Official dynamic sampling: which (shot, frame) pairs of earlier shots become context.

    With n earlier shots each gets `budget // n` frames and the remainder goes, one each, to the
    most recent shots; a shot's frames are evenly spaced over it with the first and last
    included (a single frame is the first). Shot 0 (no history) gets no context.
    """
    n = len(shot_lengths)
    if n == 0 or budget <= 0:
        return []
    if any(length < 1 for length in shot_lengths):
        raise ValueError(f"every earlier shot needs at least one frame, got lengths {shot_lengths}")
    counts = [budget // n] * n
    for i in range(budget % n):
        counts[n - 1 - i] += 1
    picks = []
    for shot, (count, length) in enumerate(zip(counts, shot_lengths)):
        count = min(count, length)
        frames = np.linspace(0, length - 1, count).round().astype(int) if count else []
        picks += [(shot, int(f)) for f in frames]
    return picks


class KVCache:
    """Keys and values of a token prefix for every layer, preallocated.

    Layout: k, v of shape [layers, B, heads, capacity, head_dim]. Tokens [0, length) are the
    prefix; each layer's view in `layers` stages new tokens right after it and returns the
    attention view over prefix + new; `commit` keeps the staged tokens, anything else forgets them.
    """

    def __init__(self, num_layers, batch, num_heads, head_dim, capacity, device=None, dtype=torch.float32):
        shape = (num_layers, batch, num_heads, capacity, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0
        self.staged = 0
        self.forget_captions()

    @property
    def layers(self) -> tuple[LayerKV, ...]:
        """What each block writes through. Made per call, not kept: a kept view would be a reference
        cycle, and a dropped story's cache would wait for the garbage collector to free it."""
        return tuple(LayerKV(self, i) for i in range(self.k.shape[0]))

    @property
    def capacity(self) -> int:
        return self.k.shape[3]

    @property
    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2

    def extend(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage new K/V [B, H, n, Dh] after the prefix; returns K/V of prefix + new tokens.

        Without autograd the result is a view of the buffer (no copy). With autograd on, the
        prefix is concatenated instead, so later in-place writes never touch a saved tensor.
        """
        n, end = k.shape[2], self.length + k.shape[2]
        if end > self.capacity:
            raise RuntimeError(f"KV cache overflow: {self.length} cached + {n} new > capacity {self.capacity}")
        if k.dtype != self.k.dtype or k.device != self.k.device:
            raise TypeError(f"KV cache holds {self.k.dtype} on {self.k.device}, got {k.dtype} on {k.device}")
        self.k[layer, :, :, self.length:end] = k.detach()
        self.v[layer, :, :, self.length:end] = v.detach()
        self.staged = n
        if torch.is_grad_enabled() and (k.requires_grad or v.requires_grad):
            return (torch.cat([self.k[layer, :, :, : self.length], k], dim=2),
                    torch.cat([self.v[layer, :, :, : self.length], v], dim=2))
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def caption(self, layer: int, text: torch.Tensor, slots: torch.Tensor, project):
        """Cross-attention's keys and values of caption slots `slots` [S'] of `text` [B, S, L, D],
        `project(text[:, slots])`. A streamed chunk reads one caption at every step and cache write
        of its shot, so one slot's are kept while the same `text` comes back (Self Forcing's
        cross-attention cache); a read of several (the global context's single pass) is not.
        Projected every call with autograd on (training's gradients reach the projections) and for
        inference tensors (no version counter to tell an edit). What is kept assumes unchanged
        weights: `DualCache.clear`, at every shot, forgets it."""
        if len(slots) != 1 or torch.is_grad_enabled() or text.is_inference():
            return project(text[:, slots])
        read = (text._version, int(slots[0]))
        if self._caption_of is None or self._caption_of[0] is not text or self._caption_of[1:] != read:
            self.forget_captions()  # another caption (a new shot's), or this one edited in place
            self._caption_of = (text, *read)
        if self._caption_kv[layer] is None:
            self._caption_kv[layer] = project(text[:, slots])
        return self._caption_kv[layer]

    def forget_captions(self) -> None:
        self._caption_of: tuple | None = None
        self._caption_kv: list[tuple | None] = [None] * self.k.shape[0]

    def commit(self) -> None:
        """Keep the tokens staged by the last forward as part of the prefix."""
        self.length += self.staged
        self.staged = 0

    def truncate(self, length: int) -> None:
        """Forget everything after the first `length` tokens."""
        self.length, self.staged = min(self.length, length), 0

    def drop(self, start: int, count: int) -> None:
        """Remove tokens [start, start+count) by shifting the tail left (rolling windows)."""
        tail = slice(start + count, self.length)
        n = self.length - start - count
        self.k[:, :, :, start:start + n] = self.k[:, :, :, tail].clone()
        self.v[:, :, :, start:start + n] = self.v[:, :, :, tail].clone()
        self.length -= count
        self.staged = 0


class LayerKV:
    """One layer's view of a KVCache: its self-attention stages keys and values through `extend`,
    its cross-attention reads the caption's through `caption`."""

    def __init__(self, cache: KVCache, layer: int):
        self.cache, self.layer = cache, layer

    def extend(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cache.extend(self.layer, k, v)

    def caption(self, text: torch.Tensor, slots: torch.Tensor, project):
        return self.cache.caption(self.layer, text, slots, project)


class GlobalContextCache:
    """The global segment [0, tokens) of the memory: conditional frames from earlier shots."""

    def __init__(self, kv: KVCache):
        self.kv = kv
        self.tokens = 0

    def begin(self) -> None:
        """Start rebuilding for a new shot: clears global and local context alike."""
        self.kv.truncate(0)
        self.tokens = 0

    def seal(self) -> None:
        """Mark everything written so far as global context."""
        self.tokens = self.kv.length


class LocalContextCache:
    """The local segment: the current shot's finished chunks, after the global segment.

    `window` (latent frames, 0 = unbounded) bounds it for long shots by dropping the oldest
    frames, keeping the first `sink` frames of the shot as an attention sink.
    """

    def __init__(self, kv: KVCache, global_cache: GlobalContextCache, tokens_per_frame: int, window: int = 0, sink: int = 0):
        self.kv, self.global_cache = kv, global_cache
        self.tokens_per_frame, self.window, self.sink = tokens_per_frame, window, sink

    @property
    def frames(self) -> int:
        return (self.kv.length - self.global_cache.tokens) // self.tokens_per_frame

    def reset(self) -> None:
        self.kv.truncate(self.global_cache.tokens)

    def make_room(self, incoming_frames: int) -> None:
        """Before a chunk is staged: drop the oldest non-sink frames if the window would overflow."""
        if not self.window:
            return
        excess = self.frames + incoming_frames - self.window
        if excess > 0:
            if self.frames - self.sink < excess:
                raise ValueError(f"local window {self.window} too small for sink {self.sink} + chunk {incoming_frames}")
            start = self.global_cache.tokens + self.sink * self.tokens_per_frame
            self.kv.drop(start, excess * self.tokens_per_frame)


class DualCache:
    """The session-owned memory: one KVCache split into global and local context segments.

    Its lifecycle, shot by shot (rollout.py runs it):
        clear() -> a t = 0 pass over the conditional frames through `kv` -> seal_global();
        start_shot(); then per chunk: stage(frames) -> passes through `kv` -> commit(), but
        the shot's last chunk, whose staged K/V the next clear() or start_shot() forgets.
    `rolling` (the rolling-window ablation) has no global segment: its local window runs on
    across shots, and so do the positions of its frames (`next_position`).
    """

    def __init__(self, model_cfg, grid: tuple[int, int], frames_per_shot: int, batch: int = 1,
                 device=None, dtype=torch.float32, rolling: bool = False):
        tokens_per_frame = grid[0] * grid[1]
        window = model_cfg.local_window or frames_per_shot
        if rolling and not model_cfg.local_window:
            raise ValueError("a rolling cache across shots needs model.local_window > 0")
        global_frames = 0 if rolling else model_cfg.context_frames
        # [global | local window | one staged chunk]
        capacity = (global_frames + window + model_cfg.chunk_frames) * tokens_per_frame
        self.kv = KVCache(model_cfg.num_layers, batch, model_cfg.num_heads, model_cfg.head_dim, capacity, device, dtype)
        self.global_context = GlobalContextCache(self.kv)
        self.local_context = LocalContextCache(self.kv, self.global_context, tokens_per_frame,
                                               model_cfg.local_window, model_cfg.sink_frames)
        self.tokens_per_frame, self.rolling = tokens_per_frame, rolling
        self.frames_written = 0  # frames committed since `clear` (dropped ones included)

    @property
    def nbytes(self) -> int:
        return self.kv.nbytes

    @property
    def carries_over(self) -> bool:
        """Whether a shot's chunks are read after the shot (a rolling window), so its last is written too."""
        return self.rolling

    @property
    def next_position(self) -> int | None:
        """Rolling: the position of the next frame; otherwise None (a shot's frames follow its context)."""
        return self.frames_written if self.rolling else None

    def clear(self) -> None:
        """Forget everything: a new story, or a shot whose global context is about to be rebuilt."""
        self.global_context.begin()
        self.kv.forget_captions()
        self.frames_written = 0

    def seal_global(self) -> None:
        """Keep the conditional frames the last pass staged (if any) as the global context."""
        self.kv.commit()
        self.global_context.seal()

    def start_shot(self) -> None:
        """Before a shot's first chunk: an empty local context (a rolling window keeps its frames)."""
        if not self.rolling:
            self.local_context.reset()

    def stage(self, frames: int) -> KVCache:
        """Room for a chunk of `frames` latent frames; the cache its passes attend and stage through."""
        self.local_context.make_room(frames)
        return self.kv

    def commit(self) -> None:
        """Keep the chunk staged by the last pass (its clean t = 0 pass) as local context."""
        self.frames_written += self.kv.staged // self.tokens_per_frame
        self.kv.commit()

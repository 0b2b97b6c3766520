"""The streaming API that the demo and the benchmark use.

    pipe = ShotStreamPipeline.from_pretrained("checkpoints/tiny/student")
    session = pipe.session(seed=0)
    session.submit("a red striped star walks to the left in a snowy field, wide shot")
    for chunk in session.stream():          # decoded RGB frames, as soon as each chunk is ready
        show(chunk.frames)
    session.submit("close-up of the same character spinning")   # any time, even mid-stream
    ...

A session owns its dual-cache memory and the history of generated shots (the source of the
next shot's conditional frames). A teacher / bidirectional checkpoint runs behind the same
interface: its chunks arrive together once the whole shot is denoised.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import queue
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.profiler import record_function

from shotstream.conditioning import NextShotConditioning
from shotstream.config import ShotStreamConfig
from shotstream.model.dit import WanDiT
from shotstream.model.memory import DualCache, select_context_frames
from shotstream.rollout import GENERATIONS, write_global_context
from shotstream.text_encoder import check_caption
from shotstream.video import to_model_video, to_uint8

MAX_PROMPT_CHARS = 2000  # default cut of clean_prompt; a session cuts at its config's prompt.max_chars
MAX_SHOTS = 100  # per session; memory is bounded, this only bounds the stored history


def clean_prompt(prompt, max_chars: int = MAX_PROMPT_CHARS) -> str:
    """Validate a user prompt (text_encoder.check_caption: str or UTF-8 bytes, valid Unicode, not
    empty) and normalise its whitespace; over-long prompts are truncated with a warning."""
    prompt = " ".join(check_caption(prompt, "prompt").split())
    if len(prompt) > max_chars:
        warnings.warn(f"prompt of {len(prompt)} characters truncated to {max_chars}", stacklevel=2)
        prompt = prompt[:max_chars]
    return prompt


def check_seed(seed) -> int:
    """A session seed: a whole number in [0, 2**32) (noise seeds are derived from it per shot)."""
    if isinstance(seed, float) and seed.is_integer():
        seed = int(seed)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be a whole number from 0 to {2**32 - 1}, got {seed!r}")
    return seed


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


def run_ahead(make_items: Callable[[], Iterator], depth: int = 1) -> Iterator:
    """Iterate `make_items()` in a worker thread, at most `depth` items ahead of the consumer.

    The streaming session runs the denoiser there, so chunk j is decoded (and shown) while chunk
    j+1 is denoised. The worker runs under no_grad (grad mode is per thread); its exception is
    raised here. When the consumer stops early (cancel, or the generator is closed), the worker
    finishes its current item and is joined: nothing touches the session's memory afterwards.
    """
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop, done = threading.Event(), object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.05)
                return True
            except queue.Full:
                pass
        return False

    def work():
        try:
            with torch.no_grad():
                for item in make_items():
                    if not put(item):
                        return
        except BaseException as e:  # noqa: BLE001 -- handed to the consumer, which raises it
            put(_Failure(e))
        else:
            put(done)

    worker = threading.Thread(target=work, name="shotstream-run-ahead", daemon=True)
    worker.start()
    try:
        while (item := items.get()) is not done:
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        worker.join()


@dataclass
class StreamChunk:
    """One decoded chunk of a shot, with the times (time.perf_counter seconds) it was made at."""

    shot: int
    chunk: int
    frames: np.ndarray  # uint8 [n, H, W, 3]
    caption: str
    t_submit: float  # when the shot's prompt was submitted
    t_start: float  # when generation of the shot began
    t_ready: float  # when this chunk was decoded
    last: bool  # last chunk of its shot


@dataclass
class Shot:
    caption: str
    frames: np.ndarray  # uint8 [F, H, W, 3]
    t_submit: float
    t_first: float
    t_done: float
    # The codec's latent [C, h, w] of each frame (by index) a later shot took as context: most
    # picks recur from shot to shot (every earlier shot's first frame), so each is encoded once.
    context_latents: dict[int, torch.Tensor] = dataclasses.field(default_factory=dict, repr=False, compare=False)


@dataclass
class _Request:
    caption: str
    t_submit: float


class ShotStreamPipeline:
    """Model + autoencoder + text encoder on one device and dtype; sessions are made from it."""

    def __init__(self, model: WanDiT, config: ShotStreamConfig, autoencoder, text_encoder, kind: str = "causal"):
        if kind not in GENERATIONS:
            raise ValueError(f"unknown model kind {kind!r}")
        self.model, self.config, self.autoencoder, self.text_encoder, self.kind = model, config, autoencoder, text_encoder, kind
        self.generation = GENERATIONS[kind]
        self._text_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def from_pretrained(cls, path: str | Path, autoencoder: str | Path | None = None, device="cpu",
                        dtype: torch.dtype = torch.float32, text_encoder=None,
                        text_device=None) -> "ShotStreamPipeline":
        """Load a model folder; the autoencoder defaults to the one it was trained with
        (loading.model_autoencoder: its index's entry, or the `autoencoder` folder beside it).

        A folder written by `shotstream import` names its own VAE, text encoder and tokenizer
        (components.json): they load in `dtype`, the text encoder on `text_device` (default:
        `device`; the CPU keeps umT5-XXL's 11 GB off a small GPU)."""
        from shotstream.autoencoder import TinyVideoAutoencoder
        from shotstream.checkpoint import CheckpointError
        from shotstream.importer import COMPONENTS, load_components
        from shotstream.model.loading import from_pretrained, model_autoencoder
        from shotstream.text_encoder import TextEncoder

        model, config, kind = from_pretrained(path, device=device, dtype=dtype)
        if (Path(path) / COMPONENTS).is_file():
            if autoencoder:
                raise ValueError(f"{path} is an imported release: it names its own VAE ({COMPONENTS}); drop --autoencoder")
            ae, te = load_components(path, config, device, dtype, text_device, text_encoder)
            ae_path = Path(path) / COMPONENTS
        else:
            ae_path = Path(autoencoder) if autoencoder else model_autoencoder(path)
            if not autoencoder and not ae_path.is_dir():  # e.g. a training run's final/ folder
                raise FileNotFoundError(f"{path}: no autoencoder folder beside it ({ae_path}); "
                                        "pass the codec it was trained with (--autoencoder)")
            # Channels-last: oneDNN's convolutions then skip a layout reorder at every call (a
            # chunk's decode ~20% faster on the CPU, docs/experiments.md "bf16 inference").
            ae = TinyVideoAutoencoder.from_pretrained(ae_path)
            ae = ae.to(device=device, dtype=dtype, memory_format=torch.channels_last).eval()
            te = text_encoder or TextEncoder(max_len=config.model.text_len, device=text_device or device)
        # A model is tied to the codec whose latents it was trained on (shot length, fps, frame
        # size may differ: the codec is convolutional and frame-group-wise).
        codec = ("latent_channels", "temporal_stride", "spatial_stride")
        theirs, ours = ({k: getattr(v, k) for k in codec} for v in (ae.cfg, config.video))
        if theirs != ours:
            raise CheckpointError(f"{ae_path} does not match {path}: the codec has {theirs}, the model expects {ours}")
        return cls(model, config, ae, te, kind)

    @property
    def device(self):
        return self.model.device

    def session(self, seed: int = 0, global_caption: str | None = None, **kw) -> "ShotStreamSession":
        return ShotStreamSession(self, seed=seed, global_caption=global_caption, **kw)

    def embed_captions(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions -> embedded slots [1, S, L, D] and mask [1, S, L], cached per caption."""
        missing = [c for c in dict.fromkeys(captions) if c not in self._text_cache]
        if missing:
            states, mask = self.text_encoder.encode(missing)
            with torch.no_grad():
                emb = self.model.embed_text(states.to(self.device)[:, None])[:, 0]
            for c, e, m in zip(missing, emb, mask.to(self.device)):
                self._text_cache[c] = (e, m)
        text = torch.stack([self._text_cache[c][0] for c in captions])[None]
        mask = torch.stack([self._text_cache[c][1] for c in captions])[None]
        return text, mask

    def null_caption(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The unconditional branch's caption slot, embedded [1, L, D] + mask [1, L]: the sampler's
        negative prompt, or the text encoder's null caption when it is empty."""
        if self.config.sampler.negative_prompt:
            text, mask = self.embed_captions([self.config.sampler.negative_prompt])
            return text[:, 0], mask[:, 0]
        states, mask = self.text_encoder.null_caption()
        with torch.no_grad():
            return self.model.embed_text(states.to(self.device)[:, None])[:, 0], mask.to(self.device)


class ShotStreamSession:
    """One story being generated: a queue of prompts, the history of shots, and the memory.

    `submit` may be called from any thread at any time; `stream` generates queued shots in
    order and yields `StreamChunk`s until the queue is empty (call it again after new submits,
    or pass `wait=True` to block for more until `close()`).
    """

    def __init__(self, pipe: ShotStreamPipeline, seed: int = 0, global_caption: str | None = None,
                 max_shots: int = MAX_SHOTS, max_queue: int = 8, overlap_decode: bool = False):
        self.pipe, self.seed, self.max_shots, self.max_queue = pipe, check_seed(seed), max_shots, max_queue
        # Denoise chunk j+1 (and write chunk j's K/V) in a worker thread while chunk j is decoded
        # (`run_ahead`). Off by default: on a 2-core CPU the two threads fight for the same cores
        # and streaming gets slower (`python -m benchmark.stream_speed --overlap-decode`).
        self.overlap_decode = overlap_decode
        cfg = pipe.config
        self.global_caption = clean_prompt(global_caption, cfg.prompt.max_chars) if global_caption else None
        self.grid = pipe.model.grid(*cfg.video.latent_size)
        self.memory = DualCache(cfg.model, self.grid, cfg.video.latent_frames_per_shot, batch=1,
                                device=pipe.device, dtype=pipe.model.dtype, rolling=pipe.generation.rolling)
        self.shots: list[Shot] = []
        self._queue: collections.deque[_Request] = collections.deque()
        self._cond = threading.Condition()
        self._cancel = threading.Event()
        self._closed = False
        self.in_progress: str | None = None  # caption of the shot being generated
        self._prepared: NextShotConditioning | None = None  # the next shot's history (prepare_context)

    # -- control, callable from any thread ---------------------------------------------------
    def submit(self, prompt) -> int:
        """Queue the next shot's prompt; returns its shot index. Raises ValueError on bad input."""
        caption = clean_prompt(prompt, self.pipe.config.prompt.max_chars)
        with self._cond:
            if len(self.shots) + (self.in_progress is not None) + len(self._queue) >= self.max_shots:
                raise ValueError(f"a story has at most {self.max_shots} shots")
            if len(self._queue) >= self.max_queue:
                raise ValueError(f"{len(self._queue)} shots are already waiting; wait for one to start")
            self._queue.append(_Request(caption, time.perf_counter()))
            self._cond.notify_all()
            return len(self.shots) + (self.in_progress is not None) + len(self._queue) - 1

    def cancel(self) -> None:
        """Stop the shot being generated (dropped, finished shots kept) and clear the queue."""
        with self._cond:
            self._queue.clear()
            self._cancel.set()
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def reset(self) -> None:
        """Start a new story (same seed): history, queue and memory cleared. Unlike `submit` and
        `cancel`, call it only while no `stream()` is running (the demo makes a new session)."""
        self.cancel()
        self.shots.clear()
        self._prepared = None
        self.memory.clear()

    @property
    def pending(self) -> int:
        return len(self._queue)

    @property
    def queued(self) -> list[str]:
        """Captions waiting to be generated, in order."""
        with self._cond:
            return [r.caption for r in self._queue]

    # -- generation ---------------------------------------------------------------------------
    def stream(self, wait: bool = False) -> Iterator[StreamChunk]:
        """Generate queued shots in order, yielding decoded chunks as soon as each is ready."""
        while True:
            with self._cond:
                while not self._queue and wait and not self._closed:
                    self._cond.wait(timeout=0.1)
                if not self._queue:
                    return
                request = self._queue.popleft()
                self._cancel.clear()
                self.in_progress = request.caption
            try:
                yield from self._generate(request)
            finally:
                self.in_progress = None

    def story_frames(self) -> np.ndarray:
        """All finished shots, concatenated: uint8 [sum F, H, W, 3]."""
        if not self.shots:
            h, w = self.pipe.config.video.height, self.pipe.config.video.width
            return np.zeros((0, h, w, 3), np.uint8)
        return np.concatenate([s.frames for s in self.shots])

    def prompt(self, caption: str, shot: int) -> str:
        """What the text encoder reads for shot `shot` (the config's prompt.template)."""
        return self.pipe.config.prompt.render(caption, shot, self.global_caption)

    def conditioning(self, caption: str) -> NextShotConditioning:
        """Shot k's conditioning: the prepared history (`prepare_context`) plus the caption's slot."""
        ctx = self.prepare_context()
        with record_function("text_encoding"):
            text, mask = self.pipe.embed_captions([self.prompt(caption, len(self.shots))])
        if ctx.text.shape[1]:  # (the first shot has no history slots)
            text, mask = torch.cat([ctx.text, text], 1), torch.cat([ctx.text_mask, mask], 1)
        cond = dataclasses.replace(ctx, text=text, text_mask=mask)
        if self._zero_first_context() and self.pipe.generation.caches_context:
            write_global_context(self.pipe.model, self.memory, cond)  # its frames read this caption
        return cond

    def _zero_first_context(self) -> bool:
        """Whether shot k = len(shots) is a first shot conditioned on zero latents (the released
        model's, ModelConfig.first_shot_zero_context). Their K/V depend on the shot's own caption,
        so their cache is written once the prompt is known (`conditioning`), not ahead."""
        cfg = self.pipe.config.model
        return not self.shots and self.pipe.generation.reads_context and cfg.first_shot_zero_context and cfg.context_frames > 0

    def prepare_context(self) -> NextShotConditioning:
        """Everything shot k = len(shots) needs from the history, done once per shot: the
        conditional frames selected and encoded, their captions embedded, and (causal) the global
        context cache written. `_generate` calls it as soon as a shot ends, so a prompt typed
        afterwards pays only for its own caption and chunks. Its text holds the history's caption
        slots only; `conditioning` appends the new shot's."""
        pipe, device, k = self.pipe, self.pipe.device, len(self.shots)
        if self._prepared is not None and self._prepared.shot == k:
            return self._prepared
        picks = select_context_frames([len(s.frames) for s in self.shots], pipe.config.model.context_frames) \
            if pipe.generation.reads_context else []
        sources = list(dict.fromkeys(s for s, _ in picks))  # earlier shots that give frames, in order
        h, w = pipe.config.video.latent_size
        context = torch.zeros(1, 0, pipe.config.video.latent_channels, h, w, device=device, dtype=pipe.model.dtype)
        text = torch.zeros(1, 0, 0, pipe.model.cfg.dim, device=device, dtype=pipe.model.dtype)  # no slots yet
        mask = torch.zeros(1, 0, 0, device=device, dtype=torch.bool)
        with torch.no_grad():
            if picks:
                with record_function("context_encoding"):
                    context = self._context_latents(picks)  # [1, Cf, C, h, w]
                text, mask = pipe.embed_captions([self.prompt(self.shots[s].caption, s) for s in sources])
            shots = torch.tensor([[s for s, _ in picks]], device=device, dtype=torch.long).reshape(1, -1)
            slots = torch.tensor([[sources.index(s) for s, _ in picks]], device=device, dtype=torch.long).reshape(1, -1)
            target_flag = None
            if self._zero_first_context():
                # The released model's first shot, as it was trained: zero latents at positions
                # 0..C-1, flag 0, reading the shot's own caption (slot 0, the target's), then the
                # shot's frames with flag 1.
                n = pipe.config.model.context_frames
                context = context.new_zeros(1, n, *context.shape[2:])
                shots = slots = torch.zeros(1, n, device=device, dtype=torch.long)
                target_flag = 1
            ctx = NextShotConditioning(context, shots, slots, text, mask, target_slot=len(sources), shot=k,
                                   chunk_frames=pipe.config.model.chunk_frames, target_flag=target_flag)
            if pipe.generation.caches_context and not self._zero_first_context():
                write_global_context(pipe.model, self.memory, ctx)
        self._prepared = ctx
        return ctx

    def _context_latents(self, picks: list[tuple[int, int]]) -> torch.Tensor:
        """Latents [1, len(picks), C, h, w] of the picked (shot, frame)s; frames not yet encoded
        are encoded in one batch and kept on their Shot."""
        pipe = self.pipe
        new = [(s, f) for s, f in picks if f not in self.shots[s].context_latents]
        if new:
            images = torch.stack([to_model_video(self.shots[s].frames[f:f + 1], pipe.device)[0] for s, f in new])
            latents = pipe.autoencoder.encode_image(images.to(pipe.autoencoder.dtype))[:, 0]
            for (s, f), z in zip(new, latents, strict=True):
                self.shots[s].context_latents[f] = z
        return torch.stack([self.shots[s].context_latents[f] for s, f in picks])[None].to(pipe.model.dtype)

    def _noise(self, shot: int) -> torch.Tensor:
        """Deterministic per (seed, shot), drawn on CPU so every device sees the same noise."""
        v = self.pipe.config.video
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + shot)
        return torch.randn(1, v.latent_frames_per_shot, v.latent_channels, *v.latent_size, generator=g).to(self.pipe.device)

    def _generate(self, request: _Request) -> Iterator[StreamChunk]:
        # Grad / inference mode is per thread, and a consumer (the Gradio app) may resume this
        # generator from a different thread at every chunk: no such context may span a yield.
        pipe, k = self.pipe, len(self.shots)
        chunks, t_start, t_first = [], time.perf_counter(), None
        with torch.no_grad():
            cond = self.conditioning(request.caption)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + k + 1)  # CPU: the same story on every device
        make = lambda: pipe.generation.latent_chunks(pipe, self.memory, cond, self._noise(k), g)  # noqa: E731
        decoding = pipe.autoencoder.decode_state()  # the codec's causal cache across this shot's chunks (Wan VAE)
        with contextlib.closing(run_ahead(make) if self.overlap_decode and pipe.generation.streams else make()) as latents:
            for j, x0 in enumerate(latents):
                with torch.no_grad(), record_function("decode"):
                    frames = to_uint8(pipe.autoencoder.decode_chunk(x0.to(pipe.autoencoder.dtype), first_chunk=j == 0,
                                                                    state=decoding))
                t_ready = time.perf_counter()
                t_first = t_first or t_ready
                chunks.append(frames)
                last = sum(len(c) for c in chunks) >= pipe.config.video.frames_per_shot
                yield StreamChunk(k, j, frames, request.caption, request.t_submit, t_start, t_ready, last)
                if self._cancel.is_set():
                    # The unfinished shot is dropped; finished shots stay. (The rolling ablation's
                    # window keeps the dropped shot's chunks: the benchmark never cancels.)
                    return
        with self._cond:  # one step for `submit`'s shot count: finished, not in progress
            self.shots.append(Shot(request.caption, np.concatenate(chunks), request.t_submit, t_first, time.perf_counter()))
            self.in_progress = None
        if len(self.shots) < self.max_shots:
            self.prepare_context()  # for the next shot, while the user watches this one and types

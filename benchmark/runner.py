"""The benchmark loop: generate (or read) each story, score it, append its rows; resumable.

`run_benchmark` walks (method, story) pairs with a progress bar, skips pairs whose rows are
already stored (so re-running the same command resumes), calls `generate(method, story, ...)`
for the rest, scores the result and writes the story's rows atomically. `score_manifest` does
the same for videos made by any other system. Generation itself (`generate_story`) is wired to
the streaming session by the lead; tests pass a fake generator.

Stories are duck-typed: anything with `global_caption` and `shots` (each with `caption`,
optional `labels` dict, optional `frames`), as attributes or dict keys, plus an id (`id`,
`story_id` or `name`; else its position in the suite).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from tqdm import tqdm

from benchmark.manifest import Manifest
from benchmark.metrics import LabelProbe, Metric, StoryOutput, get_metrics, score_story
from benchmark.rows import PROTOCOL_COLUMNS, RowStore, RunMeta
from benchmark.timing import ChunkRecord, measure_peak_memory


@dataclass
class Generation:
    """What a method returns for one story."""

    frames: list[np.ndarray]  # per shot, uint8 [F, H, W, 3]
    records: list[ChunkRecord] | None  # streamed-chunk timing (benchmark.timing.StreamRecorder)
    peak_mem_mb: float | None = None  # None: the runner measures around the call


class GenerationNotWired(RuntimeError):
    """`generate_story` has no implementation for this method yet."""


def generate_story(method: str, story: "StoryView", *, seed: int, device: str, dtype: str, steps: str,
                   preset: str) -> Generation:
    """Generate every shot of `story` with `method`, streaming, and record chunk timings.

    TO BE WIRED (lead): open a ShotStreamSession for `method` (preset, device, dtype, steps),
    `recorder = StreamRecorder()`, then for each shot: recorder.submit(k); session.submit(caption);
    for each decoded chunk: recorder.chunk_ready(k, len(chunk)); collect frames. Return
    Generation(frames, recorder.records).
    """
    raise GenerationNotWired(
        f"method {method!r}: generation is not wired to the streaming session yet; "
        "score existing videos with `shotstream-bench score --manifest ...`")


GenerateFn = Callable[..., Generation]


@dataclass
class StoryView:
    """A story normalised from whatever object the suite yields."""

    id: str
    global_caption: str
    captions: list[str]
    labels: list[dict | None]
    frames: list[np.ndarray] | None  # ground-truth frames when the suite has them
    source: Any = None  # the original object, for generators that need more


def story_view(obj: Any, index: int) -> StoryView:
    get = (lambda o, k, d=None: o.get(k, d)) if isinstance(obj, dict) else (lambda o, k, d=None: getattr(o, k, d))
    shots = get(obj, "shots")
    if not shots:
        raise ValueError(f"story #{index}: no shots")
    sget = [(lambda s, k, d=None: s.get(k, d)) if isinstance(s, dict) else (lambda s, k, d=None: getattr(s, k, d))
            for s in shots]
    captions = [g(s, "caption") for g, s in zip(sget, shots)]
    if not all(isinstance(c, str) for c in captions):
        raise ValueError(f"story #{index}: every shot needs a string caption")
    sid = next((str(v) for k in ("id", "story_id", "name") if (v := get(obj, k)) not in (None, "")), f"{index:04d}")
    frames = [g(s, "frames") for g, s in zip(sget, shots)]
    return StoryView(
        id=sid,
        global_caption=get(obj, "global_caption", "") or "",
        captions=captions,
        labels=[g(s, "labels") for g, s in zip(sget, shots)],
        frames=[np.asarray(f) for f in frames] if all(f is not None for f in frames) else None,
        source=obj,
    )


def story_seed(seed: int, story_id: str) -> int:
    """Per-story seed that does not depend on the story's position (resume-safe)."""
    return (seed * 1_000_003 + zlib.crc32(story_id.encode("utf-8"))) % 2**31


@dataclass
class Scoring:
    """What scoring needs besides the story: metrics, encoders, probe."""

    metrics: Sequence[Metric] | None = None
    clip: Any = None
    embed: Callable | None = None
    probe: LabelProbe | None = None


def check_protocol(store: RowStore, method: str, meta: RunMeta) -> None:
    """Refuse to add rows to a method whose stored rows used another protocol (no silent mixing)."""
    stored = store.protocol_of(method)
    mine = meta.protocol()
    clashes = [f"{k}: stored {sorted(stored[k])} vs now {mine[k]!r}" for k in PROTOCOL_COLUMNS
               if stored[k] and stored[k] != {mine[k]}]
    if clashes:
        raise ValueError(f"results for method {method!r} in {store.results_dir} used another protocol ("
                         + "; ".join(clashes) + "); use another --method name or --results folder")


def run_benchmark(methods: Sequence[str], stories: Iterable[Any], store: RowStore, meta: RunMeta,
                  scoring: Scoring | None = None, *, generate: GenerateFn = generate_story,
                  progress: bool = True) -> dict[str, int]:
    """Generate + score every (method, story) pair not already stored. Returns counts."""
    scoring = scoring or Scoring()
    views = [story_view(s, i) for i, s in enumerate(stories)]
    ids = [v.id for v in views]
    if len(set(ids)) != len(ids):
        raise ValueError("story ids must be unique within a suite")
    for method in methods:
        check_protocol(store, method, meta)
    counts = {"done": 0, "skipped": 0}
    pairs = [(m, v) for m in methods for v in views]
    bar = tqdm(pairs, desc="benchmark", unit="story", disable=not progress)
    for method, view in bar:
        bar.set_postfix_str(f"{method} {view.id}")
        if store.done(method, view.id):
            counts["skipped"] += 1
            continue
        call = lambda: generate(method, view, seed=story_seed(meta.seed, view.id), device=meta.device,  # noqa: E731
                                dtype=meta.dtype, steps=meta.steps, preset=meta.preset)
        gen, measured = measure_peak_memory(call, device=meta.device)
        output = StoryOutput(view.id, view.captions, list(gen.frames), view.labels, view.global_caption,
                             records=gen.records,
                             peak_mem_mb=gen.peak_mem_mb if gen.peak_mem_mb is not None else measured)
        rows = score_story(output, scoring.metrics, clip=scoring.clip, embed=scoring.embed, probe=scoring.probe)
        store.write_story(method, view.id, rows, meta)
        counts["done"] += 1
    return counts


def score_manifest(manifest: Manifest, method: str, store: RowStore, meta: RunMeta,
                   scoring: Scoring | None = None, *, progress: bool = True) -> dict[str, int]:
    """Score the videos of a manifest as `method`; every entry is checked before any row is written."""
    scoring = scoring or Scoring()
    check_protocol(store, method, meta)
    manifest.check_videos()
    counts = {"done": 0, "skipped": 0}
    for story in tqdm(manifest.stories, desc="score", unit="story", disable=not progress):
        if store.done(method, story.id):
            counts["skipped"] += 1
            continue
        output = StoryOutput(story.id, story.captions, story.load_frames(), story.labels, story.global_caption)
        rows = score_story(output, scoring.metrics, clip=scoring.clip, embed=scoring.embed, probe=scoring.probe)
        store.write_story(method, story.id, rows, meta)
        counts["done"] += 1
    return counts


def default_metrics_for_scoring() -> list[Metric]:
    """Videos from other systems carry no chunk timings: score everything but the timing metrics."""
    from benchmark.metrics import TIMING_METRICS

    return [m for m in get_metrics() if m.name not in TIMING_METRICS]

"""The benchmark loop: generate (or read) each story, score it, append its rows; resumable.

`run_benchmark` walks (method, story) pairs with a progress bar, skips pairs whose rows are
already stored (so re-running the same command resumes), calls `generate(method, story, ...)`
for the rest, scores the result and writes the story's rows atomically. `score_manifest` does
the same for videos made by any other system. Generation (`StreamingGenerator`, `generate_story`)
runs the real streaming session (`shotstream.session`); tests may pass a fake generator.

Stories are duck-typed: anything with `global_caption` and `shots` (each with `caption`,
optional `labels` dict, optional `frames`), as attributes or dict keys, plus an id (`id`,
`story_id` or `name`; else its position in the suite).
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from benchmark.manifest import Manifest
from benchmark.metrics import TIMING_METRICS, CharacterLocator, LabelProbe, Metric, StoryOutput, get_metrics, score_story
from benchmark.rows import MEMORY_ONLY, PROTOCOL_COLUMNS, RowStore, RunMeta, digest, file_digest
from benchmark.timing import ChunkRecord, MachineLoad, cpu_cores, load_average, measure_peak_memory
from shotstream.importer import COMPONENTS
from shotstream.runtime import dtype_name, torch_dtype


@dataclass
class Generation:
    """What a method returns for one story."""

    frames: list[np.ndarray]  # per shot, uint8 [F, H, W, 3]
    records: list[ChunkRecord] | None  # streamed-chunk timing (benchmark.timing.StreamRecorder)
    peak_mem_mb: float | None = None  # None: the runner measures around the call
    timed: bool = True  # False: a reference with no generation (ground truth): timing metrics are absent


class GenerationNotWired(RuntimeError):
    """A method cannot generate this story (e.g. `ground_truth` of a story without labels)."""


GROUND_TRUTH = "ground_truth"  # the StoryWorld renders themselves: the upper bound of every quality metric
# An autoencoder folder as a method (`autoencoder` = the shipped codec): the ground truth encoded and
# decoded, the ceiling of every generated method, since they all decode through that codec.
def parse_method(spec: str) -> tuple[str, Path | None]:
    """`name` (shipped model, `autoencoder`, `ground_truth`, or a folder) or `name=folder` ->
    (row name, model folder).

    The folder is None for `ground_truth`; an unknown name is a FileNotFoundError listing the
    shipped models."""
    from shotstream.model.loading import resolve_model

    name, sep, path = spec.partition("=")
    if sep and not (name and path):
        raise ValueError(f"--method {spec!r}: expected name=folder")
    if not sep and name == GROUND_TRUTH:
        return name, None
    folder = resolve_model(path if sep else name)
    return (name if sep else name.rstrip("/")), folder


def method_protocol(folder: Path | None, teacher_steps: int | None = None) -> dict[str, str]:
    """The protocol fields a model folder fixes: sampler steps and preset, from its config.json.

    Student (causal / rolling): the number of distilled timesteps ("4"); teacher
    (bidirectional): "<steps>+cfg<scale>" ("50+cfg3"); ground truth: "" (nothing is sampled)."""
    if folder is None or is_autoencoder(folder):
        return {"steps": "", "preset": ""}
    from shotstream.model.loading import read_config

    cfg, kind = read_config(folder)
    s = cfg.sampler
    if kind == "bidirectional":
        steps = f"{teacher_steps or s.teacher_steps}+cfg{s.guidance_scale:g}"
        steps += f"+context{s.context_scale:g}" if s.context_scale != 1 else ""
    else:
        steps = str(len(s.student_timesteps))
    return {"steps": steps, "preset": cfg.preset}


def is_autoencoder(folder: Path) -> bool:
    from shotstream.checkpoint import read_json

    config = Path(folder) / "config.json"
    return config.is_file() and read_json(config).get("class") == "TinyVideoAutoencoder"


def chunk_record(chunk) -> ChunkRecord:
    """A session's StreamChunk (its own perf_counter stamps) as the harness's ChunkRecord."""
    return ChunkRecord(shot=chunk.shot, chunk=chunk.chunk, t_submit=chunk.t_submit, t_chunk_ready=chunk.t_ready,
                       frames=len(chunk.frames))


class StreamingGenerator:
    """`generate(method, story, ...)` through the real streaming session, one pipeline per method.

    Each method's pipeline is loaded once (and warmed up with one throw-away shot, so the first
    story's latency does not include one-time costs), then every story is a fresh session:
    for each shot, its prompt is submitted once the previous shot has streamed, so latency is
    prompt -> first decoded frames: the caption's encoding and the first chunk's denoising and
    decoding (the session prepares a shot's history, context encoding and global cache, as soon
    as the previous shot ends, as in the app where the user types meanwhile). The teacher runs behind the same interface; its chunks arrive when the shot is done.
    Peak memory is measured around the story's streaming only (not the pipeline load).
    """

    def __init__(self, folders: dict[str, Path | None] | None = None, *, teacher_steps: int | None = None,
                 warmup: bool = True, autoencoder: Path | None = None, text_device: str | None = None):
        self.folders = dict(folders or {})
        # one codec for every tiny model, else each model's own (the `autoencoder` folder beside
        # it); a folder from `shotstream import` always decodes with the VAE it names
        self.teacher_steps, self.warmup, self.autoencoder = teacher_steps, warmup, autoencoder
        self.text_device = text_device  # (default: the model's device; "cpu" keeps umT5-XXL off a small GPU)
        self._pipes: dict[tuple, object] = {}

    def folder(self, method: str) -> Path | None:
        if method not in self.folders:
            self.folders[method] = parse_method(method)[1]
        return self.folders[method]

    def codec(self, folder: Path, device: str):
        from shotstream.autoencoder import TinyVideoAutoencoder

        key = (str(folder), device, "codec")
        if key not in self._pipes:
            self._pipes[key] = TinyVideoAutoencoder.from_pretrained(folder, device=device)
        return self._pipes[key]

    def pipeline(self, method: str, device: str = "cpu", dtype: str = "float32"):
        from shotstream.session import ShotStreamPipeline

        key = (method, device, dtype_name(dtype))
        if key not in self._pipes:
            folder = self.folder(method)
            own_components = (folder / COMPONENTS).is_file()
            pipe = ShotStreamPipeline.from_pretrained(folder, autoencoder=None if own_components else self.autoencoder,
                                                      device=device, dtype=torch_dtype(dtype), text_device=self.text_device)
            if self.teacher_steps is not None:
                pipe.config.sampler.teacher_steps = self.teacher_steps
            if self.warmup:
                session = pipe.session(seed=0)
                session.submit("warm-up shot")
                for _ in session.stream():
                    pass
            self._pipes[key] = pipe
        return self._pipes[key]

    def release(self, method: str) -> None:
        """Free the method's pipelines (every device and dtype)."""
        import gc

        names = {method, str(self.folders.get(method))}  # (a codec is keyed by its folder)
        for key in [k for k in self._pipes if k[0] in names]:
            del self._pipes[key]
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def __call__(self, method: str, story: "StoryView", *, seed: int, device: str, dtype: str, steps: str,
                 preset: str) -> Generation:
        folder = self.folder(method)
        if folder is None:
            return ground_truth(story)
        if is_autoencoder(folder):
            return codec_round_trip(self.codec(folder, device), story)
        pipe = self.pipeline(method, device, dtype)
        return _measured(lambda: stream_story(pipe, story, seed=seed), device)


def _measured(fn: Callable[[], Generation], device: str) -> Generation:
    gen, peak = measure_peak_memory(fn, device=device)
    gen.peak_mem_mb = peak
    return gen


def stream_story(pipe, story: "StoryView", *, seed: int) -> Generation:
    """Stream every shot of `story` through one session of `pipe`; frames and chunk records."""
    session = pipe.session(seed=seed, global_caption=story.global_caption or None,
                           max_queue=max(8, len(story.captions)))
    records: list[ChunkRecord] = []
    frames: list[np.ndarray] = []
    for k, caption in enumerate(story.captions):
        shot = session.submit(caption)  # submitted right before streaming: latency = prompt -> first frame
        if shot != k:
            raise RuntimeError(f"story {story.id}: session gave shot index {shot} for shot {k}")
        chunks = []
        for c in session.stream():
            records.append(chunk_record(c))
            chunks.append(c.frames)
        frames.append(np.concatenate(chunks))
    session.close()
    return Generation(frames, records)


def ground_truth(story: "StoryView") -> Generation:
    """The `ground_truth` method: the suite's own frames, else the StoryWorld renders of the story."""
    if story.frames is not None:
        return Generation(list(story.frames), None, timed=False)
    src = story.source
    if src is None or not hasattr(src, "shots") or not getattr(src, "has_labels", False):
        raise GenerationNotWired(f"method {GROUND_TRUTH!r}: story {story.id} has no ground-truth frames "
                                 "(use a StoryWorld suite: `run --suite storyworld-eval`)")
    from shotstream.world import render_shot

    return Generation([render_shot(src, k)[0] for k in range(src.num_shots)], None, timed=False)


def codec_round_trip(autoencoder, story: "StoryView") -> Generation:
    """The ground truth of `story` encoded and decoded shot by shot (untimed, like the ground truth)."""
    from shotstream.video import to_model_video, to_uint8

    device = autoencoder.latent_mean.device
    with torch.no_grad():
        frames = [to_uint8(autoencoder.decode(autoencoder.encode(to_model_video(f, device)[None])))
                  for f in ground_truth(story).frames]
    return Generation(frames, None, timed=False)


_DEFAULT_GENERATOR: StreamingGenerator | None = None


def generate_story(method: str, story: "StoryView", *, seed: int, device: str, dtype: str, steps: str,
                   preset: str) -> Generation:
    """Generate every shot of `story` with `method` (shipped name, folder, or `ground_truth`),
    streaming, with chunk timings; pipelines are cached for the process."""
    global _DEFAULT_GENERATOR
    if _DEFAULT_GENERATOR is None:
        _DEFAULT_GENERATOR = StreamingGenerator()
    return _DEFAULT_GENERATOR(method, story, seed=seed, device=device, dtype=dtype, steps=steps, preset=preset)


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
    if isinstance(obj, StoryView):
        return obj
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


def check_prompts(view: StoryView) -> None:
    """Can a streaming session take this story? Checked for every story before any is generated,
    so a bad caption far into a suite stops the run at once instead of after hours."""
    from shotstream.session import MAX_SHOTS
    from shotstream.text_encoder import check_caption

    if len(view.captions) > MAX_SHOTS:
        raise ValueError(f"story {view.id}: {len(view.captions)} shots; a session holds at most {MAX_SHOTS}")
    named = [("global caption", view.global_caption)] if view.global_caption else []
    for where, caption in named + [(f"shot {k}", c) for k, c in enumerate(view.captions)]:
        check_caption(caption, f"story {view.id}, {where}")  # (the session's own check; long captions are cut, not refused)


def method_inputs(generate: GenerateFn, method: str) -> str:
    """Digest of the model a method generates with: its folder's config and weights (and the
    codec every model decodes through, when one is given); "" for ground truth and fakes."""
    folder = generate.folder(method) if hasattr(generate, "folder") else None
    if folder is None:
        return ""
    folders = [Path(folder)] + ([Path(generate.autoencoder)] if getattr(generate, "autoencoder", None) else [])
    files = [f for d in folders for f in sorted(d.iterdir())
             if f.is_file() and (f.suffix == ".safetensors" or f.name in ("config.json", COMPONENTS))]
    return digest({f"{f.parent.name}/{f.name}": file_digest(f) for f in files})


def story_inputs(view: StoryView, method_digest: str) -> str:
    """Digest of one (method, story): the method's model and everything the story gives it
    (captions, global caption, labels, ground-truth frames, the StoryWorld story it renders)."""
    from shotstream.world.storage import story_to_dict
    from shotstream.world.story import Story

    frames = None if view.frames is None else [hashlib.sha256(np.ascontiguousarray(f).tobytes()).hexdigest()
                                               for f in view.frames]
    world = story_to_dict(view.source) if isinstance(view.source, Story) else None
    return digest({"method": method_digest, "global_caption": view.global_caption, "captions": view.captions,
                   "labels": view.labels, "frames": frames, "world": world})


def story_seed(seed: int, story_id: str) -> int:
    """Per-story seed that does not depend on the story's position (resume-safe)."""
    return (seed * 1_000_003 + zlib.crc32(story_id.encode("utf-8"))) % 2**31


@dataclass
class Scoring:
    """What scoring needs besides the story: metrics, encoders, probe, character localiser."""

    metrics: Sequence[Metric] | None = None
    clip: Any = None
    embed: Callable | None = None
    probe: LabelProbe | None = None
    localiser: CharacterLocator | None = None  # the main character's box where the labels give none


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
                  progress: bool = True, variant: str = "") -> dict[str, int]:
    """Generate + score every (method, story) pair not already stored. Returns counts.

    variant MEMORY_ONLY: every story without its global caption, rows kept beside the normal run's.
    In official-format stories the global caption often names the character, so an "it" shot can
    take its identity from the caption instead of from the shots in memory; without it, identity
    on those shots measures what the caches carry."""
    if variant not in ("", MEMORY_ONLY):
        raise ValueError(f"unknown variant {variant!r} (expected '' or {MEMORY_ONLY!r})")
    scoring = scoring or Scoring()
    views = [story_view(s, i) for i, s in enumerate(stories)]
    if variant == MEMORY_ONLY:
        views = [replace(v, global_caption="") for v in views]
    ids = [v.id for v in views]
    if len(set(ids)) != len(ids):
        raise ValueError("story ids must be unique within a suite")
    for method in methods:
        check_protocol(store, method, meta)
    metrics = scoring.metrics if scoring.metrics is not None else get_metrics()
    counts = {"done": 0, "skipped": 0}
    models = {m: method_inputs(generate, m) for m in methods}  # once: weights can be gigabytes
    pairs = [(m, v) for m in methods for v in views]
    bar = tqdm(pairs, desc="benchmark", unit="story", disable=not progress)
    for method, view in bar:
        bar.set_postfix_str(f"{method} {view.id}")
        inputs = story_inputs(view, models[method])
        if store.done(method, view.id, metrics, inputs=inputs, variant=variant):
            counts["skipped"] += 1
            continue
        call = lambda: generate(method, view, seed=story_seed(meta.seed, view.id), device=meta.device,  # noqa: E731
                                dtype=meta.dtype, steps=meta.steps, preset=meta.preset)
        load_before = load_average()
        gen, measured = measure_peak_memory(call, device=meta.device)
        # recorded with the timed rows, so the report can tell a busy machine's latency from the model's
        load = MachineLoad(load_before, load_average(), cpu_cores()) if gen.timed else None
        output = StoryOutput(view.id, view.captions, list(gen.frames), view.labels, view.global_caption,
                             records=gen.records,
                             peak_mem_mb=gen.peak_mem_mb if gen.peak_mem_mb is not None else measured)
        # A reference (ground truth) has no generation time: its timing rows are absent, not NaN.
        scored = metrics if gen.timed else [m for m in metrics if m.name not in TIMING_METRICS]
        rows = score_story(output, scored, clip=scoring.clip, embed=scoring.embed, probe=scoring.probe,
                           localiser=scoring.localiser)
        store.write_story(method, view.id, rows, meta, inputs=inputs, load=load, variant=variant)
        counts["done"] += 1
    return counts


def score_manifest(manifest: Manifest, method: str, store: RowStore, meta: RunMeta,
                   scoring: Scoring | None = None, *, progress: bool = True) -> dict[str, int]:
    """Score the videos of a manifest as `method`; every entry is checked before any row is written."""
    scoring = scoring or Scoring()
    # Videos from other systems carry no chunk timings: every metric but the timing ones by default.
    metrics = scoring.metrics if scoring.metrics is not None else [m for m in get_metrics() if m.name not in TIMING_METRICS]
    check_protocol(store, method, meta)
    manifest.check_videos()
    counts = {"done": 0, "skipped": 0}
    for story in tqdm(manifest.stories, desc="score", unit="story", disable=not progress):
        inputs = story.inputs()
        if store.done(method, story.id, metrics, inputs=inputs):
            counts["skipped"] += 1
            continue
        output = StoryOutput(story.id, story.captions, story.load_frames(), story.labels, story.global_caption)
        rows = score_story(output, metrics, clip=scoring.clip, embed=scoring.embed, probe=scoring.probe,
                           localiser=scoring.localiser)
        store.write_story(method, story.id, rows, meta, inputs=inputs)
        counts["done"] += 1
    return counts

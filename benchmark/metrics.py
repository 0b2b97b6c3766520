"""Metric registry (lm-evaluation-harness style) and the benchmark's metrics.

Every metric is registered by name with its direction, range, unit, version and formula:

    @register_metric("fps", higher_is_better=True, range=(0, inf), unit="frames/s", level="story",
                     doc="frames delivered / (last chunk ready - first submit)")
    def fps(story, ctx) -> list[Value]: ...

A metric function takes the generated story (`StoryOutput`) and a per-story `MetricContext`
(the encoders, probe and character localiser, with cached embeddings/predictions) and returns
`Value`s: one per shot (`level="shot"`) or one with shot -1 (`level="story"`). An input it needs
but does not have (no timing records, no CLIP encoder, no labels, no probe, no character box)
gives NaN with a note: a missing metric is a failure in the report, never 0 (VBench scored
missing dimensions as 0).

Layouts: frames are numpy uint8 [F, H, W, 3] per shot; embeddings torch float [N, D], normalised.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from benchmark import timing
from benchmark.timing import ChunkRecord, chunk_durations

STORY_LEVEL = -1  # the `shot` of a row that describes a whole story
# Metrics computed from streamed-chunk records / the memory measurement of a generation run.
TIMING_METRICS = ("latency_first_frame_s", "fps", "chunk_time_s", "chunk_time_growth", "peak_mem_mb")
# Metrics that use the CLIP encoder (the embedding ones only when no other embedding is given).
CLIP_METRICS = ("clip_text", "inter_shot_identity", "intra_shot_consistency", "scene_similarity")
# Metrics on the main character's crops: its box comes from the labels, else from a CharacterLocator.
CHARACTER_METRICS = ("inter_shot_identity", "intra_shot_consistency")


@dataclass(frozen=True)
class Metric:
    name: str
    fn: Callable[["StoryOutput", "MetricContext"], list["Value"]]
    higher_is_better: bool
    range: tuple[float, float]
    unit: str
    version: int
    doc: str
    level: str  # "shot" or "story"
    aggregates: tuple[str, ...]  # leaderboard columns: "mean", "p95"
    by_subset: bool  # leaderboard also splits by shot subset ("named" / "pronoun")


METRICS: dict[str, Metric] = {}


def register_metric(name: str, *, higher_is_better: bool, range: tuple[float, float], unit: str,
                    version: int = 1, doc: str, level: str = "shot",
                    aggregates: tuple[str, ...] = ("mean",), by_subset: bool = False):
    """Register `fn(story, ctx) -> list[Value]` under `name` (a name can be registered once)."""
    if level not in ("shot", "story"):
        raise ValueError(f"metric {name}: level must be 'shot' or 'story', got {level!r}")
    if not range[0] < range[1]:
        raise ValueError(f"metric {name}: empty range {range}")
    if not set(aggregates) <= {"mean", "p95"}:
        raise ValueError(f"metric {name}: unknown aggregates {aggregates}")

    def deco(fn):
        if name in METRICS:
            raise ValueError(f"metric {name!r} is already registered")
        METRICS[name] = Metric(name, fn, higher_is_better, tuple(range), unit, version, doc.strip(),
                               level, tuple(aggregates), by_subset)
        return fn

    return deco


def get_metrics(names: Sequence[str] | None = None) -> list[Metric]:
    """Metrics by name (all registered when None); an unknown name is an error with the choices."""
    if names is None:
        return list(METRICS.values())
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRICS)}")
    return [METRICS[n] for n in names]


def describe_metrics() -> str:
    """One paragraph per metric, generated from the registry (used by `--help` and README)."""
    lines = []
    for m in METRICS.values():
        lo, hi = (f"{v:g}" for v in m.range)
        better = "higher is better" if m.higher_is_better else "lower is better"
        lines.append(f"  {m.name} [{m.unit}, {m.level}, range {lo}..{hi}, {better}, v{m.version}]\n"
                     f"      {m.doc}")
    return "\n".join(lines)


# --- inputs -------------------------------------------------------------------------------------


@dataclass
class Value:
    shot: int
    value: float
    note: str = ""


class MetricUnavailable(Exception):
    """An input the metric needs is missing: every value of the metric becomes NaN with this note."""


class LabelProbe(Protocol):
    """A classifier of rendered shots (trained on ground-truth StoryWorld renders).

    predict(frames uint8 [F, H, W, 3]) -> {"identity": ..., "scene": ..., "framing": ...,
    "action": ...}; a label it cannot judge may be left out (its accuracy is then NaN).
    """

    def predict(self, frames: np.ndarray) -> dict[str, Any]: ...


class CharacterLocator(Protocol):
    """Finds the main character in every frame (e.g. benchmark.localiser on StoryWorld).

    locate(frames uint8 [F, H, W, 3]) -> float [F, 4]: boxes (x0, y0, x1, y1) in pixels, x1/y1
    exclusive; a row of NaN where the character is not in the frame.
    """

    def locate(self, frames: np.ndarray) -> np.ndarray: ...


@dataclass
class StoryOutput:
    """One generated (or externally produced) story, as the metrics see it."""

    story_id: str
    captions: list[str]  # per shot
    frames: list[np.ndarray]  # per shot, uint8 [F, H, W, 3]
    labels: list[dict | None]  # per shot ground truth (None: unlabelled)
    global_caption: str = ""
    records: list[ChunkRecord] | None = None  # streamed-chunk timing, None if not measured
    peak_mem_mb: float | None = None

    def __post_init__(self) -> None:
        n = len(self.captions)
        if len(self.frames) != n or len(self.labels) != n:
            raise ValueError(f"story {self.story_id}: {n} captions, {len(self.frames)} shots of frames, "
                             f"{len(self.labels)} label sets; they must match")
        for k, f in enumerate(self.frames):
            if not (isinstance(f, np.ndarray) and f.dtype == np.uint8 and f.ndim == 4 and f.shape[-1] == 3
                    and len(f) > 0):
                desc = f"{f.dtype} {f.shape}" if isinstance(f, np.ndarray) else type(f).__name__
                raise ValueError(f"story {self.story_id} shot {k}: frames must be uint8 [F, H, W, 3], got {desc}")


def shot_subset(labels: dict | None) -> str:
    """The subset a shot belongs to: "pronoun" (caption says "it"), "named", or "" (unlabelled)."""
    if not labels:
        return ""
    return "pronoun" if labels.get("pronoun") else "named"


EmbedFn = Callable[[Sequence[np.ndarray]], torch.Tensor]  # images -> normalised [N, D]


class MetricContext:
    """Shared resources for scoring one story, with per-story caches (embeddings, predictions)."""

    def __init__(self, story: StoryOutput, clip=None, embed: EmbedFn | None = None, probe: LabelProbe | None = None,
                 localiser: CharacterLocator | None = None):
        self.story, self.clip, self.probe, self.localiser = story, clip, probe, localiser
        self._embed = embed if embed is not None else (clip.encode_images if clip is not None else None)
        self._frame_emb: dict[int, torch.Tensor] = {}
        self._char_emb: dict[int, torch.Tensor] = {}
        self._pred: dict[int, dict] = {}

    def embed(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        if self._embed is None:
            raise MetricUnavailable("no image embedding (pass a CLIP encoder or an embed function)")
        return F.normalize(torch.as_tensor(self._embed(images)).float(), dim=-1)

    def frame_embeddings(self, shot: int) -> torch.Tensor:
        """Whole-frame embeddings of a shot, [F, D] (computed once per story)."""
        if shot not in self._frame_emb:
            self._frame_emb[shot] = self.embed(self.story.frames[shot])
        return self._frame_emb[shot]

    def character_embeddings(self, shot: int) -> torch.Tensor:
        """Embeddings of the main character's crops in a shot, [F', D] (F' <= F: frames without the
        character are left out; computed once per story)."""
        if shot not in self._char_emb:
            crops = character_crops(self.story.frames[shot], self.story.labels[shot], self.localiser)
            if not crops:
                raise MetricUnavailable(f"shot {shot}: the main character is in none of its frames")
            self._char_emb[shot] = self.embed(crops)
        return self._char_emb[shot]

    def clip_frame_embeddings(self, shot: int) -> torch.Tensor:
        """CLIP image embeddings of a shot's frames, [F, D] (shared with frame_embeddings when the
        embedding function is the CLIP image encoder, the default)."""
        clip = self.require_clip()
        if self._embed == clip.encode_images:
            return self.frame_embeddings(shot)
        return clip.encode_images(self.story.frames[shot])

    def require_clip(self):
        if self.clip is None:
            raise MetricUnavailable("no CLIP encoder (train one with `shotstream-bench train-clip` or pass --clip)")
        return self.clip

    def predictions(self, shot: int) -> dict:
        if self.probe is None:
            raise MetricUnavailable("no label probe")
        if shot not in self._pred:
            self._pred[shot] = dict(self.probe.predict(self.story.frames[shot]))
        return self._pred[shot]


@dataclass
class MetricRow:
    metric: str
    shot: int
    value: float
    subset: str = ""
    note: str = ""
    metric_version: int = 1


def score_story(story: StoryOutput, metrics: Sequence[Metric] | None = None, *, clip=None,
                embed: EmbedFn | None = None, probe: LabelProbe | None = None,
                localiser: CharacterLocator | None = None) -> list[MetricRow]:
    """All requested metrics on one story; missing inputs and out-of-range values become NaN rows."""
    ctx = MetricContext(story, clip=clip, embed=embed, probe=probe, localiser=localiser)
    rows = []
    for m in metrics if metrics is not None else get_metrics():
        try:
            values = m.fn(story, ctx)
        except MetricUnavailable as e:
            shots = range(len(story.frames)) if m.level == "shot" else [STORY_LEVEL]
            values = [Value(k, math.nan, f"missing: {e}") for k in shots]
        for v in values:
            value, note = float(v.value), v.note
            lo, hi = m.range
            tol = 1e-6 * max(1.0, abs(lo) if math.isfinite(lo) else 1.0, abs(hi) if math.isfinite(hi) else 1.0)
            if not math.isnan(value) and not (lo - tol <= value <= hi + tol):
                value, note = math.nan, f"error: value {v.value!r} outside the declared range [{lo}, {hi}]"
            elif not math.isnan(value):
                value = min(max(value, lo), hi)  # float round-off only (e.g. cosine 1.0000001)
            subset = shot_subset(story.labels[v.shot]) if v.shot != STORY_LEVEL else ""
            rows.append(MetricRow(m.name, v.shot, value, subset, note, m.version))
    return rows


# --- timing metrics -----------------------------------------------------------------------------


def _records(story: StoryOutput) -> list[ChunkRecord]:
    if not story.records:
        raise MetricUnavailable("no streamed-chunk timing records")
    return story.records


@register_metric("latency_first_frame_s", higher_is_better=False, range=(0, math.inf), unit="s",
                 aggregates=("mean", "p95"),
                 doc="per shot: t_chunk_ready of its first chunk - t_submit of its prompt "
                     "(leaderboard: mean and p95 over shots)")
def latency_first_frame_s(story: StoryOutput, ctx: MetricContext) -> list[Value]:
    records = _records(story)
    out = []
    for k in range(len(story.frames)):
        mine = [r for r in records if r.shot == k]
        if not mine:
            out.append(Value(k, math.nan, "missing: no chunk record for this shot"))
            continue
        for r in mine:
            r.validate()
        first = min(mine, key=lambda r: r.chunk)
        out.append(Value(k, first.t_chunk_ready - first.t_submit))
    return out


@register_metric("fps", higher_is_better=True, range=(0, math.inf), unit="frames/s", level="story",
                 doc="frames delivered (sum over chunks) / (last t_chunk_ready - first t_submit)")
def fps(story: StoryOutput, ctx: MetricContext) -> list[Value]:
    records = _records(story)
    for r in records:
        r.validate()
    wall = max(r.t_chunk_ready for r in records) - min(r.t_submit for r in records)
    if wall <= 0:
        return [Value(STORY_LEVEL, math.nan, "error: zero generation wall time")]
    return [Value(STORY_LEVEL, sum(r.frames for r in records) / wall)]


def _chunk_time_per_shot(story: StoryOutput) -> dict[int, float]:
    by_shot: dict[int, list[float]] = {}
    for r, d in chunk_durations(_records(story)):
        by_shot.setdefault(r.shot, []).append(d)
    return {k: float(np.mean(v)) for k, v in by_shot.items()}


@register_metric("chunk_time_s", higher_is_better=False, range=(0, math.inf), unit="s",
                 doc="per shot: mean chunk service time, chunk ready - max(shot submit, previous chunk "
                     "ready); must stay flat over shots (bounded cache)")
def chunk_time_s(story: StoryOutput, ctx: MetricContext) -> list[Value]:
    per_shot = _chunk_time_per_shot(story)
    return [Value(k, per_shot[k]) if k in per_shot else Value(k, math.nan, "missing: no chunk record for this shot")
            for k in range(len(story.frames))]


@register_metric("chunk_time_growth", higher_is_better=False, range=(0, math.inf), unit="ratio", level="story", version=3,
                 doc="chunk time at the last shot / at the second shot (1 = no growth with shots), read off a "
                     "robust line (Theil-Sen) fitted to every chunk of those shots; shot 1 has no history and "
                     "does less work, so the baseline is the second shot, the first whose memory is full")
def chunk_time_growth(story: StoryOutput, ctx: MetricContext) -> list[Value]:
    # From the second shot on the global cache holds its full budget of conditional frames
    # (select_context_frames fills it from one shot), so every later chunk does the same work:
    # any trend is growth with the story. A shot has only a few chunks: the line uses them all.
    first, last = 1, len(story.frames) - 1
    if last <= first:
        return [Value(STORY_LEVEL, math.nan, "missing: needs a story of >= 3 shots")]
    durations = chunk_durations(_records(story))
    shots = {r.shot for r, _ in durations}
    if first not in shots or last not in shots:
        return [Value(STORY_LEVEL, math.nan, "missing: no chunk time for the second or last shot")]
    try:
        growth = timing.chunk_time_growth([r.shot for r, _ in durations], [d for _, d in durations], first, last)
    except ValueError as e:
        return [Value(STORY_LEVEL, math.nan, f"error: {e}")]
    return [Value(STORY_LEVEL, growth)]


@register_metric("peak_mem_mb", higher_is_better=False, range=(0, math.inf), unit="MB", level="story",
                 doc="peak memory during the story's generation (CUDA: max allocated; CPU: peak RSS of "
                     "the process), see benchmark.timing.measure_peak_memory")
def peak_mem_mb(story: StoryOutput, ctx: MetricContext) -> list[Value]:
    if story.peak_mem_mb is None:
        raise MetricUnavailable("no memory measurement")
    return [Value(STORY_LEVEL, float(story.peak_mem_mb))]


# --- CLIP and embedding metrics ----------------------------------------------------------------


@register_metric("clip_text", higher_is_better=True, range=(0, 100), unit="CLIP score (x100)",
                 doc="per shot: max(100 * mean_f cos(E_img(frame_f), E_txt(shot caption)), 0), "
                     "torchmetrics' CLIPScore over the shot's frames")
def clip_text(story: StoryOutput, ctx: MetricContext) -> list[Value]:
    clip = ctx.require_clip()
    texts = clip.encode_texts(story.captions)  # (K, D)
    out = []
    for k in range(len(story.frames)):
        img = ctx.clip_frame_embeddings(k)  # (F, D)
        out.append(Value(k, max(100.0 * (img @ texts[k]).mean().item(), 0.0)))
    return out


def square_box(box: Sequence[float] | None, height: int, width: int) -> tuple[int, int, int, int] | None:
    """The square around box (x0, y0, x1, y1): its side the box's longer side (at most the frame's
    shorter one), centred on the box, moved inside the frame; None for no box, a NaN or an empty
    one. Square, because an image encoder resizes the short side and centre-crops: a tall or wide
    crop would lose the character's ends. No margin: every pixel of background added makes the
    crop a little more about the scene."""
    if box is None or len(box) != 4 or not all(math.isfinite(float(v)) for v in box):
        return None
    x0, y0, x1, y1 = (float(v) for v in box)
    if x1 <= x0 or y1 <= y0:
        return None
    side = min(max(x1 - x0, y1 - y0), height, width)
    left = min(max((x0 + x1 - side) / 2, 0.0), width - side)
    top = min(max((y0 + y1 - side) / 2, 0.0), height - side)
    side_px = max(1, int(round(side)))
    left_px, top_px = min(int(round(left)), width - side_px), min(int(round(top)), height - side_px)
    return left_px, top_px, left_px + side_px, top_px + side_px


def character_boxes(frames: np.ndarray, labels: dict | None, localiser: CharacterLocator | None = None) -> list:
    """The main character's box in each frame: labels["boxes"] (one box or None per frame),
    labels["box"] (one for the shot), else the localiser's; no box and no localiser is missing."""
    labels = labels or {}
    if labels.get("boxes") is not None:
        boxes = labels["boxes"]
        if len(boxes) != len(frames):
            raise ValueError(f"labels['boxes'] has {len(boxes)} boxes for {len(frames)} frames")
        return list(boxes)
    if labels.get("box") is not None:
        return [labels["box"]] * len(frames)
    if localiser is None:
        raise MetricUnavailable("no character box: the labels give none and there is no character localiser "
                                "(train one with `shotstream-bench train-localiser`)")
    boxes = np.asarray(localiser.locate(frames), np.float64)
    if boxes.shape != (len(frames), 4):
        raise ValueError(f"the localiser gave boxes of shape {boxes.shape} for {len(frames)} frames")
    return list(boxes)


def character_crops(frames: np.ndarray, labels: dict | None, localiser: CharacterLocator | None = None) -> list[np.ndarray]:
    """Square crops of the main character (`square_box` of `character_boxes`), one per frame that
    has a box; frames without one (None, NaN, empty) are left out."""
    h, w = frames.shape[1:3]
    crops = []
    for frame, box in zip(frames, character_boxes(frames, labels, localiser)):
        square = square_box(box, h, w)
        if square is not None:
            x0, y0, x1, y1 = square
            crops.append(frame[y0:y1, x0:x1])
    return crops


def _mean_embedding(e: torch.Tensor) -> torch.Tensor:
    return F.normalize(e.mean(0), dim=-1)  # (D,)


def _earlier_shot_cosines(embs: list[torch.Tensor]) -> list[Value]:
    """Per shot k >= 1: mean over j < k of cos(c_k, c_j), c = the shot's normalised mean embedding."""
    c = [_mean_embedding(e) for e in embs]
    return [Value(k, float(np.mean([(c[k] @ c[j]).item() for j in range(k)]))) for k in range(1, len(c))]


@register_metric("inter_shot_identity", higher_is_better=True, range=(-1, 1), unit="cosine", by_subset=True, version=2,
                 doc="per shot k >= 1: mean over earlier shots j < k of cos(c_k, c_j), c = normalised mean "
                     "embedding of the shot's main-character crops (square around the labelled box, else the "
                     "character localiser's; v1 embedded whole frames: see scene_similarity)")
def inter_shot_identity(story: StoryOutput, ctx: MetricContext) -> list[Value]:
    return _earlier_shot_cosines([ctx.character_embeddings(k) for k in range(len(story.frames))])


@register_metric("scene_similarity", higher_is_better=True, range=(-1, 1), unit="cosine",
                 doc="per shot k >= 1: mean over earlier shots j < k of cos(c_k, c_j), c = normalised mean "
                     "embedding of the shot's whole frames (inter_shot_identity v1): mostly the scene, not "
                     "the character")
def scene_similarity(story: StoryOutput, ctx: MetricContext) -> list[Value]:
    return _earlier_shot_cosines([ctx.frame_embeddings(k) for k in range(len(story.frames))])


@register_metric("intra_shot_consistency", higher_is_better=True, range=(0, 1), unit="cosine", version=2,
                 doc="per shot (VBench subject consistency on the subject): mean over frames f >= 1 of "
                     "(max(cos(e_f, e_0), 0) + max(cos(e_f, e_{f-1}), 0)) / 2, e = embedding of the main "
                     "character's crop in frame f (as inter_shot_identity; v1 embedded whole frames)")
def intra_shot_consistency(story: StoryOutput, ctx: MetricContext) -> list[Value]:
    out = []
    for k in range(len(story.frames)):
        e = ctx.character_embeddings(k)  # (F', D)
        if len(e) < 2:
            out.append(Value(k, math.nan, "missing: the character is in fewer than 2 frames of the shot"))
            continue
        to_first = (e[1:] @ e[0]).clamp(min=0)  # (F'-1,)
        to_prev = (e[1:] * e[:-1]).sum(-1).clamp(min=0)  # (F'-1,)
        out.append(Value(k, ((to_first + to_prev) / 2).mean().item()))
    return out


# --- label accuracy (probe) --------------------------------------------------------------------

# The contract with StoryWorld's labels and the probe's predictions: metric -> label key.
LABEL_KEYS = {"identity_acc": "identity", "scene_acc": "scene", "framing_acc": "framing", "action_acc": "action"}
# Identity is right only when all three of its attributes are: these say which one a model misses.
IDENTITY_PARTS = {"colour_acc": "colour", "shape_acc": "shape", "pattern_acc": "pattern"}


def _label_accuracy(metric: str):
    key = (LABEL_KEYS | IDENTITY_PARTS)[metric]

    def fn(story: StoryOutput, ctx: MetricContext) -> list[Value]:
        out = []
        for k, labels in enumerate(story.labels):
            if not labels or key not in labels:
                out.append(Value(k, math.nan, f"missing: no ground-truth label {key!r}"))
                continue
            pred = ctx.predictions(k)
            if key not in pred:
                out.append(Value(k, math.nan, f"missing: probe gave no {key!r} prediction"))
                continue
            # The note keeps the probe's answer (v2): the report draws confusion matrices from it.
            out.append(Value(k, float(pred[key] == labels[key]), f"{labels[key]} -> {pred[key]}"))
        return out

    fn.__name__ = metric
    return fn


for _metric, _key in LABEL_KEYS.items():
    register_metric(_metric, higher_is_better=True, range=(0, 1), unit="accuracy", by_subset=True, version=2,
                    doc=f"per shot: 1 if probe.predict(frames)[{_key!r}] == labels[{_key!r}] else 0 "
                        f"(leaderboard: mean, also split into named / pronoun ('it') shots)")(_label_accuracy(_metric))
for _metric, _key in IDENTITY_PARTS.items():
    register_metric(_metric, higher_is_better=True, range=(0, 1), unit="accuracy", version=2,
                    doc=f"per shot: the main character's {_key} as identity_acc reads it: "
                        f"1 if probe.predict(frames)[{_key!r}] == labels[{_key!r}] else 0")(_label_accuracy(_metric))

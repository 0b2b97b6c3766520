"""Next-shot training data, streamed from StoryWorld on the fly.

An example is one shot k of a procedurally drawn story (the target) with the conditional
frames that `select_context_frames` picks from the ground-truth shots 0..k-1 (the same rule the
session applies to generated shots at inference). Everything is a pure function of a seed, so a
training step's batch is reproducible from (seed, step, rank) and resume is exact.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save as safetensors_bytes

from shotstream.checkpoint import CheckpointError, file_digest, load_tensors, write_atomic
from shotstream.conditioning import NextShotConditioning
from shotstream.config import ShotStreamConfig
from shotstream.model.memory import select_context_frames
from shotstream.video import to_model_video
from shotstream.world.dataset import training_seed
from shotstream.world.render import render_shot
from shotstream.world.story import Story, sample_story


def story_caption(story: Story, k: int, caption: str | None = None) -> str:
    """The caption the model sees for shot k (or `caption`, told in its place): the global
    caption, if any, prefixes it (as at inference)."""
    c = story.shots[k].caption if caption is None else caption
    return f"{story.global_caption} {c}" if story.global_caption else c


@dataclass
class NextShotExample:
    """One target shot and its conditional frames, in pixel space."""

    story: Story
    shot: int
    target: np.ndarray  # uint8 [F, H, W, 3]
    context: np.ndarray  # uint8 [Cf, H, W, 3]
    context_shots: list[int]  # source shot of each conditional frame
    shots: list[np.ndarray]  # every rendered shot 0..k (inter-shot training rolls them out)
    target_boxes: np.ndarray | None = None  # float32 [F, n_chars, 4] (x0 y0 x1 y1 px, NaN = unseen)
    # (target [f, C, h, w], context [Cf, C, h, w]) latents when already encoded (StoryPool, which
    # then drops the pixels); None = collate encodes the pixels
    latents: tuple[torch.Tensor, torch.Tensor] | None = None


def next_shot_example(story: Story, k: int, cfg: ShotStreamConfig) -> NextShotExample:
    """Shot k of a story with conditional frames from the ground-truth renders of shots < k."""
    rendered = [render_shot(story, i, cfg.video) for i in range(k + 1)]
    return example_from_history(story, k, [f for f, _ in rendered[:k]], *rendered[k], cfg=cfg)


def first_latent_frames(e: NextShotExample, n: int, cfg: ShotStreamConfig) -> NextShotExample:
    """The example with its target cut to its first n latent frames (pixel frames 0..4(n-1)): the
    same next-shot task, the shot's opening decided from the same context, at a fraction of the
    target's tokens. The autoencoder is causal, so the kept latents are those of the whole shot."""
    frames = 1 + (n - 1) * cfg.video.temporal_stride
    latents = None if e.latents is None else (e.latents[0][:n], e.latents[1])
    boxes = None if e.target_boxes is None else e.target_boxes[:frames]
    shots = [*e.shots[:-1], e.shots[-1][:frames]] if e.shots else e.shots
    return replace(e, target=e.target[:frames], target_boxes=boxes, latents=latents, shots=shots)


def character_cells(boxes: np.ndarray, cfg: ShotStreamConfig) -> np.ndarray:
    """Latent cells [f, h, w] (bool) that the main character's box (boxes [F, n_chars, 4] in
    pixels) touches in any pixel frame of that latent frame."""
    s, t = cfg.video.spatial_stride, cfg.video.temporal_stride
    h, w = cfg.video.latent_size
    out = np.zeros((1 + (len(boxes) - 1) // t, h, w), bool)
    for j in range(len(out)):
        frames = boxes[:1] if j == 0 else boxes[1 + (j - 1) * t: 1 + j * t]
        for x0, y0, x1, y1 in frames[:, 0]:
            if np.isnan(x0):
                continue
            out[j, int(y0) // s: -(-int(np.ceil(y1)) // s), int(x0) // s: -(-int(np.ceil(x1)) // s)] = True
    return out


def character_weight(boxes: np.ndarray, cfg: ShotStreamConfig, weight: float) -> np.ndarray:
    """Per latent cell loss weight [f, h, w]: `weight` on the main character's cells
    (`character_cells`), else 1.

    The characters are a few latent cells in a 16x16 grid of background: with a uniform loss a
    small model learns the scenes long before them."""
    return np.where(character_cells(boxes, cfg), np.float32(weight), np.float32(1.0))


def example_from_history(story: Story, k: int, history: list[np.ndarray], target: np.ndarray | None,
                         target_boxes: np.ndarray | None = None, *, cfg: ShotStreamConfig) -> NextShotExample:
    """Shot k conditioned on `history` (frames of shots < k: ground truth, or the model's own)."""
    picks = select_context_frames([len(f) for f in history], cfg.model.context_frames)
    h, w = cfg.video.height, cfg.video.width
    context = np.stack([history[s][f] for s, f in picks]) if picks else np.zeros((0, h, w, 3), np.uint8)
    if target is None:  # self-forcing has no ground-truth target
        target = np.zeros((cfg.video.frames_per_shot, h, w, 3), np.uint8)
    return NextShotExample(story, k, target, context, [s for s, _ in picks], [*history, target], target_boxes)


def target_shot(seed: int, story: Story, pronoun_share: float = 0.0) -> int:
    """The target shot an example seed picks in a story: uniform over its shots, or, with
    probability `pronoun_share` and if the story has any, uniform over its "it" shots: the only
    targets whose character must be read from the context (1 target in 5 when uniform)."""
    pronoun = [i for i, shot in enumerate(story.shots) if shot.labels.pronoun]
    rng = np.random.default_rng([seed, 0x17])
    if pronoun and rng.random() < pronoun_share:
        return pronoun[int(rng.integers(len(pronoun)))]
    return int(np.random.default_rng([seed, 0x7E57]).integers(story.num_shots))


def named_shot(seed: int, story: Story) -> int:
    """The shot an image example seed picks: uniform over the shots whose caption names the
    character (shot 0 always does)."""
    named = [i for i, shot in enumerate(story.shots) if not shot.labels.pronoun]
    return named[int(np.random.default_rng([seed, 0x1A6E]).integers(len(named)))]


def training_story(seed: int, cfg: ShotStreamConfig, max_shots: int = 6) -> Story:
    """The story an example seed draws from the training stream."""
    return sample_story(training_seed(seed), max_shots=max_shots, frames_per_shot=cfg.video.frames_per_shot)


def sample_example(seed: int, cfg: ShotStreamConfig, max_shots: int = 6, pronoun_share: float = 0.0) -> NextShotExample:
    """A random story (seed in the training stream) and a target shot (`target_shot`)."""
    story = training_story(seed, cfg, max_shots)
    return next_shot_example(story, target_shot(seed, story, pronoun_share), cfg)


def sample_image_example(seed: int, cfg: ShotStreamConfig, max_shots: int = 6) -> NextShotExample:
    """Joint image training: the opening frame of a random shot (a one-frame shot, drawn alone),
    its caption and no context. Some 15x cheaper than a video example, so a step can show the
    model many more captions: the text -> character mapping is learnt from these. Only shots that
    name their character: without context, an "it" caption could only teach an average character."""
    story = sample_story(training_seed(seed), max_shots=max_shots, frames_per_shot=1)
    k = named_shot(seed, story)
    return example_from_history(story, k, [], *render_shot(story, k, cfg.video), cfg=cfg)


def encoded_example(story: Story, k: int, context_shots: list[int], boxes: np.ndarray | None,
                    latents: tuple[torch.Tensor, torch.Tensor], cfg: ShotStreamConfig) -> NextShotExample:
    """An example that carries its latents and no pixels (StoryPool keeps only these)."""
    none = np.zeros((0, cfg.video.height, cfg.video.width, 3), np.uint8)
    return NextShotExample(story, k, none, none, context_shots, [], boxes, latents)


def encode_context(e: NextShotExample, autoencoder, device) -> torch.Tensor:
    """Latents [Cf, C, h, w] of an example's conditional frames, each encoded alone."""
    if not len(e.context):
        h, w = autoencoder.cfg.latent_size
        return torch.zeros(0, autoencoder.latent_channels, h, w, device=device)
    return autoencoder.encode_image(to_model_video(e.context, device))[:, 0]


def encode_example(e: NextShotExample, autoencoder, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(target [f, C, h, w], context [Cf, C, h, w]) latents of one example, encoded on its own."""
    if e.latents is not None:
        return e.latents
    return autoencoder.encode(to_model_video(e.target, device)[None])[0], encode_context(e, autoencoder, device)


class LatentCache:
    """Encoded next-shot examples on disk: each (story, shot) is rendered and encoded once, then
    read back in milliseconds by every later step, run and stage that draws it (a retrain, the
    fp32 / bf16 comparison, ODE pairs, the arms of a study). Encoding is about half of a teacher
    step on a 2-core CPU (`python -m benchmark.train_speed`).

    Entries live under a folder named by the codec's weights and the video geometry, so another
    autoencoder never reads them. Each example is encoded alone, as `StoryPool` encodes it: its
    latents do not depend on what else was drawn, and a resumed run reads what it would have
    encoded. An entry is written through a rename (never half-written); an unreadable one is
    encoded again. ~180 KB an example at the tiny preset (fp32, kept exact)."""

    def __init__(self, root: str | Path, autoencoder_path: str | Path, autoencoder, cfg: ShotStreamConfig, device):
        weights = sorted(Path(autoencoder_path).glob("*.safetensors"))
        if not weights:
            raise FileNotFoundError(f"{autoencoder_path}: no autoencoder weights to key the latent cache by")
        video = hashlib.sha256(json.dumps(dataclasses.asdict(cfg.video), sort_keys=True).encode()).hexdigest()[:8]
        self.dir = Path(root) / f"{file_digest(*weights)}-{video}"
        self.autoencoder, self.cfg, self.device = autoencoder, cfg, device

    def path(self, story: Story, k: int) -> Path:
        return self.dir / f"{story.seed % 997:03d}" / f"{story.seed}_{k}.safetensors"

    @torch.no_grad()
    def get(self, story: Story, k: int) -> NextShotExample:
        """Shot k of `story` with its context, as latents (`encoded_example`)."""
        path = self.path(story, k)
        if path.is_file():
            try:
                t = load_tensors(path)
                boxes = t["target_boxes"].numpy() if "target_boxes" in t else None
                return encoded_example(story, k, t["context_shots"].tolist(), boxes, (t["target"], t["context"]), self.cfg)
            except (CheckpointError, KeyError) as e:
                warnings.warn(f"latent cache: {path} is unreadable ({e}); encoding it again", stacklevel=2)
        e = next_shot_example(story, k, self.cfg)
        target, context = (t.cpu().contiguous() for t in encode_example(e, self.autoencoder, self.device))
        tensors = {"target": target, "context": context, "context_shots": torch.tensor(e.context_shots, dtype=torch.long)}
        if e.target_boxes is not None:
            tensors["target_boxes"] = torch.from_numpy(np.ascontiguousarray(e.target_boxes))
        write_atomic(path, safetensors_bytes(tensors))
        return encoded_example(story, k, e.context_shots, e.target_boxes, (target, context), self.cfg)

    def example(self, seed: int, max_shots: int = 6, pronoun_share: float = 0.0) -> NextShotExample:
        """As `sample_example`: the same story and target shot, from the cache."""
        story = training_story(seed, self.cfg, max_shots)
        return self.get(story, target_shot(seed, story, pronoun_share))


class StoryPool:
    """A fixed pool of training stories whose examples are encoded once, on first use, and kept
    (DiT's latent caching). Encoding is some 40% of a teacher step on a 2-core CPU. A joint image
    example is the opening frame of a pooled shot: one encoding, against some 15 for a whole
    example. The cost is variety: `size` stories, not a fresh one each.

    Every example is encoded alone, so its latents do not depend on what was drawn before it and
    resume stays exact."""

    def __init__(self, size: int, autoencoder, cfg: ShotStreamConfig, device, max_shots: int = 6,
                 cache: LatentCache | None = None):
        if size < 1:
            raise ValueError(f"story pool size must be >= 1, got {size}")
        self.size, self.autoencoder, self.cfg, self.device, self.max_shots = size, autoencoder, cfg, device, max_shots
        self.cache = cache  # where examples are encoded once for every run (else: here, once per run)
        self.encoded: dict[tuple[int, int], NextShotExample] = {}  # (story seed, shot) -> example
        self.first_frames: dict[tuple[int, int], tuple] = {}  # (story seed, shot) -> frame 0's latent [1, C, h, w], boxes

    def __len__(self) -> int:
        return len(self.encoded)

    def story(self, seed: int) -> Story:
        index = int(np.random.default_rng([seed, 0x9001]).integers(self.size))
        return sample_story(training_seed(index), max_shots=self.max_shots, frames_per_shot=self.cfg.video.frames_per_shot)

    @torch.no_grad()
    def get(self, story: Story, k: int) -> NextShotExample:
        key = (story.seed, k)
        if key not in self.encoded and self.cache is not None:
            self.encoded[key] = self.cache.get(story, k)
        if key not in self.encoded:
            e = next_shot_example(story, k, self.cfg)
            # kept in host memory (~250 KB an example at the tiny preset); collate moves them to the device
            latents = tuple(t.cpu() for t in encode_example(e, self.autoencoder, self.device))
            self.encoded[key] = encoded_example(story, k, e.context_shots, e.target_boxes, latents, self.cfg)
        return self.encoded[key]

    def example(self, seed: int, pronoun_share: float = 0.0) -> NextShotExample:
        """As `sample_example`, from the pool: a random pooled story and target shot."""
        story = self.story(seed)
        return self.get(story, target_shot(seed, story, pronoun_share))

    @torch.no_grad()
    def image_example(self, seed: int) -> NextShotExample:
        """As `sample_image_example`, from the pool: the opening frame of a pooled shot that names
        its character, without context. Only that frame is encoded, unless the whole example is
        already (frame 0 is encoded alone either way, so both give the same latent)."""
        story = self.story(seed)
        k = named_shot(seed, story)
        key = (story.seed, k)
        if key in self.encoded:
            e = self.encoded[key]
            latent, boxes = e.latents[0][:1], e.target_boxes[:1]
        else:
            if key not in self.first_frames:
                frames, boxes = render_shot(story, k, self.cfg.video)
                latent = self.autoencoder.encode_image(to_model_video(frames[:1], self.device))[:, 0]
                self.first_frames[key] = latent.cpu(), boxes[:1]
            latent, boxes = self.first_frames[key]
        return encoded_example(story, k, [], boxes, (latent, latent[:0]), self.cfg)


@dataclass
class NextShotBatch:
    """A batch on the model's device. Conditional frames are padded to the budget C.

    target: latents [B, F, C, h, w]; context: [B, C, C, h, w] with context_valid [B, C] bool.
    text / text_mask: text-encoder states of C + 1 caption slots [B, C+1, L, Dt] / [B, C+1, L]:
    slot i < C is the caption of conditional frame i's shot, slot C the target's.
    """

    target: torch.Tensor
    context: torch.Tensor
    context_valid: torch.Tensor
    context_shots: torch.Tensor
    text: torch.Tensor
    text_mask: torch.Tensor
    shot: torch.Tensor  # [B] target shot index
    loss_weight: torch.Tensor | None = None  # [B, F, h, w] per latent cell (character_weight), or None

    @property
    def budget(self) -> int:
        return self.context.shape[1]

    def conditioning(self, chunk_frames: int, text: torch.Tensor | None = None,
                     text_mask: torch.Tensor | None = None) -> NextShotConditioning:
        """The batch as every next-shot model reads it: context frames i < C in caption slot i,
        the target in slot C (its caption replaced by `text` / `text_mask` if given: text
        dropout). Read bidirectionally by conditioning.next_shot_velocity (teacher, critic, real
        score, ODE pairs), by teacher forcing (ode.py) and, embedded, by the self-forcing rollout."""
        C = self.budget
        return NextShotConditioning(
            self.context, self.context_shots, torch.arange(C, device=self.context.device).expand(len(self.shot), -1),
            self.text if text is None else text, self.text_mask if text_mask is None else text_mask,
            target_slot=C, shot=self.shot, chunk_frames=chunk_frames, context_valid=self.context_valid,
            text_embedded=False)


@torch.no_grad()
def collate(examples: list[NextShotExample], autoencoder, text_encoder, cfg: ShotStreamConfig, device,
            context_dropout: float = 0.0, rng: np.random.Generator | None = None,
            character_loss_weight: float = 1.0, budget: int | None = None) -> NextShotBatch:
    """Encode pixels with the autoencoder and captions with the text encoder; pad the context to
    `budget` frames (default: the model's context_frames; 0 for examples without context).
    character_loss_weight > 1 adds the per-cell `loss_weight` of `character_weight`."""
    C = cfg.model.context_frames if budget is None else budget
    h, w = cfg.video.latent_size
    # Examples not encoded yet (all but a StoryPool's): their targets in one batched call.
    fresh = [e for e in examples if e.latents is None]
    encoded = iter(autoencoder.encode(torch.stack([to_model_video(e.target, device) for e in fresh])) if fresh else [])
    latents = [e.latents or (next(encoded), encode_context(e, autoencoder, device)) for e in examples]
    target = torch.stack([t.to(device) for t, _ in latents])
    context = torch.zeros(len(examples), C, cfg.video.latent_channels, h, w, device=device)
    valid = torch.zeros(len(examples), C, dtype=torch.bool, device=device)
    shots = torch.zeros(len(examples), C, dtype=torch.long, device=device)
    captions = []
    for b, (e, (_, frames)) in enumerate(zip(examples, latents)):
        n = len(e.context_shots)
        drop = context_dropout > 0 and rng is not None and rng.random() < context_dropout
        if n:
            context[b, :n] = frames.to(device)
            valid[b, :n] = not drop
            shots[b, :n] = torch.tensor(e.context_shots, device=device)
        own = story_caption(e.story, e.shot)
        captions += [story_caption(e.story, s) for s in e.context_shots] + [own] * (C + 1 - n)
    states, mask = text_encoder.encode(captions)
    states, mask = states.to(device), mask.to(device)
    L, D = states.shape[1:]
    return NextShotBatch(
        target=target,
        context=context,
        context_valid=valid,
        context_shots=shots,
        text=states.reshape(len(examples), C + 1, L, D),
        text_mask=mask.reshape(len(examples), C + 1, L),
        shot=torch.tensor([e.shot for e in examples], device=device),
        loss_weight=None if character_loss_weight == 1.0 else torch.from_numpy(np.stack(
            [character_weight(e.target_boxes, cfg, character_loss_weight) for e in examples])).to(device),
    )

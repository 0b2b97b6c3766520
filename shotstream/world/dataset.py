"""StoryWorld data for training and evaluation, and the seed streams that keep them apart.

Seeds: the evaluation suite uses story seeds 0..49 (EVAL_SEEDS), the long suite (20-shot stories,
for memory that must stay flat over many shots) seeds 100..103; training story i uses seed
TRAIN_SEED_OFFSET + i (>= 1_000_000). They never overlap, so a model is never judged on a story
it trained on.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from shotstream.config import VideoConfig
from shotstream.world.render import render_story
from shotstream.world.storage import load_stories, save_stories
from shotstream.world.story import Story, sample_story

TRAIN_SEED_OFFSET = 1_000_000
EVAL_SEEDS = range(0, 50)
EVAL_MIN_SHOTS, EVAL_MAX_SHOTS = 3, 6
EVAL_SUITE_PATH = Path(__file__).parent / "data" / "eval_suite.json"
LONG_SEEDS, LONG_SHOTS = range(100, 104), 20
LONG_SUITE_PATH = Path(__file__).parent / "data" / "long_suite.json"


@dataclass
class RenderedStory:
    story: Story
    frames: list[np.ndarray]  # per shot: uint8 [F, H, W, 3]
    boxes: list[np.ndarray]  # per shot: float32 [F, n_chars, 4], x0 y0 x1 y1 in pixels

    @classmethod
    def from_story(cls, story: Story, video_cfg: VideoConfig | None = None) -> "RenderedStory":
        shots = render_story(story, video_cfg)
        return cls(story, [f for f, _ in shots], [b for _, b in shots])


def training_seed(index: int) -> int:
    """Seed of training story `index` (0, 1, 2, ...)."""
    if index < 0:
        raise ValueError(f"training story index must be >= 0, got {index}")
    return TRAIN_SEED_OFFSET + index


def training_stories(
    start: int = 0,
    stop: int | None = None,
    *,
    step: int = 1,
    video_cfg: VideoConfig | None = None,
    render_frames: bool = True,
    **sample_kwargs,
) -> Iterator[RenderedStory | Story]:
    """Training stories start, start+step, ... (< stop, or forever if stop is None), rendered on
    the fly (~2000 frames/s at 128x128 on one core). Deterministic: story i is always the same.
    Shard across workers with start=worker_id, step=num_workers. sample_kwargs go to
    sample_story (num_shots, min_shots, max_shots, pronoun_prob, ...). With render_frames=False
    it yields bare Story objects (captions and labels only)."""
    cfg = video_cfg or VideoConfig()
    sample_kwargs.setdefault("frames_per_shot", cfg.frames_per_shot)
    indices = itertools.count(start, step) if stop is None else range(start, stop, step)
    for i in indices:
        story = sample_story(training_seed(i), **sample_kwargs)
        yield RenderedStory.from_story(story, cfg) if render_frames else story


def build_eval_suite(frames_per_shot: int | None = None) -> list[Story]:
    """The fixed evaluation suite: 50 stories of 3-6 shots from seeds 0..49."""
    return [
        sample_story(seed, min_shots=EVAL_MIN_SHOTS, max_shots=EVAL_MAX_SHOTS, frames_per_shot=frames_per_shot)
        for seed in EVAL_SEEDS
    ]


def build_long_suite(frames_per_shot: int | None = None) -> list[Story]:
    """The long suite: 4 stories of 20 shots from seeds 100..103."""
    return [sample_story(seed, num_shots=LONG_SHOTS, frames_per_shot=frames_per_shot) for seed in LONG_SEEDS]


def write_eval_suite(path=EVAL_SUITE_PATH, long: bool = False) -> Path:
    return save_stories(path, build_long_suite() if long else build_eval_suite())


def load_eval_suite(path=EVAL_SUITE_PATH) -> list[Story]:
    """The committed suite file (regenerate with `shotstream world suite`)."""
    return load_stories(path)


def load_long_suite(path=LONG_SUITE_PATH) -> list[Story]:
    """The committed long suite file (regenerate with `shotstream world suite --long`)."""
    return load_stories(path)

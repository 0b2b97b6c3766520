"""StoryWorld: procedural multi-shot stories with ground-truth labels, for the tiny preset.

    story = sample_story(seed=3)                   # captions + labels, deterministic by seed
    frames, boxes = render_shot(story, 0)          # uint8 [F, H, W, 3], float32 [F, n_chars, 4]
    for item in training_stories(0, 1000): ...     # rendered training stories (seeds >= 1_000_000)
    suite = load_eval_suite()                      # the fixed 50-story evaluation suite (seeds 0..49)
"""

from shotstream.world.dataset import (
    EVAL_SEEDS,
    EVAL_SUITE_PATH,
    TRAIN_SEED_OFFSET,
    RenderedStory,
    build_eval_suite,
    load_eval_suite,
    training_seed,
    training_stories,
    write_eval_suite,
)
from shotstream.world.render import render_shot, render_story
from shotstream.world.storage import StoryFormatError, load_stories, parse_stories, save_stories
from shotstream.world.story import Character, Shot, ShotLabels, Story, make_caption, sample_story
from shotstream.world.vocab import ACTIONS, COLOURS, FRAMINGS, PATTERNS, SCENES, SHAPES

__all__ = [
    "ACTIONS", "COLOURS", "FRAMINGS", "PATTERNS", "SCENES", "SHAPES",
    "Character", "Shot", "ShotLabels", "Story", "StoryFormatError", "RenderedStory",
    "sample_story", "make_caption", "render_shot", "render_story",
    "save_stories", "load_stories", "parse_stories",
    "TRAIN_SEED_OFFSET", "EVAL_SEEDS", "EVAL_SUITE_PATH", "training_seed", "training_stories",
    "build_eval_suite", "write_eval_suite", "load_eval_suite",
]  # fmt: skip

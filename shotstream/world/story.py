"""Stories: a global caption plus shots, each with a caption and ground-truth labels.

`sample_story(seed)` draws a whole story from one seed. The main character persists across
the story (identity across shots is what the global context cache must carry); scenes,
framings and actions change; about 30% of the later shots refer to the main character only
by a pronoun, so its identity has to be recalled from earlier shots.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from shotstream.config import VideoConfig
from shotstream.world import vocab


@dataclass(frozen=True)
class Character:
    """A character's identity: what must stay the same from shot to shot."""

    shape: str
    colour: str
    pattern: str

    def describe(self, rng: np.random.Generator | None = None) -> str:
        """'red striped star'; with an rng, synonyms are drawn (canonical words ~2/3 of the time)."""
        words = (vocab.COLOUR_WORDS[self.colour], vocab.PATTERN_WORDS[self.pattern], vocab.SHAPE_WORDS[self.shape])
        return " ".join(_pick(rng, w) for w in words)


@dataclass(frozen=True)
class ShotLabels:
    """Ground truth of one shot. characters[0] is the main character (the story's protagonist)."""

    characters: tuple[Character, ...]
    scene: str
    framing: str
    action: str  # the main character's action; a second character, if any, stands idle
    pronoun: bool  # the caption refers to the main character only as "it" / "the same character"

    @property
    def main(self) -> Character:
        return self.characters[0]


@dataclass
class Shot:
    caption: str
    num_frames: int = field(default_factory=lambda: VideoConfig().frames_per_shot)
    labels: ShotLabels | None = None  # None for caption-only stories (the official test format)


@dataclass
class Story:
    shots: list[Shot]
    global_caption: str | None = None
    seed: int | None = None  # the sampling seed; also seeds the rendered backgrounds

    @property
    def num_shots(self) -> int:
        return len(self.shots)

    @property
    def captions(self) -> list[str]:
        return [s.caption for s in self.shots]

    @property
    def has_labels(self) -> bool:
        return all(s.labels is not None for s in self.shots)

    @property
    def main_character(self) -> Character | None:
        return self.shots[0].labels.main if self.shots and self.shots[0].labels else None


# ---------------------------------------------------------------------------------------------
# Sampling


def _pick(rng: np.random.Generator | None, options, canonical_p: float = 2 / 3):
    """First option without an rng; with one, the first with probability canonical_p, else any other."""
    if rng is None or len(options) == 1:
        return options[0]
    if rng.random() < canonical_p:
        return options[0]
    return options[int(rng.integers(1, len(options)))]


def _choice(rng: np.random.Generator, options, exclude=()):
    options = [o for o in options if o not in exclude]
    return options[int(rng.integers(len(options)))]


def sample_character(rng: np.random.Generator, unlike: Character | None = None) -> Character:
    """A random identity; with `unlike`, one that differs from it in shape, colour and pattern
    (so naming a companion never says a word that also describes the main character)."""
    return Character(
        shape=_choice(rng, vocab.SHAPES, (unlike.shape,) if unlike else ()),
        colour=_choice(rng, vocab.COLOURS, (unlike.colour,) if unlike else ()),
        pattern=_choice(rng, vocab.PATTERNS, (unlike.pattern,) if unlike else ()),
    )


def with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def make_caption(labels: ShotLabels, rng: np.random.Generator) -> str:
    """A caption for `labels` from one of several templates, with synonyms drawn from rng."""
    if labels.pronoun:
        subject = vocab.PRONOUNS[int(rng.integers(len(vocab.PRONOUNS)))]
    else:
        subject = with_article(labels.main.describe(rng))
        if rng.random() < 0.25:
            subject += " creature"
    verb = _pick(rng, vocab.ACTION_VERBS[labels.action], 0.5)
    gerund = _pick(rng, vocab.ACTION_GERUNDS[labels.action], 0.5)
    scene = _pick(rng, vocab.SCENE_WORDS[labels.scene], 0.5)
    framing = _pick(rng, vocab.FRAMING_WORDS[labels.framing])
    companion = ""
    if len(labels.characters) > 1:
        other = with_article(labels.characters[1].describe(rng))
        companion = " " + _choice(rng, ("next to {}", "beside {}", "while {} watches")).format(other)

    template = int(rng.integers(4))
    if template == 0:  # "a red striped star walks to the left in a snowy field, wide shot"
        caption = f"{subject} {verb}{companion} {scene}, {framing}"
    elif template == 1:  # "close-up of the same character spinning on the beach"
        caption = f"{framing} of {subject} {gerund}{companion} {scene}"
    elif template == 2:  # "in the desert, it spins, close-up"
        caption = f"{scene}, {subject} {verb}{companion}, {framing}"
    else:  # "medium shot: the creature bounces under the sea"
        caption = f"{framing}: {subject} {verb}{companion} {scene}"
    return caption


def sample_story(
    seed: int,
    num_shots: int | None = None,
    *,
    min_shots: int = 2,
    max_shots: int = 6,
    frames_per_shot: int | None = None,
    pronoun_prob: float = 0.3,
    keep_scene_prob: float = 0.4,
    second_character_prob: float = 0.2,
    global_caption_prob: float = 0.5,
) -> Story:
    """Draw a story deterministically from `seed` (same seed, same story, on any machine).

    num_shots: fixed shot count, else uniform in [min_shots, max_shots].
    pronoun_prob: chance that a shot after the first names the main character only by a pronoun
        (the first shot always names it fully).
    keep_scene_prob: chance that a shot keeps the previous scene; it then gets a new framing.
    second_character_prob: chance of a second, idle character (wide and medium shots only, so
        both fit in frame).
    """
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    frames = VideoConfig().frames_per_shot if frames_per_shot is None else frames_per_shot
    check_num_frames(frames, "frames_per_shot")
    rng = np.random.default_rng([int(seed), 0x5707])
    if num_shots is None:
        if not 1 <= min_shots <= max_shots:
            raise ValueError(f"need 1 <= min_shots <= max_shots, got {min_shots}, {max_shots}")
        num_shots = int(rng.integers(min_shots, max_shots + 1))
    if num_shots < 1:
        raise ValueError(f"a story needs at least one shot, got num_shots={num_shots}")

    main = sample_character(rng)
    shots: list[Shot] = []
    prev: ShotLabels | None = None
    for k in range(num_shots):
        if prev is not None and rng.random() < keep_scene_prob:
            scene = prev.scene
            framing = _choice(rng, vocab.FRAMINGS, exclude=(prev.framing,))
        else:
            scene = _choice(rng, vocab.SCENES, exclude=(prev.scene,) if prev else ())
            framing = _choice(rng, vocab.FRAMINGS)
        characters = (main,)
        if framing != "close_up" and rng.random() < second_character_prob:
            characters = (main, sample_character(rng, unlike=main))
        labels = ShotLabels(
            characters=characters,
            scene=scene,
            framing=framing,
            action=_choice(rng, vocab.ACTIONS),
            pronoun=k > 0 and bool(rng.random() < pronoun_prob),
        )
        shots.append(Shot(caption=make_caption(labels, rng), num_frames=frames, labels=labels))
        prev = labels

    global_caption = None
    if rng.random() < global_caption_prob:
        global_caption = _choice(rng, vocab.GLOBAL_CAPTIONS).format(n=num_shots)
    return Story(shots=shots, global_caption=global_caption, seed=int(seed))


def check_num_frames(n, where: str, temporal_stride: int = 4) -> int:
    """A shot's frame count must be 4k+1 (the causal autoencoder encodes frame 0 alone)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise ValueError(f"{where}: frame count must be an integer, got {n!r}")
    if n < 1 or (n - 1) % temporal_stride:
        raise ValueError(f"{where}: frame count must be {temporal_stride}k+1 (1, 5, ..., 33, ...), got {n}")
    return int(n)

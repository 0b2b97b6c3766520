"""StoryWorld stories changed in one respect, the probes of the experiments: the main character
recast (`with_main`), found in a caption (`description_pattern`), or named where a caption says
"it" (`named_caption`, `named_story_caption`)."""

from __future__ import annotations

import dataclasses
import re

from shotstream.training.data import story_caption
from shotstream.world import vocab
from shotstream.world.story import Character, Story, with_article


def with_main(story: Story, **traits: str) -> Story:
    """`story` whose main character has `traits` (shape=, colour=, pattern=) in every shot's labels
    (so in every render); captions, seed and everything else unchanged."""
    main = story.main_character
    recast = dataclasses.replace(main, **traits)
    shots = [dataclasses.replace(s, labels=dataclasses.replace(
        s.labels, characters=tuple(recast if c == main else c for c in s.labels.characters))) for s in story.shots]
    return dataclasses.replace(story, shots=shots)


def description_pattern(character: Character) -> re.Pattern:
    """The phrase a caption names `character` with ("a red striped star", any synonyms); group 1
    is its article ("a", "an", "A", "An"), None without one."""
    words = (vocab.COLOUR_WORDS[character.colour], vocab.PATTERN_WORDS[character.pattern], vocab.SHAPE_WORDS[character.shape])
    return re.compile(r"\b(?:((?i:an?)) )?" + " ".join("(?:" + "|".join(map(re.escape, sorted(w, key=len, reverse=True))) + ")"
                                                     for w in words) + r"\b")


def named_caption(caption: str, character: Character) -> str:
    """A pronoun caption with its pronoun replaced by the character's canonical description
    ("in the desert, it spins" -> "in the desert, a red striped star spins"): the same shot told
    as a named one. A caption without a pronoun is returned as it is."""
    for pronoun in sorted(vocab.PRONOUNS, key=len, reverse=True):  # "the same creature" before "it"
        named, n = re.subn(rf"\b{re.escape(pronoun)}\b", with_article(character.describe()), caption, count=1)
        if n:
            return named
    return caption


def named_story_caption(story: Story, k: int) -> str:
    """What the model reads for shot k (data.story_caption), its "it" told as the main character."""
    shot = story.shots[k]
    return story_caption(story, k, named_caption(shot.caption, shot.labels.main))

"""Does `inter_shot_identity` measure the character? Rendered stories with known answers.

Each evaluation story is re-rendered in variants that change only the character or only the
scenes, and scored like any method (the in-domain CLIP, the character localiser):

    consistent              its own character in every shot, every shot in another scene
    swapped, same scene     another character from shot 2 on, every shot in the first shot's scene
    swapped, across scenes  another character from shot 2 on, every shot in another scene
    colour changed          the story's own scenes, the character's colour changed from shot 2 on
    shape changed           the story's own scenes, the character's shape changed from shot 2 on

A metric of the character must rank consistent > swapped, same scene > swapped, across scenes
(the scene may help a little, the character must matter more) and the story above its
recoloured version; a whole-frame cosine (`scene_similarity`) ranks the swapped story in one
scene first. (The in-domain CLIP's crops barely see a change of shape alone: the table shows it.) `tests/test_identity.py` checks the ordering; `python -m benchmark.identity_check`
prints the table (benchmark/README.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import numpy as np

from shotstream import paths
from shotstream.world import vocab
from shotstream.world.story import Story, sample_character

VARIANTS = ("consistent", "swapped, same scene", "swapped, across scenes", "colour changed", "shape changed")


def _recast(story: Story, *, character=None, scenes=None) -> Story:
    """`story` whose main character is `character` from shot 2 on (when given) and whose shot k is
    in scenes[k] (when given); captions, framings, actions and seed unchanged."""
    main = story.main_character
    shots = []
    for k, shot in enumerate(story.shots):
        lab = shot.labels
        chars = lab.characters
        if character is not None and k >= 1:
            chars = (character, *chars[1:])
        shots.append(dataclasses.replace(shot, labels=dataclasses.replace(
            lab, characters=chars, scene=scenes[k] if scenes is not None else lab.scene)))
    return dataclasses.replace(story, shots=shots)


def variants(story: Story) -> dict[str, Story]:
    """The VARIANTS of a labelled story (deterministic in its seed)."""
    rng = np.random.default_rng([story.seed or 0, 0x1D])
    main = story.main_character
    other = sample_character(rng, unlike=main)  # differs in shape, colour and pattern
    first = vocab.SCENES.index(story.shots[0].labels.scene)
    distinct = [vocab.SCENES[(first + k) % len(vocab.SCENES)] for k in range(story.num_shots)]
    same = [vocab.SCENES[first]] * story.num_shots
    return {
        "consistent": _recast(story, scenes=distinct),
        "swapped, same scene": _recast(story, character=other, scenes=same),
        "swapped, across scenes": _recast(story, character=other, scenes=distinct),
        "colour changed": _recast(story, character=dataclasses.replace(main, colour=other.colour)),
        "shape changed": _recast(story, character=dataclasses.replace(main, shape=other.shape)),
    }


def score_variants(stories, clip, localiser, metrics=("inter_shot_identity", "scene_similarity"),
                   frames_per_shot: int | None = None) -> dict:
    """{variant: {metric: mean over the stories' shots}}, plus {"story": ...} for the stories as
    rendered (the reference of the degraded variants). frames_per_shot (4k+1) re-times every shot
    shorter: the same story, cheaper to render and embed (the tests use 9)."""
    from benchmark.metrics import StoryOutput, get_metrics, score_story
    from benchmark.probe import shot_labels
    from shotstream.world import render_shot

    scored: dict[str, dict[str, list[float]]] = {}
    for story in stories:
        if frames_per_shot is not None:
            story = dataclasses.replace(story, shots=[dataclasses.replace(s, num_frames=frames_per_shot) for s in story.shots])
        for name, s in {"story": story, **variants(story)}.items():
            out = StoryOutput(name, s.captions, [render_shot(s, k)[0] for k in range(s.num_shots)],
                              [shot_labels(shot.labels) for shot in s.shots])
            for row in score_story(out, get_metrics(list(metrics)), clip=clip, localiser=localiser):
                scored.setdefault(name, {}).setdefault(row.metric, []).append(row.value)
    return {name: {m: float(np.mean(v)) for m, v in per.items()} for name, per in scored.items()}


def main(argv: list[str] | None = None) -> int:
    from benchmark.clip import load_clip
    from benchmark.localiser import load_localiser
    from shotstream.world import load_eval_suite

    parser = argparse.ArgumentParser(prog="python -m benchmark.identity_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stories", type=int, default=12, help="first N stories of the evaluation suite")
    parser.add_argument("--frames-per-shot", type=int, default=None, help="re-time every shot to N frames (4k+1; cheaper)")
    parser.add_argument("--clip", default=str(paths.CLIP_TINY))
    parser.add_argument("--localiser", default=str(paths.LOCALISER))
    args = parser.parse_args(argv)
    try:
        table = score_variants(load_eval_suite()[: args.stories], load_clip(args.clip), load_localiser(args.localiser),
                               frames_per_shot=args.frames_per_shot)
    except (ValueError, OSError) as e:
        print(f"identity_check: error: {e}", file=sys.stderr)
        return 2
    frames = f", {args.frames_per_shot} frames a shot" if args.frames_per_shot else ""
    print(f"{args.stories} evaluation stories{frames}, mean over shots 2..n:\n")
    print("| variant | inter_shot_identity | scene_similarity |\n|---|---|---|")
    for name, per in table.items():
        print(f"| {name} | {per['inter_shot_identity']:.3f} | {per['scene_similarity']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

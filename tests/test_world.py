"""StoryWorld: determinism, labels that agree with pixels, caption statistics, story files."""

import json
import re

import numpy as np
import pytest

from shotstream.cli import main as cli_main
from shotstream.config import VideoConfig
from shotstream.world import (
    ACTIONS,
    COLOURS,
    EVAL_SEEDS,
    FRAMINGS,
    PATTERNS,
    SCENES,
    SHAPES,
    TRAIN_SEED_OFFSET,
    Character,
    Shot,
    ShotLabels,
    Story,
    StoryFormatError,
    build_eval_suite,
    load_eval_suite,
    load_stories,
    render_shot,
    render_story,
    sample_story,
    save_stories,
    training_stories,
)
from shotstream.world import vocab
from shotstream.world.render import OUTLINE_RGB
from shotstream.world.story import make_caption


def words_in(caption: str, words) -> list[str]:
    return [w for w in words if re.search(rf"\b{re.escape(w)}\b", caption)]


def one_shot_story(shape="circle", colour="red", pattern="solid", scene="beach", framing="wide",
                   action="stay", companion=None, seed=5, frames=9):
    chars = (Character(shape, colour, pattern),) + ((companion,) if companion else ())
    labels = ShotLabels(chars, scene, framing, action, False)
    return Story([Shot(make_caption(labels, np.random.default_rng(0)), frames, labels)], seed=seed)


@pytest.fixture(scope="module")
def many_stories():
    return [sample_story(TRAIN_SEED_OFFSET + i) for i in range(400)]


# ---------------------------------------------------------------------------------------------
# Determinism


def test_same_seed_same_story_and_frames():
    a, b = sample_story(12345), sample_story(12345)
    assert a == b
    fa, ba = render_shot(a, a.num_shots - 1)
    fb, bb = render_shot(b, b.num_shots - 1)
    assert np.array_equal(fa, fb) and np.array_equal(ba, bb, equal_nan=True)


def test_different_seeds_differ():
    a, b = sample_story(1), sample_story(2)
    assert a.captions != b.captions
    assert not np.array_equal(render_shot(a, 0)[0], render_shot(b, 0)[0])


def test_vocabulary_is_rich_enough():
    assert len(SHAPES) >= 5 and len(COLOURS) >= 6 and len(PATTERNS) >= 3
    assert len(SCENES) >= 6 and len(ACTIONS) >= 6 and FRAMINGS == ("wide", "medium", "close_up")
    # colours well separated (identity must survive compression)
    rgb = np.array([vocab.COLOUR_RGB[c] for c in COLOURS], float)
    dist = np.linalg.norm(rgb[:, None] - rgb[None], axis=-1) + np.eye(len(COLOURS)) * 1e9
    assert dist.min() > 90


def test_no_phrase_leaks_an_identity_word():
    identity = {w for table in (vocab.SHAPE_WORDS, vocab.COLOUR_WORDS, vocab.PATTERN_WORDS) for ws in table.values() for w in ws}
    phrases = [p for table in (vocab.SCENE_WORDS, vocab.FRAMING_WORDS, vocab.ACTION_VERBS, vocab.ACTION_GERUNDS)
               for ps in table.values() for p in ps] + list(vocab.PRONOUNS) + list(vocab.GLOBAL_CAPTIONS)
    leaks = [(p, w) for p in phrases for w in words_in(p, identity)]
    assert not leaks


# ---------------------------------------------------------------------------------------------
# Story structure and captions


def test_main_character_persists_and_first_shot_names_it(many_stories):
    for story in many_stories[:100]:
        main = story.main_character
        assert all(s.labels.main == main for s in story.shots)
        first = story.shots[0]
        assert not first.labels.pronoun
        assert words_in(first.caption, vocab.SHAPE_WORDS[main.shape])
        assert words_in(first.caption, vocab.COLOUR_WORDS[main.colour])
        assert words_in(first.caption, vocab.PATTERN_WORDS[main.pattern])


def test_pronoun_rate_and_pronoun_captions_never_name_the_character(many_stories):
    later = [(st, s) for st in many_stories for s in st.shots[1:]]
    rate = np.mean([s.labels.pronoun for _, s in later])
    assert 0.25 <= rate <= 0.35, rate
    for story, shot in later:
        main = shot.labels.main
        named = words_in(shot.caption, vocab.identity_words(main.shape, main.colour, main.pattern))
        if shot.labels.pronoun:
            assert not named, shot.caption
            assert words_in(shot.caption, vocab.PRONOUNS), shot.caption
        else:
            assert words_in(shot.caption, vocab.SHAPE_WORDS[main.shape]), shot.caption


def test_scenes_change_and_kept_scenes_get_a_new_framing(many_stories):
    pairs = [(a.labels, b.labels) for st in many_stories for a, b in zip(st.shots, st.shots[1:])]
    kept = [(a, b) for a, b in pairs if a.scene == b.scene]
    assert 0.25 < len(kept) / len(pairs) < 0.6
    assert all(a.framing != b.framing for a, b in kept)
    seen = {(lab.scene, lab.framing, lab.action) for st in many_stories for lab in (s.labels for s in st.shots)}
    assert {s for s, _, _ in seen} == set(SCENES) and {a for _, _, a in seen} == set(ACTIONS)


def test_second_character_differs_from_main_and_never_in_close_up(many_stories):
    duos = [s.labels for st in many_stories for s in st.shots if len(s.labels.characters) == 2]
    assert len(duos) > 50
    for lab in duos:
        main, other = lab.characters
        assert other.shape != main.shape and other.colour != main.colour and other.pattern != main.pattern
        assert lab.framing != "close_up"


def test_captions_vary_in_wording(many_stories):
    captions = [s.caption for st in many_stories for s in st.shots]
    assert len(set(captions)) > 0.95 * len(captions)
    starts = {c.split()[0] for c in captions}
    assert len(starts) >= 8  # several templates, not one sentence frame
    assert any(c.startswith("close-up of") for c in captions)
    assert all(c == c.strip() and "  " not in c for c in captions)
    assert not any(re.search(r"\ba [aeiou]", c) for c in captions)  # "an amber", not "a amber"


def test_num_shots_and_frames():
    story = sample_story(7, num_shots=4, frames_per_shot=17)
    assert story.num_shots == 4 and all(s.num_frames == 17 for s in story.shots)
    assert 2 <= sample_story(8).num_shots <= 6
    with pytest.raises(ValueError, match="4k\\+1"):
        sample_story(7, frames_per_shot=16)
    with pytest.raises(ValueError, match="at least one shot"):
        sample_story(7, num_shots=0)


# ---------------------------------------------------------------------------------------------
# Rendering: labels agree with pixels


def test_render_shapes_and_config():
    story = sample_story(3, num_shots=2, frames_per_shot=9)
    cfg = VideoConfig(height=96, width=160, fps=8, frames_per_shot=9)
    shots = render_story(story, cfg)
    assert len(shots) == 2
    for (frames, boxes), shot in zip(shots, story.shots):
        assert frames.shape == (9, 96, 160, 3) and frames.dtype == np.uint8
        assert boxes.shape == (9, len(shot.labels.characters), 4) and boxes.dtype == np.float32
        assert not np.isnan(boxes).any()
        assert (boxes[..., 0] >= 0).all() and (boxes[..., 2] <= 160).all() and (boxes[..., 3] <= 96).all()


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_boxes_contain_the_characters_colour(seed):
    story = sample_story(TRAIN_SEED_OFFSET + 77 * seed, frames_per_shot=9)
    for k, (frames, boxes) in enumerate(render_story(story)):
        for ci, char in enumerate(story.shots[k].labels.characters):
            rgb = np.array(vocab.COLOUR_RGB[char.colour], np.uint8)
            for f in (0, 4, 8):
                exact = (frames[f] == rgb).all(-1)  # the renderer paints body colours exactly
                x0, y0, x1, y1 = boxes[f, ci].astype(int)
                inside = exact[y0:y1, x0:x1].sum()
                assert inside >= 0.08 * (x1 - x0) * (y1 - y0), (k, ci, f)
                assert inside >= 0.95 * exact.sum(), (k, ci, f)  # and that colour is nowhere else
                # the box is tight: each of its four edges touches the character's dark outline
                outline = (frames[f, y0:y1, x0:x1] == np.array(OUTLINE_RGB, np.uint8)).all(-1)
                assert outline[0].any() and outline[-1].any() and outline[:, 0].any() and outline[:, -1].any()


def test_framing_orders_character_size():
    sizes = {}
    for framing in FRAMINGS:
        _, boxes = render_shot(one_shot_story(framing=framing), 0)
        sizes[framing] = np.median(boxes[:, 0, 2] - boxes[:, 0, 0])
    assert sizes["wide"] < sizes["medium"] < sizes["close_up"]
    assert sizes["wide"] >= 18 and sizes["medium"] >= 40 and sizes["close_up"] >= 70


def test_actions_move_the_box():
    def centres(action):
        _, boxes = render_shot(one_shot_story(action=action, frames=33), 0)
        return (boxes[:, 0, 0] + boxes[:, 0, 2]) / 2, boxes[:, 0, 3]

    x, _ = centres("walk_left")
    assert x[-1] < x[0] - 30
    x, _ = centres("walk_right")
    assert x[-1] > x[0] + 30
    _, bottom = centres("jump")
    assert bottom.min() < bottom[0] - 15 and abs(bottom[-1] - bottom[0]) <= 2
    x, bottom = centres("stay")
    assert np.ptp(x) <= 2 and np.ptp(bottom) <= 2


def test_identity_is_visible_in_pixels():
    """Different patterns and shapes give different pixels for the same scene and pose."""
    base = render_shot(one_shot_story(), 0)[0]
    for change in ({"pattern": "striped"}, {"pattern": "dotted"}, {"shape": "square"}, {"colour": "blue"}):
        other = render_shot(one_shot_story(**change), 0)[0]
        assert (base != other).any(-1).sum() > 40, change


def test_caption_only_story_cannot_be_rendered():
    story = Story([Shot("a cat on a mat", 33, None)])
    with pytest.raises(ValueError, match="shot 0 has no labels"):
        render_shot(story, 0)


def test_training_stories_are_deterministic_and_disjoint_from_eval():
    a = list(training_stories(0, 3, video_cfg=VideoConfig(frames_per_shot=5)))
    b = list(training_stories(2, 3, video_cfg=VideoConfig(frames_per_shot=5)))
    assert a[2].story == b[0].story and np.array_equal(a[2].frames[0], b[0].frames[0])
    assert [item.story.seed for item in a] == [TRAIN_SEED_OFFSET + i for i in range(3)]
    assert a[0].frames[0].shape == (5, 128, 128, 3) and len(a[0].boxes) == a[0].story.num_shots
    shard = [s.seed for s in training_stories(1, 9, step=4, render_frames=False)]
    assert shard == [TRAIN_SEED_OFFSET + 1, TRAIN_SEED_OFFSET + 5]
    assert max(EVAL_SEEDS) < TRAIN_SEED_OFFSET


# ---------------------------------------------------------------------------------------------
# Story files


def test_save_load_round_trip(tmp_path):
    stories = [sample_story(s) for s in range(5)] + [Story([Shot("just a caption", 13, None)], None, None)]
    path = save_stories(tmp_path / "stories.json", stories)
    assert load_stories(path) == stories


def test_official_format_loads(tmp_path):
    one = {"global_caption": "two friends", "shot1": "a cat sits", "shot2": "the cat jumps"}
    path = tmp_path / "official.json"
    path.write_text(json.dumps(one))
    (story,) = load_stories(path)
    assert story.global_caption == "two friends" and story.captions == ["a cat sits", "the cat jumps"]
    assert all(s.labels is None and s.num_frames == 33 for s in story.shots) and story.seed is None

    many = [{"shot%d" % n: f"caption {n}" for n in range(1, 12)}, {"global_caption": "g", "shot1": "x"}]
    path.write_text(json.dumps(many))
    stories = load_stories(path, frames_per_shot=21)
    assert stories[0].captions == [f"caption {n}" for n in range(1, 12)]  # numeric order: shot10 after shot9
    assert stories[0].global_caption is None and stories[1].shots[0].num_frames == 21


def _bad(tmp_path, data, name="bad.json"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def _own(shot_overrides=None, label_overrides=None, **story_overrides):
    story = json.loads(json.dumps({"format": "shotstream.world/stories-v1", "stories": [
        {"seed": 1, "global_caption": None, "shots": [{"caption": "a red solid circle", "num_frames": 33, "labels": {
            "characters": [{"shape": "circle", "colour": "red", "pattern": "solid"}],
            "scene": "beach", "framing": "wide", "action": "jump", "pronoun": False}}]}]}))
    story["stories"][0]["shots"][0].update(shot_overrides or {})
    story["stories"][0]["shots"][0]["labels"].update(label_overrides or {})
    story["stories"][0].update(story_overrides)
    return story


@pytest.mark.parametrize("data, message", [
    (_own(label_overrides={"scene": "jungle"}),
     r"bad\.json: stories\[0\]\.shots\[0\]\.labels\.scene: unknown scene 'jungle'; expected one of forest"),
    (_own(label_overrides={"characters": [{"shape": "circle", "colour": "redd", "pattern": "solid"}]}),
     r"bad\.json: stories\[0\]\.shots\[0\]\.labels\.characters\[0\]\.colour: unknown colour 'redd' \(did you mean 'red'\?\)"),
    (_own(label_overrides={"action": "dance"}), r"labels\.action: unknown action 'dance'"),
    (_own(shots=[]), r"bad\.json: stories\[0\]\.shots: a story needs at least one shot, got zero"),
    ({"global_caption": "nothing else"}, r"bad\.json: story: a story needs at least one shot, got zero"),
    (_own(shot_overrides={"num_frames": 32}), r"bad\.json: stories\[0\]\.shots\[0\]\.num_frames: frame count must be 4k\+1.*got 32"),
    (_own(shot_overrides={"num_frames": -3}), r"shots\[0\]\.num_frames: frame count must be 4k\+1.*got -3"),
    (_own(shot_overrides={"num_frames": "33"}), r"shots\[0\]\.num_frames: frame count must be an integer, got '33'"),
    (_own(shot_overrides={"caption": 5}), r"bad\.json: stories\[0\]\.shots\[0\]\.caption: expected a string, got int"),
    (_own(label_overrides={"pronoun": "no"}), r"labels\.pronoun: expected a boolean, got a string"),
    (_own(seed=-1), r"stories\[0\]\.seed: must be >= 0"),
    (_own(shot_overrides={"captoin": "x"}), r"shots\[0\]\.captoin: unknown field \(did you mean 'caption'\?\)"),
    ({"shot1": "a", "shot3": "c"}, r"bad\.json: shot2: missing"),
    ({"shot1": 7}, r"bad\.json: shot1: expected a string, got int"),
    ({"shot1": "a", "shto2": "b"}, r"bad\.json: shto2: unknown field"),
    ([{"shot1": "a"}, "oops"], r"bad\.json: \[1\]: expected an object, got a string"),
    ("42", r"bad\.json: expected a JSON object or a list of stories, got int"),
    ("[]", r"bad\.json: no stories"),
    ('{"shot1": "a",', r"bad\.json: unreadable JSON \(line 1"),
])  # fmt: skip
def test_bad_story_files_give_one_line_errors(tmp_path, data, message):
    with pytest.raises(StoryFormatError, match=message) as info:
        load_stories(_bad(tmp_path, data))
    assert "\n" not in str(info.value)


def test_missing_story_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.json: story file not found"):
        load_stories(tmp_path / "nope.json")


# ---------------------------------------------------------------------------------------------
# The evaluation suite and the CLI


def test_eval_suite_file():
    suite = load_eval_suite()
    assert len(suite) == 50
    assert sorted(s.seed for s in suite) == list(EVAL_SEEDS)
    for story in suite:
        assert 3 <= story.num_shots <= 6 and story.has_labels
        assert all(s.num_frames == VideoConfig().frames_per_shot for s in story.shots)
    assert sum(s.labels.pronoun for st in suite for s in st.shots) >= 30
    assert suite == build_eval_suite(), "committed suite differs from the sampler: run `shotstream world suite` if intended"


def test_cli_preview_and_check(tmp_path, capsys):
    out = tmp_path / "story.mp4"
    assert cli_main(["world", "preview", "--seed", "3", "--shots", "2", "--frames", "9", "-o", str(out)]) == 0
    assert out.is_file() and out.with_suffix(".png").is_file()
    printed = capsys.readouterr().out
    assert all(c in printed for c in sample_story(3, 2, frames_per_shot=9).captions)
    bad = _bad(tmp_path, {"shot1": "a", "shot3": "c"})
    assert cli_main(["world", "check", str(bad)]) == 2
    assert "shot2: missing" in capsys.readouterr().err


@pytest.mark.parametrize("action", ACTIONS)
def test_one_frame_shot_is_the_opening_frame_of_any_shot(action):
    """Joint image training renders one-frame shots: each must look like frame 0 of a training
    shot (a one-frame jump once showed the take-off squash, never seen at frame 0 of a 2 s jump)."""
    from shotstream.config import get_preset
    from shotstream.world.render import action_poses

    video = get_preset("tiny").video
    alone = action_poses(action, 1, fps=video.fps, size=20.0, max_jump=30.0)
    shot = action_poses(action, video.frames_per_shot, fps=video.fps, size=20.0, max_jump=30.0)
    for key, value in alone.items():
        np.testing.assert_array_equal(value, shot[key][:1], err_msg=f"{action}: {key}")

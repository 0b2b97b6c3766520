"""The experiments (experiments/): the probes of what a next-shot model reads from its earlier
shots, and the teacher's identity losses, on the smoke models."""

import dataclasses
import re

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import run_stage
from shotstream.training.cli import resolve_config


def test_context_use_compares_true_hidden_and_other_context(smoke_models, tmp_path, capsys):
    from experiments import context_use
    from shotstream.world import vocab
    from shotstream.world.dataset import load_eval_suite

    root, ae, teacher = smoke_models
    out = tmp_path / "rows.csv"
    assert context_use.main(["--model", str(teacher), "--autoencoder", str(ae), "--limit", "4",
                             "--sigmas", "0.5,0.9", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert all(f"{c}/true" in table for c in context_use.CONDITIONS[1:])
    rows = pd.read_csv(out)
    stories = load_eval_suite()[:4]
    assert len(rows) == 2 * sum(s.num_shots - 1 for s in stories)  # every shot with a history, each sigma
    assert set(rows["subset"]) <= {"named", "pronoun"} and (rows["model"] == str(teacher)).all()
    seen = rows.dropna(subset=list(context_use.CONDITIONS))
    assert len(seen) and (seen[list(context_use.CONDITIONS)] > 0).all().all()
    drawn = rows[["drawn_true", "drawn_shape", "drawn_context_captions"]].fillna("")  # the shipped shape classifier's reading, "" = unseen
    assert drawn.stack().isin(("", *vocab.SHAPES)).all() and (drawn != "").any().all()
    unseen = drawn["drawn_true"] == ""  # the character is in the first frame or not, whatever the context
    assert (drawn[unseen] == "").all().all() and (drawn[~unseen] != "").all().all()
    colours = rows[["colour_true", "colour_colour", "colour_context_captions"]].astype("string").fillna("")
    assert colours.stack().isin(("", *vocab.COLOURS)).all()
    shares = context_use.summary(rows)[list(context_use.SHAPE_COLUMNS + context_use.COLOUR_COLUMNS)]
    assert shares.stack().dropna().between(0, 1).all()
    assert (shares["drawn_reshaped"] + shares["copied_reshaped"]).le(1).all()
    # the shares, over the shots where the character is in the first frame ("square" follows "circle")
    # ("green" follows "red")
    fake = pd.DataFrame({"subset": "named", "sigma": 0.9, "main_shape": "circle", "main_colour": "red",
                         **{c: 1.0 for c in context_use.CONDITIONS},
                         "drawn_true": ["circle", "circle", "star", ""], "drawn_shape": ["circle", "square", "square", ""],
                         "drawn_context_captions": ["circle", "circle", "circle", ""],
                         "colour_true": ["red", "red", "red", "blue"], "colour_colour": ["red", "green", "green", "blue"],
                         "colour_context_captions": ["red", "red", "red", "red"]})
    fake.loc[3, ["drawn_true", "drawn_shape", "drawn_context_captions"]] = np.nan  # no reading, as read back from a CSV
    row = context_use.summary(fake).iloc[0]
    assert row["shots"] == 4 and list(row[list(context_use.SHAPE_COLUMNS)]) == pytest.approx([2 / 3, 1 / 3, 2 / 3, 2 / 3, 1 / 3])
    assert list(row[list(context_use.COLOUR_COLUMNS)]) == pytest.approx([3 / 4, 2 / 4, 2 / 4, 1 / 4])
    for argv, message in ((["--sigmas", "1.5"], "--sigmas must lie in"), (["--model", str(tmp_path / "none")], "context_use:"),
                          (["--model", str(teacher), "--shape-classifier", str(tmp_path / "none")], "checkpoint folder not found"),
                          (["--limit", "0"], "--limit"), (["--out", str(tmp_path / "no" / "rows.csv")], "does not exist")):
        with pytest.raises(SystemExit) as exit_:
            context_use.main(["--autoencoder", str(ae), *argv])
        assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_true_history_samples_every_shot_in_every_setting(smoke_models, tmp_path, capsys):
    from experiments import true_history
    from shotstream.world.dataset import load_eval_suite

    root, ae, teacher = smoke_models
    out = tmp_path / "rows.csv"
    assert true_history.main(["--model", str(teacher), "--autoencoder", str(ae), "--limit", "2", "--subset", "all",
                              "--steps", "2", "--settings", "1", "3", "3:2", "3:none", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert [line.split()[0] for line in table.splitlines()[2:]] == ["1", "3", "3:2", "3:none"]  # in the order given
    rows = pd.read_csv(out)
    assert len(rows) == 4 * sum(s.num_shots - 1 for s in load_eval_suite()[:2])  # every shot with a history, each setting
    assert set(rows["setting"]) == {"1", "3", "3:2", "3:none"}
    accuracies = rows[[f"{k}_acc" for k in true_history.LABELS]]
    assert accuracies.isin([0.0, 1.0]).all().all()
    for argv, message in ((["--settings", "1:2"], "needs guidance on the caption"), (["--settings", "x"], "is not S"),
                          (["--model", str(tmp_path / "none")], "true_history:")):
        with pytest.raises(SystemExit) as exit_:
            true_history.main(["--autoencoder", str(ae), *argv])
        assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_context_use_reads_the_shape_an_exact_x0_prediction_draws():
    from experiments.context_use import drawn_shape
    from shotstream.autoencoder import TinyVideoAutoencoder
    from shotstream.config import get_preset
    from shotstream.video import to_model_video
    from shotstream.training.data import character_cells, next_shot_example
    from experiments.shape_classifier import ShapeClassifier
    from shotstream.world import vocab
    from shotstream.world.dataset import load_eval_suite

    ae = TinyVideoAutoencoder.from_pretrained("checkpoints/tiny/autoencoder")
    classifier = ShapeClassifier.from_pretrained("checkpoints/tiny/shape_classifier")
    cfg = get_preset("tiny")
    examples = [next_shot_example(story, 1, cfg) for story in load_eval_suite()[:8]]
    with torch.no_grad():
        target = torch.cat([ae.encode(to_model_video(e.target, "cpu")[None]) for e in examples])
    cells = torch.from_numpy(np.stack([character_cells(e.target_boxes, cfg) for e in examples])).float()
    noise, sigma = torch.randn_like(target), torch.full((len(examples),), 0.9)
    x_t = (1 - 0.9) * target + 0.9 * noise
    drawn = drawn_shape(classifier, ae, x_t, noise - target, sigma, cells)  # the true velocity: x0 is the shot itself
    truth = torch.tensor([vocab.SHAPES.index(e.story.main_character.shape) for e in examples])
    seen = drawn >= 0
    assert seen.sum() >= 6 and (drawn == truth)[seen].float().mean() >= 0.8
    assert torch.equal(seen, cells[:, 0].flatten(1).any(1))


def test_other_action_caption_changes_the_action_phrase_only():
    from experiments.context_use import other_action_caption, with_other_action
    from shotstream.config import get_preset
    from shotstream.training.data import next_shot_example, story_caption
    from shotstream.world.dataset import load_eval_suite

    assert with_other_action("a red dotted star jumps up high in the desert, wide shot", "jump") == \
        "a red dotted star twirls in the desert, wide shot"  # the longest phrase; the same synonym slot
    assert with_other_action("close-up of it waiting quietly on the beach", "stay") == \
        "close-up of it trembling on the beach"  # gerunds too; stay -> shake
    with pytest.raises(ValueError, match="no 'spin' phrase"):
        with_other_action("a red circle jumps", "spin")
    config = get_preset("tiny")
    config.video.frames_per_shot = 5
    for story in load_eval_suite()[:10]:  # every suite caption has its action's phrase
        for k in range(1, story.num_shots):
            e, shot = next_shot_example(story, k, config), story.shots[k]
            changed = other_action_caption(e)
            assert changed != story_caption(story, k) and changed.endswith(with_other_action(shot.caption, shot.labels.action))
            assert changed.startswith(story.global_caption or "")


def test_other_shape_caption_names_the_character_in_the_next_shape():
    from experiments.context_use import other_shape_caption
    from experiments.stories import named_caption
    from shotstream.config import get_preset
    from shotstream.training.data import next_shot_example, story_caption
    from shotstream.world import vocab
    from shotstream.world.dataset import load_eval_suite

    config = get_preset("tiny")
    config.video.frames_per_shot = 5
    for story in load_eval_suite()[:10]:
        for k in range(1, story.num_shots):
            e, main = next_shot_example(story, k, config), story.shots[k].labels.main
            changed, named = other_shape_caption(e), story_caption(story, k, named_caption(story.shots[k].caption, main))
            other = vocab.SHAPES[(vocab.SHAPES.index(main.shape) + 1) % len(vocab.SHAPES)]
            # the shape's word swapped (the subject comes before any companion), the rest as named
            assert changed != named and any(changed.replace(vocab.SHAPE_WORDS[other][0], word, 1) == named
                                            for word in vocab.SHAPE_WORDS[main.shape])


def test_context_use_reshaped_context_changes_the_main_shape_alone():
    from experiments.context_use import reshaped
    from shotstream.config import get_preset
    from shotstream.training.data import next_shot_example
    from shotstream.world.dataset import load_eval_suite

    config = get_preset("tiny")
    config.video.frames_per_shot = 5
    story = load_eval_suite()[0]
    e = next_shot_example(story, 2, config)
    r = reshaped(e, config)
    main, recast = story.main_character, r.story.main_character
    assert recast.shape != main.shape and (recast.colour, recast.pattern) == (main.colour, main.pattern)
    assert r.story.captions == story.captions and r.context_shots == e.context_shots
    assert (r.context != e.context).any()  # the frames show the new shape...
    assert all(a.labels.scene == b.labels.scene for a, b in zip(r.story.shots, story.shots))  # ...in the same places


def test_context_use_recoloured_and_recaptioned_contexts_change_one_thing_each():
    from experiments.context_use import next_colour, next_shape, recaptioned, recoloured
    from shotstream.config import get_preset
    from experiments.stories import description_pattern
    from shotstream.world.story import with_article
    from shotstream.training.data import next_shot_example
    from shotstream.world.dataset import load_eval_suite

    config = get_preset("tiny")
    config.video.frames_per_shot = 5
    story = next(s for s in load_eval_suite() if s.num_shots >= 3)
    e = next_shot_example(story, 2, config)
    main = story.main_character
    r = recoloured(e, config)
    assert r.story.main_character == dataclasses.replace(main, colour=next_colour(main.colour))
    assert r.story.captions == story.captions and (r.context != e.context).any()
    c = recaptioned(e)
    assert [s.labels for s in c.story.shots] == [s.labels for s in story.shots] and c.context is e.context  # frames stay
    assert c.story.shots[2:] == story.shots[2:]  # the target's caption (and any later one) stays
    other = dataclasses.replace(main, shape=next_shape(main.shape), colour=next_colour(main.colour)).describe()
    named = [i for i in range(2) if not story.shots[i].labels.pronoun]
    assert 0 in named and other in c.story.shots[0].caption
    for i in range(2):  # named earlier shots: the description (with its article) and nothing else changes
        before, after = story.shots[i].caption, c.story.shots[i].caption
        if i not in named:
            assert after == before
            continue
        old = description_pattern(main).search(before)
        assert old.group(1)  # named captions give their character an article
        assert after == before[:old.start()] + with_article(other) + before[old.end():]


def test_context_use_reads_the_colour_drawn_in_the_characters_box():
    from experiments.context_use import drawn_colour
    from shotstream.world import vocab

    class Identity:  # decode: latents [B, 1, 3, H, W] are the pixels
        @staticmethod
        def decode(x):
            return x

    def rgb(name):
        return (torch.tensor(vocab.COLOUR_RGB[name]) / 127.5 - 1)[:, None, None]

    frames = torch.full((3, 1, 3, 32, 32), -1.0)  # black
    frames[:, 0, :, 16:, :] = rgb("green")  # outside the boxes, larger than what is inside
    frames[0, 0, :, 2:6, 4:14] = rgb("blue")  # a wide box: rows 2-6, columns 4-14
    frames[1, 0, :, 2:14, 20:30] = rgb("orange")
    frames[1, 0, :, 2:4, 20:30] = rgb("blue")  # a stripe: the most common colour wins
    boxes = np.array([[4, 2, 14, 6], [20, 2, 30, 14], [np.nan] * 4])  # x0 y0 x1 y1
    zero = torch.zeros(3)  # sigma 0: x0 = x_t
    got = drawn_colour(Identity, frames, torch.zeros_like(frames), zero, boxes).tolist()
    assert got == [vocab.COLOURS.index("blue"), vocab.COLOURS.index("orange"), -1]
    frames[0] = 0.0  # grey: no body colour near
    assert drawn_colour(Identity, frames, torch.zeros_like(frames), zero, boxes)[0] == -1


def test_context_use_partners_share_the_shot_but_not_the_character():
    from experiments.context_use import other_story_partners
    from shotstream.config import get_preset
    from shotstream.training.data import next_shot_example
    from shotstream.world.dataset import load_eval_suite

    config = get_preset("tiny")
    config.video.frames_per_shot = 5  # rendering is not what this tests
    stories = load_eval_suite()[:6]
    examples = [next_shot_example(s, k, config) for s in stories for k in range(1, s.num_shots)]
    for e, j in zip(examples, other_story_partners(examples)):
        other = examples[j]
        assert other.shot == e.shot and other.context_shots == e.context_shots  # same shot indices in context
        assert other.story.seed != e.story.seed and other.story.shots[0].labels.main != e.story.shots[0].labels.main
    with pytest.raises(ValueError, match="another main character"):
        other_story_partners([e for e in examples if e.story is stories[0]])


def test_identity_readout_reads_the_characters_tokens_and_trains_the_teacher(smoke_models, tmp_path):
    from shotstream.training.data import character_cells
    from shotstream.training.state import derive_seed
    from experiments.identity_teacher import IDENTITY, IdentityReadout, IdentityTeacherStage, identity_labels

    # pooling: only the tokens over the character's cells count; a character out of view is not seen
    readout = IdentityReadout(8, (1, 2, 2))
    cells = torch.zeros(2, 3, 4, 4, dtype=torch.bool)
    cells[0, 1, 2, 3] = True  # latent cell (2, 3) of frame 1 -> token 1 * 4 + 1 * 2 + 1 = 7
    tokens = torch.randn(2, 3 * 4, 8)
    logits, seen = readout(tokens, cells)
    assert seen.tolist() == [True, False] and {k: v.shape[1] for k, v in logits.items()} == {k: len(v) for k, v in IDENTITY.items()}
    moved = tokens.clone()
    moved[0, :7], moved[0, 8:] = torch.randn(7, 8), torch.randn(4, 8)
    assert all(torch.allclose(a[0], b[0]) for a, b in zip(logits.values(), readout(moved, cells)[0].values()))
    moved[0, 7] = torch.randn(8)
    assert not torch.allclose(logits["shape"][0], readout(moved, cells)[0]["shape"][0])

    # a teacher batch carries the main character's cells and identity; the readout's loss reaches the model
    root, ae, teacher = smoke_models
    cfg = resolve_config("identity_teacher", "teacher_smoke", [f"stage.autoencoder={ae}", f"stage.init={teacher}",
                                                      "stage.identity_loss_weight=1"], out=str(tmp_path / "t"))
    stage = IdentityTeacherStage(cfg.stage, cfg)
    assert set(stage.optimizers()["model"].modules) == {"model", "readout"}
    batch = stage.batch(step=1, shard=0, num_shards=1)[0]
    examples = [stage.example(derive_seed(cfg.seed, 1, 0, i)) for i in range(cfg.batch_size)]  # as batch() draws them
    assert batch.identity.tolist() == [identity_labels(e.story.shots[e.shot].labels.main) for e in examples]
    assert torch.equal(batch.character, torch.from_numpy(np.stack([character_cells(e.target_boxes, stage.config)
                                                                   for e in examples])))
    _, fit = stage.flow_matching_loss(batch)
    loss, logs = stage.readout.loss(fit.tokens, batch, fit.sigma)
    loss.backward()
    assert logs["identity_loss"] > 0 and stage.model.blocks[0].self_attn.q.weight.grad.abs().sum() > 0
    assert "identity_loss" in stage.loss("model", [batch], 1)[1]  # the stage's loss adds it
    with pytest.raises(ValueError, match="identity_loss_weight"):
        resolve_config("identity_teacher", "teacher_smoke", ["stage.identity_loss_weight=-1"], out=str(tmp_path / "neg"))


def test_named_loss_pulls_it_shots_towards_the_init_told_the_characters_name(smoke_models, tmp_path):
    from experiments.identity_teacher import IdentityTeacherStage

    root, ae, teacher = smoke_models
    overrides = [f"stage.autoencoder={ae}", f"stage.init={teacher}", "stage.named_loss_weight=1",
                 "stage.pronoun_share=1", "stage.text_dropout=0", "stage.context_dropout=0"]
    cfg = resolve_config("identity_teacher", "teacher_smoke", overrides, out=str(tmp_path / "t"))
    stage = IdentityTeacherStage(cfg.stage, cfg)
    batch = stage.batch(step=1, shard=0, num_shards=1)[0]
    assert batch.pronoun.any() and batch.context_valid[batch.pronoun].any(1).all()  # "it" targets, where a story has one
    C = batch.budget
    for i, pronoun in enumerate(batch.pronoun):  # the caption slot names the character on "it" shots only
        assert torch.equal(batch.named_text[i], batch.text[i, C]) != pronoun
    torch.manual_seed(0)
    _, fit = stage.flow_matching_loss(batch)
    named = stage.named_loss(batch, fit)
    named.backward()
    assert named > 0 and stage.model.blocks[0].self_attn.q.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in stage.reference.parameters())  # the reference stays the init
    # with the "it" caption in the named slot, the model (still the init) matches its reference exactly
    same = dataclasses.replace(batch, named_text=batch.text[:, C], named_mask=batch.text_mask[:, C])
    assert stage.named_loss(same, fit).item() == pytest.approx(0, abs=1e-10)
    # targets whose caption was dropped (CFG's unconditional branch) are left out
    fit.text_kept[:] = False
    assert stage.named_loss(batch, fit).item() == 0
    with pytest.raises(ValueError, match="needs stage.init"):
        resolve_config("identity_teacher", "teacher_smoke", ["stage.named_loss_weight=1"], out=str(tmp_path / "noinit"))


def test_shape_contrast_pushes_away_from_the_target_drawn_in_another_shape(smoke_models, tmp_path):
    from experiments.identity_teacher import IdentityTeacherStage

    root, ae, teacher = smoke_models
    cfg = resolve_config("identity_teacher", "teacher_smoke", [f"stage.autoencoder={ae}", f"stage.init={teacher}", "stage.story_pool=3",
                                                      "stage.shape_contrast=0.2"], out=str(tmp_path / "t"))
    stage = IdentityTeacherStage(cfg.stage, cfg)
    batch = stage.batch(step=1, shard=0, num_shards=1)[0]
    assert batch.negative.shape == batch.target.shape
    # the negative differs from the target where the character is, much less elsewhere
    diff = ((batch.negative - batch.target) ** 2).mean(2)  # [B, F, h, w]
    on, off = diff[batch.character].mean(), diff[~batch.character].mean()
    assert on > 10 * off and on > 0.05
    assert all(torch.equal(stage.negative(e), n.cpu()) for e, n in zip(stage.examples(1, 0), batch.negative))  # kept
    _, fit = stage.flow_matching_loss(batch)
    distance = stage.contrast_loss(batch, fit)
    assert distance > 0
    # with the true target as its own negative the term is the flow-matching error on the character's cells
    same = dataclasses.replace(batch, negative=batch.target, loss_weight=None)
    err = ((fit.v - (fit.noise - batch.target)) ** 2).mean(2)
    assert stage.contrast_loss(same, fit).item() == pytest.approx((err * batch.character).sum().item() / err.numel(), rel=1e-4)
    loss, logs = stage.loss("model", [batch], 1)
    assert "contrast_distance" in logs
    with pytest.raises(ValueError, match="shape_contrast"):
        resolve_config("identity_teacher", "teacher_smoke", ["stage.shape_contrast=1"], out=str(tmp_path / "neg"))


def test_character_crop_frames_the_characters_cells_and_passes_gradients():
    from experiments.shape_classifier import character_crop

    frames = torch.zeros(2, 3, 128, 128)
    frames[0, :, 40:56, 64:80] = 1  # the character: latent cells rows 5-6, columns 8-9
    cells = torch.zeros(2, 16, 16, dtype=torch.bool)
    cells[0, 5:7, 8:10] = True
    frames.requires_grad_(True)
    crops, seen = character_crop(frames, cells)
    assert crops.shape == (2, 3, 32, 32) and seen.tolist() == [True, False]
    # a square of 2 + 2 margin cells (32 px) around it: the character fills the middle half
    on = (crops[0, 0] > 0.5).nonzero()
    assert on.min(0).values.tolist() == [8, 8] and on.max(0).values.tolist() == [23, 23]
    crops[0].sum().backward()
    grad = frames.grad[0, 0]
    assert grad[32:64, 56:88].abs().sum() > 0 and grad.abs().sum() == grad[32:64, 56:88].abs().sum()


def test_shape_loss_scores_the_decoded_x0_prediction_with_the_frozen_classifier(smoke_models, tmp_path):
    from shotstream.checkpoint import CheckpointError
    from experiments.shape_classifier import ShapeClassifier, character_crop
    from experiments.identity_teacher import IdentityTeacherStage

    root, ae, teacher = smoke_models
    classifier = run_stage("shape_classifier", "shape_classifier_smoke", tmp_path / "sc", f"stage.autoencoder={ae}") / "shape_classifier"
    assert (tmp_path / "sc" / "samples" / "step_00000002" / "eval.txt").is_file()
    cfg = resolve_config("identity_teacher", "teacher_smoke", [f"stage.autoencoder={ae}", f"stage.init={teacher}", "stage.text_dropout=0",
                                                      "stage.shape_loss_weight=1", f"stage.shape_classifier={classifier}"],
                         out=str(tmp_path / "t"))
    stage = IdentityTeacherStage(cfg.stage, cfg)
    batch = stage.batch(step=1, shard=0, num_shards=1)[0]
    _, fit = stage.flow_matching_loss(batch)
    loss, logs = stage.shape_loss(batch, fit)
    loss.backward()
    assert logs["shape_loss"] > 0 and stage.model.blocks[0].self_attn.q.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in stage.shape_classifier.parameters())  # frozen
    # with the true velocity, x0 is the target: the loss is the classifier's on the target's first frame
    fit.v = (fit.noise - batch.target).detach()
    use = batch.character[:, 0].flatten(1).any(1)
    crops, _ = character_crop(stage.autoencoder.decode(batch.target[use, :1])[:, 0], batch.character[use, 0])
    expected = torch.nn.functional.cross_entropy(stage.shape_classifier(crops), batch.identity[use, 0])
    assert stage.shape_loss(batch, fit)[0].item() == pytest.approx(expected.item(), rel=1e-4)
    fit.text_kept[:] = False  # targets whose caption was dropped (CFG's unconditional branch) are left out
    assert stage.shape_loss(batch, fit)[0].item() == 0
    with pytest.raises(CheckpointError, match="not a ShapeClassifier"):
        ShapeClassifier.from_pretrained(ae)


def test_named_caption_replaces_only_the_pronoun():
    from experiments.stories import named_caption
    from shotstream.world import vocab
    from shotstream.world.story import sample_story

    shots = [s for seed in range(200) for s in sample_story(seed).shots]
    for shot in shots:
        main, named = shot.labels.main, named_caption(shot.caption, shot.labels.main)
        if not shot.labels.pronoun:
            assert named == shot.caption
            continue
        description = " ".join(w[0] for w in (vocab.COLOUR_WORDS[main.colour], vocab.PATTERN_WORDS[main.pattern],
                                              vocab.SHAPE_WORDS[main.shape]))
        match = next(m for p in sorted(vocab.PRONOUNS, key=len, reverse=True) if (m := re.search(rf"\b{p}\b", shot.caption)))
        before, after = shot.caption[:match.start()], shot.caption[match.end():]
        assert named in (f"{before}a {description}{after}", f"{before}an {description}{after}"), (shot.caption, named)
    assert sum(s.labels.pronoun for s in shots) > 20

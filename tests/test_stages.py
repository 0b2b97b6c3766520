"""Smoke runs of the real training stages: autoencoder -> teacher -> generate, a few steps each."""

import dataclasses
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from shotstream.model.loading import from_pretrained
from shotstream.training.cli import resolve_config, load_stage
from shotstream.training.trainer import train
from shotstream.video import read_mp4


def run_stage(stage, config, out, *overrides):
    cfg = resolve_config(stage, config, list(overrides), out=str(out))
    train(load_stage(stage), cfg, name=stage)
    return out / "final"


@pytest.fixture(scope="module")
def smoke_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("smoke")
    ae = run_stage("autoencoder", "autoencoder_smoke", root / "ae") / "autoencoder"
    teacher = run_stage("teacher", "teacher_smoke", root / "teacher", f"stage.autoencoder={ae}",
                        "stage.character_loss_weight=4", "stage.character_weight_from_step=1",
                        "stage.image_batches=1:2", "stage.identity_loss_weight=0.5") / "teacher"
    return root, ae, teacher


def test_stages_write_loadable_models_curves_and_samples(smoke_models):
    root, ae, teacher = smoke_models
    model, config, kind = from_pretrained(teacher)
    assert kind == "bidirectional" and config.model.dim == 64
    for run in ("ae", "teacher"):
        assert (root / run / "metrics.csv").stat().st_size > 0
        assert (root / run / "loss.png").is_file()
        assert (root / run / "config.json").is_file()
    assert (root / "teacher" / "samples" / "step_00000002" / "story.png").is_file()
    logged = (root / "teacher" / "metrics.csv").read_text()
    assert "image_loss" in logged and "identity_loss" in logged  # joint image training and the readout ran


def test_teacher_finetune_starts_from_the_teacher_it_continues(smoke_models, tmp_path):
    from shotstream.training.teacher import TeacherStage

    root, ae, teacher = smoke_models
    overrides = [f"stage.autoencoder={ae}", f"stage.init={teacher}", "stage.shift=1"]
    cfg = resolve_config("teacher", "teacher_smoke", overrides, out=str(tmp_path / "ft"))
    start = from_pretrained(teacher)[0].state_dict()
    assert all(torch.equal(start[k], v) for k, v in TeacherStage(cfg.stage, cfg).model.state_dict().items())
    bad = resolve_config("teacher", "teacher_smoke", overrides + ["stage.model_overrides=model.num_layers=1"],
                         out=str(tmp_path / "bad"))
    with pytest.raises(ValueError, match="not a teacher of this config"):
        TeacherStage(bad.stage, bad)
    # A deeper phase (model.num_layers=3 from the 2-layer smoke teacher) starts from its expanded blocks
    smoke = resolve_config("teacher", "teacher_smoke", [], out=str(tmp_path / "smoke")).stage.model_overrides
    deeper = [o.replace("num_layers=2", "num_layers=3") for o in smoke]
    cfg = resolve_config("teacher", "teacher_smoke", overrides + [f"stage.model_overrides={','.join(deeper)}",
                                                                  "stage.new_block_lr_scale=20"], out=str(tmp_path / "deeper"))
    stage = TeacherStage(cfg.stage, cfg)
    model = stage.model.state_dict()
    assert len({k.split(".")[1] for k in model if k.startswith("blocks.")}) == 3
    assert all(torch.equal(model[k], v) for k, v in start.items())  # blocks 0, 1 and the rest; block 2 is new
    scaled = stage.optimizers()["model"].lr_scale
    assert set(scaled) == {k for k in model if k.startswith("blocks.2.")} and set(scaled.values()) == {20.0}
    with pytest.raises(ValueError, match="stage.shift"):
        resolve_config("teacher", "teacher_smoke", ["stage.shift=-1"], out=str(tmp_path / "neg"))


def test_autoencoder_continues_its_init_and_takes_the_studys_stride(smoke_models, tmp_path):
    from shotstream.autoencoder import TinyVideoAutoencoder
    from shotstream.training.autoencoder import AutoencoderStage

    _, ae, _ = smoke_models
    cfg = resolve_config("autoencoder", "autoencoder_smoke", [f"stage.init={ae}"], out=str(tmp_path / "cont"))
    stage = AutoencoderStage(cfg.stage, cfg)
    start = TinyVideoAutoencoder.from_pretrained(ae).state_dict()
    assert all(torch.equal(start[k].float(), v) and v.dtype == torch.float32 for k, v in stage.ae.state_dict().items())
    cfg = resolve_config("autoencoder", "autoencoder_smoke", ["stage.spatial_stride=4", "stage.channel_mults=1,2"],
                         out=str(tmp_path / "s4"))
    stage = AutoencoderStage(cfg.stage, cfg)
    z = stage.ae.encode_raw(stage.batch(0, 0, 1))
    assert stage.video.spatial_stride == 4 and z.shape[-2:] == (16, 16)  # 64-pixel crops -> 16x16 latents


def test_character_weight_starts_after_its_step():
    from types import SimpleNamespace
    from shotstream.training.teacher import TeacherConfig, TeacherStage

    stage = SimpleNamespace(cfg=TeacherConfig(character_loss_weight=5, character_weight_from_step=2000))
    weights = [TeacherStage.character_loss_weight(stage, step) for step in (1, 2000, 2001, 3000)]
    assert weights == [1.0, 1.0, 5.0, 5.0]


def test_image_batch_schedule_grows_after_each_step():
    from shotstream.training.teacher import TeacherConfig

    cfg = TeacherConfig(image_batches=("3000:16", "5000:64")).validate()
    assert [cfg.image_batch_size(s) for s in (1, 3000, 3001, 5000, 5001, 9000)] == [0, 0, 16, 16, 64, 64]
    assert TeacherConfig().image_batch_size(10) == 0
    for bad in (("16",), ("a:b",), ("5000:64", "3000:16"), ("10:-1",)):
        with pytest.raises(ValueError, match="image_batches"):
            TeacherConfig(image_batches=bad).validate()


def test_image_examples_are_single_captioned_frames_without_context():
    from shotstream.config import get_preset
    from shotstream.training.data import sample_image_example

    cfg = get_preset("tiny")
    a, b = sample_image_example(7, cfg), sample_image_example(7, cfg)
    assert a.target.shape == (1, cfg.video.height, cfg.video.width, 3) and len(a.context) == 0
    assert a.target_boxes.shape[0] == 1 and a.target.std() > 0
    assert np.array_equal(a.target, b.target)  # a pure function of the seed (exact resume)
    assert a.story.shots[a.shot].caption
    # without context, only captions that name the character: over many seeds, never an "it" shot
    examples = [sample_image_example(seed, cfg) for seed in range(60)]
    assert not any(e.story.shots[e.shot].labels.pronoun for e in examples)
    assert any(e.shot > 0 for e in examples)


def test_pronoun_share_targets_it_shots_that_often():
    from shotstream.training.data import target_shot
    from shotstream.training.teacher import TeacherConfig
    from shotstream.world.dataset import training_seed
    from shotstream.world.story import sample_story

    stories = [sample_story(training_seed(seed), max_shots=6) for seed in range(400)]
    def it_share(share):
        picks = [target_shot(seed, s, share) for seed, s in enumerate(stories)]
        assert picks == [target_shot(seed, s, share) for seed, s in enumerate(stories)]  # a function of the seed
        assert all(0 <= k < s.num_shots for k, s in zip(picks, stories))
        return np.mean([s.shots[k].labels.pronoun for k, s in zip(picks, stories)]), picks

    having = np.mean([any(shot.labels.pronoun for shot in s.shots) for s in stories])
    uniform, picks = it_share(0.0)
    half, _ = it_share(0.5)
    always, _ = it_share(1.0)
    assert 0.1 < uniform < 0.3 and uniform < half < always
    assert always == having  # every story that has an "it" shot gives one
    assert sorted(set(picks)) == list(range(6))  # uniform over the shots otherwise
    with pytest.raises(ValueError, match="pronoun_share"):
        TeacherConfig(pronoun_share=1.5).validate()


def test_target_frames_train_on_each_shots_opening_from_the_same_context(smoke_models, tmp_path):
    from shotstream.training.teacher import TeacherConfig, TeacherStage

    root, ae, _ = smoke_models
    overrides = [f"stage.autoencoder={ae}", "stage.character_loss_weight=5", "stage.pronoun_share=1"]
    whole = resolve_config("teacher", "teacher_smoke", overrides, out=str(tmp_path / "whole"))
    full = TeacherStage(whole.stage, whole).batch(step=1, shard=0, num_shards=1)[0]
    for pool, n in (("0", 1), ("0", 2), ("3", 1)):
        extra = ["stage.shape_contrast=0.5"] if n == 2 else []  # its negatives are cut as the targets
        cut = resolve_config("teacher", "teacher_smoke", overrides + [f"stage.target_frames={n}", f"stage.story_pool={pool}",
                                                                      *extra], out=str(tmp_path / f"{pool}-{n}"))
        stage = TeacherStage(cut.stage, cut)
        batch = stage.batch(step=1, shard=0, num_shards=1)[0]
        assert batch.target.shape[1] == n and batch.loss_weight.shape[1] == n and batch.character.shape[1] == n
        if pool == "0":  # the same examples as the whole shots: their first latent frames, context and captions
            assert torch.allclose(batch.target, full.target[:, :n], atol=1e-5)
            assert torch.equal(batch.context, full.context) and torch.equal(batch.text, full.text)
            assert torch.equal(batch.character, full.character[:, :n])
        if extra:
            assert batch.negative.shape == batch.target.shape
    with pytest.raises(ValueError, match="target_frames"):
        TeacherConfig(target_frames=-1).validate()


def test_story_pool_encodes_each_example_once_as_collate_would(smoke_models, tmp_path):
    from shotstream.autoencoder import TinyVideoAutoencoder
    from shotstream.session import to_model_video
    from shotstream.training.data import StoryPool, encode_example, next_shot_example
    from shotstream.training.teacher import TeacherStage

    root, ae, _ = smoke_models
    cfg = resolve_config("teacher", "teacher_smoke", [f"stage.autoencoder={ae}", "stage.story_pool=3",
                                                      "stage.image_batches=0:4"], out=str(tmp_path / "t"))
    stage = TeacherStage(cfg.stage, cfg)
    pool = stage.pool
    assert isinstance(pool, StoryPool) and pool.size == 3
    examples = [pool.example(seed) for seed in range(40)]
    assert len({e.story.seed for e in examples}) == 3  # only the pool's stories
    assert len(pool) == len({(e.story.seed, e.shot) for e in examples})  # one encoding per (story, shot)
    assert pool.example(5) is examples[5]  # drawn again: not encoded again
    # a resumed run starts with an empty pool and draws in another order: the same latents
    again = StoryPool(3, stage.autoencoder, stage.config, "cpu", cfg.stage.max_shots)
    for seed in (39, 0):
        assert all(torch.equal(a, b) for a, b in zip(again.example(seed).latents, examples[seed].latents))
    # the kept latents are exactly what collate encodes from the rendered pixels
    codec = TinyVideoAutoencoder.from_pretrained(ae)
    fresh = next_shot_example(examples[0].story, examples[0].shot, stage.config)
    for kept, encoded in zip(examples[0].latents, encode_example(fresh, codec, "cpu")):
        assert torch.equal(kept, encoded)
    assert examples[0].context_shots == fresh.context_shots and examples[0].target.size == 0  # pixels dropped
    # an image example is the opening frame of a pooled shot that names its character, alone,
    # the same latent whether only that frame is encoded or the whole example already was
    fresh_pool = StoryPool(3, stage.autoencoder, stage.config, "cpu", cfg.stage.max_shots)
    image = fresh_pool.image_example(11)
    assert len(fresh_pool) == 0 and len(fresh_pool.first_frames) == 1
    assert not image.story.shots[image.shot].labels.pronoun and image.context_shots == []
    target = next_shot_example(image.story, image.shot, stage.config).target
    with torch.no_grad():
        assert torch.equal(image.latents[0], codec.encode_image(to_model_video(target[:1], "cpu"))[:, 0])
    fresh_pool.get(image.story, image.shot)
    assert torch.equal(fresh_pool.image_example(11).latents[0], image.latents[0])
    fresh_stage = TeacherStage(cfg.stage, cfg)
    batches = fresh_stage.batch(step=1, shard=0, num_shards=1)  # a training step draws from its pool
    assert batches[1].target.shape[:2] == (4, 1) and batches[0].target.shape[0] == cfg.batch_size
    assert 0 < len(fresh_stage.pool) <= cfg.batch_size and 0 < len(fresh_stage.pool.first_frames) <= 4
    # resume: a stage whose pool and text cache a step already warmed builds the next batch
    # bit for bit as a new one
    warm, cold = fresh_stage.batch(step=2, shard=0, num_shards=1), TeacherStage(cfg.stage, cfg).batch(2, 0, 1)
    for a, b in zip(warm, cold):
        for field in dataclasses.fields(a):
            x, y = getattr(a, field.name), getattr(b, field.name)
            assert (x is None and y is None) or torch.equal(x, y), field.name
    with pytest.raises(ValueError, match="story_pool"):
        resolve_config("teacher", "teacher_smoke", ["stage.story_pool=-1"], out=str(tmp_path / "neg"))


def test_latent_cache_encodes_each_example_once_for_every_run(smoke_models, tmp_path, monkeypatch):
    """A teacher with `latent_cache` reads back what it encoded: a second run (or stage) builds
    the same batches bit for bit without encoding; the latents are those of the example encoded
    alone; another codec gets a folder of its own; an unreadable entry is encoded again."""
    import warnings

    from shotstream.autoencoder import TinyVideoAutoencoder
    from shotstream.training.data import encode_example, next_shot_example
    from shotstream.training.teacher import TeacherStage
    from shotstream.world.story import sample_story

    root, ae, _ = smoke_models
    cfg = resolve_config("teacher", "teacher_smoke", [f"stage.autoencoder={ae}", f"stage.latent_cache={tmp_path / 'latents'}"],
                         out=str(tmp_path / "t"))
    first = TeacherStage(cfg.stage, cfg)
    batches = [first.batch(step, 0, 1)[0] for step in (1, 2)]
    files = sorted((tmp_path / "latents").rglob("*.safetensors"))
    assert len(files) == len({(e.story.seed, e.shot) for step in (1, 2) for e in first.examples(step, 0)})
    second = TeacherStage(cfg.stage, cfg)
    encodes = []
    for name in ("encode", "encode_image"):
        real = getattr(second.autoencoder, name)
        monkeypatch.setattr(second.autoencoder, name, lambda *a, real=real: encodes.append(1) or real(*a))
    for step, batch in zip((1, 2), batches):
        again = second.batch(step, 0, 1)[0]
        for field in dataclasses.fields(batch):
            x, y = getattr(batch, field.name), getattr(again, field.name)
            assert (x is None and y is None) or torch.equal(x, y), field.name
    assert not encodes and sorted((tmp_path / "latents").rglob("*.safetensors")) == files
    e = second.example(7)
    fresh = next_shot_example(e.story, e.shot, second.config)
    codec = TinyVideoAutoencoder.from_pretrained(ae)
    assert all(torch.equal(a, b) for a, b in zip(e.latents, encode_example(fresh, codec, "cpu")))
    assert e.context_shots == fresh.context_shots and np.array_equal(e.target_boxes, fresh.target_boxes, equal_nan=True)
    # an entry cut short is encoded again, with a warning, and rewritten whole
    files[0].write_bytes(files[0].read_bytes()[:100])
    story_seed, shot = (int(v) for v in files[0].stem.split("_"))
    story = sample_story(story_seed, max_shots=cfg.stage.max_shots, frames_per_shot=second.config.video.frames_per_shot)
    with pytest.warns(UserWarning, match="unreadable"):
        second.latents.get(story, shot)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second.latents.get(story, shot)
    # another codec: another folder
    other = tmp_path / "other_ae"
    TinyVideoAutoencoder(second.config.video, base_channels=8).save_pretrained(other)
    cfg_other = resolve_config("teacher", "teacher_smoke", [f"stage.autoencoder={other}", f"stage.latent_cache={tmp_path / 'latents'}"],
                               out=str(tmp_path / "t2"))
    assert TeacherStage(cfg_other.stage, cfg_other).latents.dir != second.latents.dir


def test_context_use_compares_true_hidden_and_other_context(smoke_models, tmp_path, capsys):
    from benchmark import context_use
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
    from benchmark import true_history
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
    from benchmark.context_use import drawn_shape
    from shotstream.autoencoder import TinyVideoAutoencoder
    from shotstream.config import get_preset
    from shotstream.session import to_model_video
    from shotstream.training.data import character_cells, next_shot_example
    from shotstream.training.shape_classifier import ShapeClassifier
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
    from benchmark.context_use import other_action_caption, with_other_action
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
    from benchmark.context_use import other_shape_caption
    from shotstream.config import get_preset
    from shotstream.training.data import next_shot_example, story_caption
    from shotstream.world import vocab
    from shotstream.world.dataset import load_eval_suite

    config = get_preset("tiny")
    config.video.frames_per_shot = 5
    for story in load_eval_suite()[:10]:
        for k in range(1, story.num_shots):
            e, main = next_shot_example(story, k, config), story.shots[k].labels.main
            changed, named = other_shape_caption(e), story_caption(story, k, named=True)
            other = vocab.SHAPES[(vocab.SHAPES.index(main.shape) + 1) % len(vocab.SHAPES)]
            # the shape's word swapped (the subject comes before any companion), the rest as named
            assert changed != named and any(changed.replace(vocab.SHAPE_WORDS[other][0], word, 1) == named
                                            for word in vocab.SHAPE_WORDS[main.shape])


def test_context_use_reshaped_context_changes_the_main_shape_alone():
    from benchmark.context_use import reshaped
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
    from benchmark.context_use import next_colour, next_shape, recaptioned, recoloured
    from shotstream.config import get_preset
    from shotstream.world.story import description_pattern, with_article
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
    from benchmark.context_use import drawn_colour
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
    from benchmark.context_use import other_story_partners
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


def test_generate_command_streams_a_story_with_the_teacher(smoke_models, tmp_path):
    root, ae, teacher = smoke_models
    out = tmp_path / "story.mp4"
    proc = subprocess.run(
        [sys.executable, "-m", "shotstream", "generate", "--model", str(teacher), "--autoencoder", str(ae),
         "-p", "a red circle walks left in the forest", "-p", "close-up of it spinning", "-o", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    frames = read_mp4(out)
    assert frames.shape == (2 * 9, 128, 128, 3)  # two 9-frame shots of the smoke config
    assert out.with_suffix(".png").is_file()
    assert "first frames after" in proc.stderr


def test_generate_reports_bad_input_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "shotstream", "generate", "--model", str(tmp_path / "nope"), "-p", "x"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "neither a folder nor a shipped model" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "shotstream", "generate", "--story", "suite:99"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    # refused before the model loads: an output path that is a folder, a device or thread count
    for args, message in ((["-o", str(tmp_path)], "is a folder"), (["--device", "cuda:7"], "device"),
                          (["--threads", "0"], "at least 1"), (["--dtype", "fp64"], "unknown dtype")):
        proc = subprocess.run([sys.executable, "-m", "shotstream", "generate", "-p", "x", *args],
                              capture_output=True, text=True)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_distillation_chain_ode_intra_inter(smoke_models, tmp_path):
    """ODE pairs -> ODE init -> intra-shot DMD -> inter-shot DMD, each a few steps, each loadable."""
    from shotstream import flow_matching as fm
    from shotstream.training.ode import PairsConfig, check_pairs_for_student, make_pairs

    root, ae, teacher = smoke_models
    recipe = PairsConfig(teacher=str(teacher), autoencoder=str(ae), out=str(tmp_path / "pairs"), steps=2, shard_size=2)
    pairs = make_pairs(recipe, count=4, progress=False)
    assert len(list(pairs.glob("pairs_*.safetensors"))) == 2
    # resuming with another recipe (a retrained teacher, other sampler settings) is refused, not mixed in
    with pytest.raises(ValueError, match="another guidance_scale"):
        make_pairs(dataclasses.replace(recipe, guidance_scale=1.0), count=6, progress=False)
    with pytest.raises(ValueError, match="another context_scale"):
        make_pairs(dataclasses.replace(recipe, context_scale=2.0), count=6, progress=False)
    assert len(list(pairs.glob("pairs_*.safetensors"))) == 2
    ode = run_stage("ode", "ode_smoke", tmp_path / "ode", f"stage.teacher={teacher}", f"stage.pairs={pairs}")
    # the ODE stage only regresses onto pairs of its own teacher and student sigmas
    with pytest.raises(ValueError, match="recorded at sigmas"):
        run_stage("ode", "ode_smoke", tmp_path / "ode_shift", f"stage.teacher={teacher}", f"stage.pairs={pairs}",
                  "stage.model_overrides=sampler.shift=5")
    with pytest.raises(ValueError, match="another teacher"):
        tcfg = from_pretrained(teacher)[1]
        check_pairs_for_student(pairs, str(ae), fm.student_sigmas(tcfg.sampler.student_timesteps, tcfg.sampler.shift))
    common = [f"stage.teacher={teacher}", f"stage.autoencoder={ae}"]
    intra = run_stage("intra", "intra_smoke", tmp_path / "intra", *common, f"stage.init={ode / 'student_ode'}")
    inter = run_stage("inter", "inter_smoke", tmp_path / "inter", *common, f"stage.init={intra / 'student'}")
    model, config, kind = from_pretrained(inter / "student")
    assert kind == "causal" and config == from_pretrained(teacher)[1]
    rows = (tmp_path / "inter" / "metrics.csv").read_text()
    for metric in ("critic/loss", "generator/loss", "generator/dmd_grad_norm"):
        assert metric in rows
    # the student changed during self-forcing, and streams with the session
    before = from_pretrained(ode / "student_ode")[0].state_dict()
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    from shotstream.session import ShotStreamPipeline

    session = ShotStreamPipeline.from_pretrained(inter / "student", autoencoder=ae).session(seed=0)
    session.submit("a red circle walks left")
    session.submit("it spins")
    assert [c.shot for c in session.stream()] == [0, 1]  # 9 frames = 3 latent frames = one chunk per shot

    # The rolling-window ablation: same inter stage, the cache kept across shots, exported as `rolling`.
    rolling = run_stage("inter", "inter_smoke", tmp_path / "rolling", *common, f"stage.init={intra / 'student'}",
                        "stage.kind=rolling", "stage.model_overrides=model.local_window=3", "stage.export_name=rolling")
    model, config, kind = from_pretrained(rolling / "rolling")
    assert kind == "rolling" and config.model.local_window == 3
    session = ShotStreamPipeline.from_pretrained(rolling / "rolling", autoencoder=ae).session(seed=0)
    session.submit("a red circle walks left")
    session.submit("it spins")
    assert [c.shot for c in session.stream()] == [0, 1]


def test_rolling_inter_stage_carries_the_cache_across_shots(smoke_models, tmp_path):
    """Each step's rollouts start from the cache the previous shot left; a new story starts empty."""
    from shotstream.training.self_forcing import InterShotStage

    root, ae, teacher = smoke_models
    student = tmp_path / "student"
    model, config, _ = from_pretrained(teacher)
    from shotstream.model.loading import save_pretrained
    from shotstream.model.dit import WanDiT

    save_pretrained(WanDiT(config.model, config.video.latent_channels), config, student, kind="causal")
    cfg = resolve_config("inter", "inter_smoke", [f"stage.teacher={teacher}", f"stage.autoencoder={ae}",
                                                  f"stage.init={student}", "stage.kind=rolling",
                                                  "stage.model_overrides=model.local_window=3", "stage.max_shots=2"],
                         out=str(tmp_path / "run"))
    stage = InterShotStage(cfg.stage, cfg)
    F = config.video.latent_frames_per_shot
    batch = stage.batch(0, 0, 1)
    assert stage.rolling_memory.kv.length == 0 and stage.rolling_memory.next_position == 0
    with torch.no_grad():
        torch.manual_seed(0)
        a = stage.rollout(batch, grad=False)
        torch.manual_seed(0)
        b = stage.rollout(batch, grad=False)  # a second rollout of the same step: same start, same shot
    assert torch.equal(a, b) and stage.rolling_memory.kv.length == 0
    stage.batch(1, 0, 1)  # next shot of the same stories: shot 0 streamed in full joins the history
    assert stage.rolling_memory.next_position == F and stage.rolling_memory.kv.length == 3 * stage.rolling_memory.tokens_per_frame


def test_inter_stage_history_is_the_shot_streamed_in_full(smoke_models, tmp_path, monkeypatch):
    """The shot that joins the history runs every step of every chunk, as the app streams it,
    not the training rollouts' random exit; a finished story starts new ones without it."""
    from shotstream.model.dit import WanDiT
    from shotstream.model.loading import save_pretrained
    from shotstream.session import to_uint8
    from shotstream.training import self_forcing

    root, ae, teacher = smoke_models
    _, config, _ = from_pretrained(teacher)
    save_pretrained(WanDiT(config.model, config.video.latent_channels), config, tmp_path / "student", kind="causal")
    cfg = resolve_config("inter", "inter_smoke", [f"stage.teacher={teacher}", f"stage.autoencoder={ae}",
                                                  f"stage.init={tmp_path / 'student'}", "stage.max_shots=2"],
                         out=str(tmp_path / "run"))
    stage = self_forcing.InterShotStage(cfg.stage, cfg)
    exits, rollout_shot = [], self_forcing.rollout_shot
    monkeypatch.setattr(self_forcing, "rollout_shot", lambda *a, **kw: exits.append(kw["exit_steps"]) or rollout_shot(*a, **kw))
    shot0 = stage.batch(0, 0, 1)
    torch.manual_seed(1)
    expected = stage.autoencoder.decode(stage.rollout(shot0, grad=False, full=True))
    torch.manual_seed(1)
    shot1 = stage.batch(1, 0, 1)
    assert all(e == [len(stage.sigmas) - 1] * len(e) for e in exits)
    assert shot1.budget > 0 and shot1.context_valid.any()  # shot 1 is conditioned on the history
    assert len(stage.history) == 2 and all(np.array_equal(h[0], to_uint8(expected[b:b + 1])) for b, h in enumerate(stage.history))
    calls = len(exits)
    stage.batch(2, 0, 1)  # the 2-shot stories are done: new stories, no history rollout
    assert len(exits) == calls and all(h == [] for h in stage.history)


@pytest.mark.parametrize("indicator", ["none", "learned"])
def test_indicator_ablations_branch_off_a_shared_student(smoke_models, tmp_path, indicator):
    """Self-forcing of an ablation starts from the shared ODE student with its indicator swapped."""
    from shotstream.model.dit import WanDiT
    from shotstream.model.loading import save_pretrained
    from shotstream.training.self_forcing import IntraShotStage

    root, ae, teacher = smoke_models
    _, config, _ = from_pretrained(teacher)
    torch.manual_seed(0)
    shared = WanDiT(config.model, config.video.latent_channels)
    save_pretrained(shared, config, tmp_path / "student_ode", kind="causal")
    cfg = resolve_config("intra", "intra_smoke", [f"stage.teacher={teacher}", f"stage.autoencoder={ae}",
                                                  f"stage.init={tmp_path / 'student_ode'}",
                                                  f"stage.model_overrides=model.shot_indicator={indicator}"],
                         out=str(tmp_path / "run"))
    stage = IntraShotStage(cfg.stage, cfg)
    gen = stage.generator.state_dict()
    assert stage.generator.cfg.shot_indicator == indicator
    assert ("shot_embedding" in gen) == (indicator == "learned")
    if indicator == "learned":
        assert not gen["shot_embedding"].any()  # starts as no indicator at all...
    # ...so it learns faster than the fine-tuned rest, or it stays near zero (a no-indicator twin).
    scale = stage.optimizers()["generator"].lr_scale
    assert scale == ({"shot_embedding": cfg.stage.learned_indicator_lr_scale} if indicator == "learned" else {})
    saved = from_pretrained(tmp_path / "student_ode")[0].state_dict()
    assert all(torch.equal(saved[k].float(), v) for k, v in gen.items() if k != "shot_embedding")
    with pytest.raises(ValueError, match="differs from preset"):
        bad = resolve_config("intra", "intra_smoke", [f"stage.teacher={teacher}", f"stage.autoencoder={ae}",
                                                      f"stage.init={tmp_path / 'student_ode'}",
                                                      "stage.model_overrides=model.num_layers=3"], out=str(tmp_path / "bad"))
        IntraShotStage(bad.stage, bad)


def test_character_weight_marks_the_latent_cells_the_main_character_touches():
    from shotstream.config import get_preset
    from shotstream.training.data import character_weight, next_shot_example
    from shotstream.world.story import sample_story

    cfg = get_preset("tiny")  # 8x8 pixels per latent cell, 4 frames per latent frame
    boxes = np.full((9, 2, 4), np.nan, np.float32)  # 9 frames -> 3 latent frames
    boxes[0, 0] = (8, 16, 20, 24)  # frame 0 -> latent frame 0: cells x 1..2, y 2
    boxes[4, 0] = (0, 0, 8, 8)  # frame 4 -> latent frame 1 (frames 1-4): cell (0, 0)
    boxes[5, 1] = (0, 0, 64, 64)  # a companion (index 1) never counts
    w = character_weight(boxes, cfg, 5.0)
    assert w.shape == (3, 16, 16)
    assert sorted(zip(*np.nonzero(w[0] == 5))) == [(2, 1), (2, 2)]
    assert sorted(zip(*np.nonzero(w[1] == 5))) == [(0, 0)]
    assert (w[2] == 1).all() and set(np.unique(w)) == {1.0, 5.0}
    # on a real render, the weighted cells are where the character is drawn
    example = next_shot_example(sample_story(3, num_shots=1, frames_per_shot=cfg.video.frames_per_shot), 0, cfg)
    w = character_weight(example.target_boxes, cfg, 5.0)
    assert w.shape == (cfg.video.latent_frames_per_shot, 16, 16) and 0 < (w == 5).mean() < 0.5


def test_identity_readout_reads_the_characters_tokens_and_trains_the_teacher(smoke_models, tmp_path):
    from shotstream.training.data import IDENTITY, character_cells, identity_labels
    from shotstream.training.state import derive_seed
    from shotstream.training.teacher import IdentityReadout, TeacherStage

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
    cfg = resolve_config("teacher", "teacher_smoke", [f"stage.autoencoder={ae}", f"stage.init={teacher}",
                                                      "stage.identity_loss_weight=1"], out=str(tmp_path / "t"))
    stage = TeacherStage(cfg.stage, cfg)
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
    with pytest.raises(ValueError, match="identity_loss_weight"):
        resolve_config("teacher", "teacher_smoke", ["stage.identity_loss_weight=-1"], out=str(tmp_path / "neg"))


def test_named_loss_pulls_it_shots_towards_the_init_told_the_characters_name(smoke_models, tmp_path):
    from shotstream.training.teacher import TeacherStage

    root, ae, teacher = smoke_models
    overrides = [f"stage.autoencoder={ae}", f"stage.init={teacher}", "stage.named_loss_weight=1",
                 "stage.pronoun_share=1", "stage.text_dropout=0", "stage.context_dropout=0"]
    cfg = resolve_config("teacher", "teacher_smoke", overrides, out=str(tmp_path / "t"))
    stage = TeacherStage(cfg.stage, cfg)
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
        resolve_config("teacher", "teacher_smoke", ["stage.named_loss_weight=1"], out=str(tmp_path / "noinit"))


def test_shape_contrast_pushes_away_from_the_target_drawn_in_another_shape(smoke_models, tmp_path):
    from shotstream.training.teacher import TeacherStage

    root, ae, teacher = smoke_models
    cfg = resolve_config("teacher", "teacher_smoke", [f"stage.autoencoder={ae}", f"stage.init={teacher}", "stage.story_pool=3",
                                                      "stage.shape_contrast=0.2"], out=str(tmp_path / "t"))
    stage = TeacherStage(cfg.stage, cfg)
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
        resolve_config("teacher", "teacher_smoke", ["stage.shape_contrast=1"], out=str(tmp_path / "neg"))


def test_character_crop_frames_the_characters_cells_and_passes_gradients():
    from shotstream.training.shape_classifier import character_crop

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
    from shotstream.training.shape_classifier import ShapeClassifier, character_crop
    from shotstream.training.teacher import TeacherStage

    root, ae, teacher = smoke_models
    classifier = run_stage("shape_classifier", "shape_classifier_smoke", tmp_path / "sc", f"stage.autoencoder={ae}") / "shape_classifier"
    assert (tmp_path / "sc" / "samples" / "step_00000002" / "eval.txt").is_file()
    cfg = resolve_config("teacher", "teacher_smoke", [f"stage.autoencoder={ae}", f"stage.init={teacher}", "stage.text_dropout=0",
                                                      "stage.shape_loss_weight=1", f"stage.shape_classifier={classifier}"],
                         out=str(tmp_path / "t"))
    stage = TeacherStage(cfg.stage, cfg)
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


def test_ode_pair_shards_of_unknown_origin_are_refused(smoke_models, tmp_path):
    from shotstream.training.ode import PairsConfig, make_pairs

    root, ae, teacher = smoke_models
    out = tmp_path / "pairs"
    out.mkdir()
    (out / "pairs_00000.safetensors").write_bytes(b"left by an older run")  # no pairs.json beside it
    with pytest.raises(ValueError, match="without pairs.json"):
        make_pairs(PairsConfig(teacher=str(teacher), autoencoder=str(ae), out=str(out), steps=2, shard_size=2),
                   count=2, progress=False)

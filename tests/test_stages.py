"""Smoke runs of the real training stages: autoencoder -> teacher -> generate, a few steps each."""

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers import run_stage
from shotstream.model.loading import from_pretrained
from shotstream.training.cli import resolve_config
from shotstream.video import read_mp4


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
    assert "image_loss" in logged  # joint image training ran


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
    from shotstream.training.teacher import TeacherConfig

    cfg = TeacherConfig(character_loss_weight=5, character_weight_from_step=2000)
    assert [cfg.character_weight_at(step) for step in (1, 2000, 2001, 3000)] == [1.0, 1.0, 5.0, 5.0]


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
        cut = resolve_config("teacher", "teacher_smoke", overrides + [f"stage.target_frames={n}", f"stage.story_pool={pool}"],
                             out=str(tmp_path / f"{pool}-{n}"))
        stage = TeacherStage(cut.stage, cut)
        batch = stage.batch(step=1, shard=0, num_shards=1)[0]
        assert batch.target.shape[1] == n and batch.loss_weight.shape[1] == n
        if pool == "0":  # the same examples as the whole shots: their first latent frames, context and captions
            assert torch.allclose(batch.target, full.target[:, :n], atol=1e-5)
            assert torch.equal(batch.context, full.context) and torch.equal(batch.text, full.text)
            assert torch.equal(batch.loss_weight, full.loss_weight[:, :n])
    with pytest.raises(ValueError, match="target_frames"):
        TeacherConfig(target_frames=-1).validate()


def test_story_pool_encodes_each_example_once_as_collate_would(smoke_models, tmp_path):
    from shotstream.autoencoder import TinyVideoAutoencoder
    from shotstream.video import to_model_video
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
    from shotstream.video import to_uint8
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


def test_ode_pair_shards_of_unknown_origin_are_refused(smoke_models, tmp_path):
    from shotstream.training.ode import PairsConfig, make_pairs

    root, ae, teacher = smoke_models
    out = tmp_path / "pairs"
    out.mkdir()
    (out / "pairs_00000.safetensors").write_bytes(b"left by an older run")  # no pairs.json beside it
    with pytest.raises(ValueError, match="without pairs.json"):
        make_pairs(PairsConfig(teacher=str(teacher), autoencoder=str(ae), out=str(out), steps=2, shard_size=2),
                   count=2, progress=False)

"""Wiring: the streaming path and the training path feed the model the same shot.

test_model.py pins the model's maths (cached == block-causal forward, the RoPE phase, context
selection). This file pins what is fed to it: each frame's shot flag, position and caption slot,
the noise level of every call, what each cache write holds and when it happens.

- Twins: a shot streamed as the app streams it (`write_global_context` + `rollout_shot`, or the
  session itself) and the same shot read as training reads it (`teacher_forcing_velocity`, or
  `NextShotBatch.velocity` for the bidirectional teacher) must give the same velocities. A bug on
  either side alone breaks the twin.
- Direct assertions, for bugs a twin cannot see (made the same way on both sides).
- The training stages' objectives, each built so that its classic bug changes the asserted value.

`scripts/mutation_check.py` plants one-line bugs in these seams: every one must fail a test.
"""

import dataclasses
import inspect
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from helpers import CHUNK, make_pipe
from shotstream import flow_matching as fm
from shotstream.conditioning import NextShotConditioning, next_shot_velocity, unconditional
from shotstream.config import ModelConfig, apply_overrides, get_preset
from shotstream.model.dit import FrameInfo, WanDiT
from shotstream.model.memory import DualCache, KVCache, select_context_frames
from shotstream.rollout import rollout_shot, write_global_context
from shotstream.training.data import NextShotBatch, collate, example_from_history
from shotstream.training.ode import teacher_forcing_velocity
from shotstream.video import to_model_video
from shotstream.world.story import sample_story

TOL = dict(rtol=1e-5, atol=1e-5)  # fp32: a cached forward sums in another order than a masked one


# ---------------------------------------------------------------------------------------------
# Recording what the model is fed


@dataclass
class Call:
    """One forward of the model: its inputs, the cache prefix it attended to, and its velocity."""

    x: torch.Tensor  # [B, F, C, h, w]
    t: torch.Tensor  # [B, F]
    text: torch.Tensor  # [B, S, L, D]
    text_mask: torch.Tensor
    frames: FrameInfo
    cache: KVCache | None
    prefix: int  # tokens in the cache before this forward (global + local context)
    v: torch.Tensor | None  # (None: a pass that only writes the cache)

    @property
    def clean(self) -> bool:  # a t = 0 pass: a cache write
        return bool((self.t == 0).all())


@contextmanager
def recorded(model: WanDiT):
    """Every forward of `model` while open, as a list of `Call`s."""
    calls: list[Call] = []
    signature = inspect.signature(model.forward)

    def hook(module, args, kwargs, out):
        a = signature.bind(*args, **kwargs).arguments
        cache = a.get("cache")
        frames = FrameInfo(*(getattr(a["frames"], k).clone() for k in ("pos", "shot", "text_index", "cut")))
        calls.append(Call(a["x"].detach().clone(), a["timestep"].clone(), a["text"].detach().clone(), a["text_mask"].clone(),
                          frames, cache, cache.length if cache is not None else 0, out.detach().clone() if out is not None else None))

    handle = model.register_forward_hook(hook, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


def split_streamed(calls: list[Call], steps: int) -> tuple[list[Call], list[list[Call]], list[Call]]:
    """A causal shot's calls -> (global writes, each chunk's denoising calls, local cache writes).
    Every chunk but the last is followed by one t = 0 write: no later chunk reads the last one's
    (a rolling memory, which carries its window into the next shot, writes it too)."""
    first = next(i for i, c in enumerate(calls) if not c.clean)
    writes, rest = calls[:first], calls[first:]
    chunks, local = [], []
    while rest:
        chunks.append(rest[:steps])
        assert not any(c.clean for c in chunks[-1]), "each chunk: its denoising steps"
        rest = rest[steps:]
        if rest:
            local.append(rest[0])
            assert local[-1].clean, "then one t = 0 write, unless it was the shot's last chunk"
            rest = rest[1:]
    return writes, chunks, local


def teacher_forced(model: WanDiT, batch: NextShotBatch, chunks: list[list[Call]]):
    """For each denoising step i, (streamed velocity of every chunk at step i, the teacher-forcing
    velocity of the same noisy states). The clean target is what the stream yields: each chunk's x0
    from its last step (never what the cache writes read: a twin must not copy the stream's bugs)."""
    clean = torch.cat([fm.predict_x0(c[-1].x, c[-1].v, c[-1].t / fm.TIMESTEP_SCALE) for c in chunks], 1)
    pairs = []
    for i in range(len(chunks[0])):
        noisy = torch.cat([c[i].x for c in chunks], 1)
        sigma = torch.cat([c[i].t for c in chunks], 1) / fm.TIMESTEP_SCALE
        with torch.no_grad():
            pairs.append((torch.cat([c[i].v for c in chunks], 1), teacher_forcing_velocity(model, batch, clean, noisy, sigma)))
    return pairs


def perturbed(model: WanDiT, seed: int = 0) -> WanDiT:
    """Random weights everywhere (Wan's init zeroes the head and a learned indicator)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


# ---------------------------------------------------------------------------------------------
# Twins: the streamed shot and the teacher-forced shot


def random_batch(shot: int, B=2, C=4, F=5, seed=1) -> NextShotBatch:
    """Shot `shot` of two stories, with C conditional frames from earlier shots (none for shot 0),
    a different caption in every slot and some padding tokens."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, C + 1, 6, dtype=torch.bool)
    mask[:, :, 4:] = False
    return NextShotBatch(
        target=torch.randn(B, F, 4, 4, 4, generator=g),
        context=torch.randn(B, C, 4, 4, 4, generator=g),
        context_valid=torch.full((B, C), shot > 0),
        context_shots=torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1]])[:, :C] if shot else torch.zeros(B, C, dtype=torch.long),
        text=torch.randn(B, C + 1, 6, 8, generator=g),
        text_mask=mask,
        shot=torch.full((B,), shot),
    )


def conditioning(model: WanDiT, batch: NextShotBatch) -> NextShotConditioning:
    """What a session builds for the batch's shot: frame i of the context reads caption slot i,
    the target slot C; a first shot has no context at all."""
    B, n = batch.shot.shape[0], batch.budget if batch.context_valid.any() else 0
    return NextShotConditioning(batch.context[:, :n], batch.context_shots[:, :n], torch.arange(n).expand(B, -1),
                                model.embed_text(batch.text), batch.text_mask, target_slot=batch.budget, shot=batch.shot,
                                chunk_frames=model.cfg.chunk_frames)


@pytest.mark.parametrize("shot", [0, 2])
@pytest.mark.parametrize("indicator", ["rope", "none", "learned"])
def test_streamed_shot_equals_its_teacher_forced_twin(indicator, shot):
    """The rollout loop through the real caches equals one teacher-forcing forward (what the ODE
    stage trains) at every denoising step of every chunk, first shot and later shot alike."""
    cfg = ModelConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=2, text_dim=8, chunk_frames=2, shot_indicator=indicator)
    model = perturbed(WanDiT(cfg, 4))
    batch = random_batch(shot)
    B, F = batch.target.shape[:2]
    sigmas = fm.student_sigmas([1000, 750, 500, 250], 5.0)
    memory = DualCache(cfg, model.grid(4, 4), F, batch=B)
    with torch.no_grad(), recorded(model) as calls:
        cond = conditioning(model, batch)
        write_global_context(model, memory, cond)
        list(rollout_shot(model, memory, cond, torch.randn(B, F, 4, 4, 4), sigmas, torch.Generator().manual_seed(3)))
    writes, chunks, local = split_streamed(calls, len(sigmas))
    assert len(writes) == (shot > 0) and [len(c[0].x[0]) for c in chunks] == [2, 2, 1] and len(local) == 2
    for streamed, forced in teacher_forced(model, batch, chunks):
        torch.testing.assert_close(streamed, forced, **TOL)


def test_rollout_stops_each_chunk_at_its_exit_step_with_gradients_there_only():
    """Self-forcing's rollout: chunk j runs steps 0..exit_steps[j] (the last one with gradients, if
    j is a gradient chunk) and its exit x0 is what the chunk yields and writes to the cache."""
    cfg = ModelConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=2, text_dim=8, chunk_frames=2)
    model = perturbed(WanDiT(cfg, 4))
    batch = random_batch(2)
    B, F = batch.target.shape[:2]
    sigmas = fm.student_sigmas([1000, 750, 500, 250], 5.0)
    memory = DualCache(cfg, model.grid(4, 4), F, batch=B)
    exits = [2, 0, 3]
    with recorded(model) as calls:
        cond = conditioning(model, batch)
        write_global_context(model, memory, cond)
        out = list(rollout_shot(model, memory, cond, torch.randn(B, F, 4, 4, 4), sigmas, torch.Generator().manual_seed(3),
                                exit_steps=exits, grad_chunks={1}))
    calls = calls[1:]  # (the global write)
    for j, (e, x0) in enumerate(zip(exits, out)):
        steps, calls = calls[:e + 1], calls[e + 1:]
        assert [c.t[0, 0].item() for c in steps] == pytest.approx([1000 * s for s in sigmas[:e + 1].tolist()])
        assert x0.requires_grad == (j == 1)
        torch.testing.assert_close(x0.detach(), fm.predict_x0(steps[-1].x, steps[-1].v, float(sigmas[e])))
        if j < len(exits) - 1:  # (the last chunk's K/V are read by none)
            write, calls = calls[0], calls[1:]
            assert write.clean
            torch.testing.assert_close(write.x, x0.detach())
    assert not calls


def session_story(pipe, shots: int = 3, seed: int = 5):
    """A StoryWorld story with a global caption, streamed shot by shot: (story, session, the calls
    of each shot). A causal session ends each shot by writing the next one's global context: that
    write is the first call of the next shot's."""
    story = sample_story(seed, num_shots=shots, frames_per_shot=pipe.config.video.frames_per_shot, global_caption_prob=1.0)
    session = pipe.session(seed=0, global_caption=story.global_caption)
    bounds = []
    with recorded(pipe.model) as calls:
        for k in range(shots):
            start = len(calls)
            session.submit(story.shots[k].caption)
            list(session.stream())
            bounds.append((start, len(calls)))
    if pipe.kind == "bidirectional":
        return story, session, [calls[a:b] for a, b in bounds]
    return story, session, [calls[a - (k > 0):b - 1] for k, (a, b) in enumerate(bounds)]


def story_batch(pipe, story, session, k: int) -> NextShotBatch:
    """Shot k as the training data reads it: its conditional frames from the session's own shots
    (as the inter-shot stage picks them), encoded and captioned by `collate`."""
    e = example_from_history(story, k, [s.frames for s in session.shots[:k]], None, cfg=pipe.config)
    return collate([e], pipe.autoencoder, pipe.text_encoder, pipe.config, pipe.device)


@pytest.mark.parametrize("indicator", ["rope", "learned"])
def test_a_sessions_shots_equal_their_teacher_forced_twins_from_training_batches(indicator):
    """What a user gets from `ShotStreamSession` (its context selection, encoding, caption slots
    with the global caption, flags, caches) equals the training path: `collate` of the same story
    and history, then teacher forcing. Shot 0 (no context), 1 (one earlier shot), 2 (two)."""
    pipe = make_pipe(text_len=48, shot_indicator=indicator)
    story, session, per_shot = session_story(pipe)
    steps = len(pipe.config.sampler.student_timesteps)
    for k, calls in enumerate(per_shot):
        writes, chunks, local = split_streamed(calls, steps)
        assert len(writes) == (k > 0)
        batch = story_batch(pipe, story, session, k)
        for streamed, forced in teacher_forced(pipe.model, batch, chunks):
            torch.testing.assert_close(streamed, forced, **TOL)


def test_the_bidirectional_teacher_streams_what_its_training_batches_read():
    """The teacher behind the session (Euler with CFG) and a training batch read bidirectionally
    (`next_shot_velocity`: teacher, real score, critic) with its unconditional branch give the same velocities on the same
    story, at the shifted teacher sigmas, context clean at t = 0."""
    pipe = make_pipe(kind="bidirectional", text_len=48)
    sampler = pipe.config.sampler
    story, session, per_shot = session_story(pipe)
    null = pipe.text_encoder.null_caption()
    sigmas = fm.teacher_sigmas(sampler.teacher_steps, sampler.teacher_shift)
    assert sampler.guidance_scale != 1 and sampler.teacher_shift != 1
    for k, calls in enumerate(per_shot):
        batch = story_batch(pipe, story, session, k)
        batch_cond = batch.conditioning(pipe.model.cfg.chunk_frames)
        uncond = unconditional(pipe.model, batch_cond, null, sampler.guidance_scale, sampler.context_scale)
        assert len(calls) == 2 * sampler.teacher_steps  # conditional, then unconditional, per step
        for step, (cond, unc) in enumerate(zip(calls[::2], calls[1::2])):
            Cf = cond.x.shape[1] - batch.target.shape[1]
            assert Cf == len(select_context_frames([len(s.frames) for s in session.shots[:k]], pipe.config.model.context_frames))
            assert not cond.t[:, :Cf].any() and not unc.t[:, :Cf].any()
            x, sigma = cond.x[:, Cf:], cond.t[:, -1] / fm.TIMESTEP_SCALE
            torch.testing.assert_close(cond.t[:, Cf:], torch.full_like(cond.t[:, Cf:], float(sigmas[step]) * 1000))
            with torch.no_grad():
                torch.testing.assert_close(cond.v[:, Cf:].float(), next_shot_velocity(pipe.model, batch_cond, x, sigma), **TOL)
                torch.testing.assert_close(unc.v[:, Cf:].float(), uncond(x, sigma), **TOL)


# ---------------------------------------------------------------------------------------------
# Direct assertions: what each call is fed, what each cache holds


def test_session_feeds_every_frame_its_flag_position_caption_and_noise_level():
    """Shot by shot: one global write at t = 0 of the selected frames (their own shot's flag and
    caption, positions 0..C-1); then per chunk the student's shifted sigmas in order, on positions
    that advance after the context, the current shot's flag and caption, attending to the global
    context and the chunks written before it; then one t = 0 write of the chunk's clean x0."""
    pipe = make_pipe(text_len=48, shot_indicator="learned")
    story, session, per_shot = session_story(pipe)
    tpf, F = session.memory.tokens_per_frame, pipe.config.video.latent_frames_per_shot
    sigmas = fm.student_sigmas(pipe.config.sampler.student_timesteps, pipe.config.sampler.shift)
    assert pipe.config.sampler.shift != 1

    def caption(s):
        text, _ = pipe.embed_captions([f"{story.global_caption} {story.shots[s].caption}"])
        return text[0, 0]

    for k, calls in enumerate(per_shot):
        writes, chunks, local = split_streamed(calls, len(sigmas))
        picks = select_context_frames([len(s.frames) for s in session.shots[:k]], pipe.config.model.context_frames)
        Cf = len(picks)
        assert len(writes) == (k > 0)
        if k:
            (w,) = writes
            assert w.prefix == 0 and w.cache is session.memory.kv
            images = torch.stack([to_model_video(session.shots[s].frames[f:f + 1], pipe.device)[0] for s, f in picks])
            torch.testing.assert_close(w.x[0], pipe.autoencoder.encode_image(images)[:, 0])
            assert w.frames.pos[0].tolist() == list(range(Cf))
            assert w.frames.shot[0].tolist() == [s for s, _ in picks]
            for i, (s, _) in enumerate(picks):
                torch.testing.assert_close(w.text[0, w.frames.text_index[0, i]], caption(s))
        assert sum(len(c[0].x[0]) for c in chunks) == F
        start = 0
        assert len(local) == len(chunks) - 1  # the last chunk's K/V are read by none: not written
        for steps, write in zip(chunks, local + [None]):
            n = steps[0].x.shape[1]
            for i, c in enumerate(steps):
                torch.testing.assert_close(c.t, torch.full_like(c.t, float(sigmas[i]) * 1000))
                assert c.prefix == (Cf + start) * tpf  # the global context and this shot's earlier chunks
                assert c.frames.pos[0].tolist() == list(range(Cf + start, Cf + start + n))
                assert c.frames.shot[0].tolist() == [k] * n
                assert c.frames.cut[0].tolist() == [k > 0 and start + j < CHUNK for j in range(n)]
                assert (c.frames.text_index == c.frames.text_index[0, 0]).all()
                torch.testing.assert_close(c.text[0, c.frames.text_index[0, 0]], caption(k))
            last = steps[-1]
            if write is not None:
                x0 = fm.predict_x0(last.x, last.v.float(), float(sigmas[-1]))
                torch.testing.assert_close(write.x, x0)  # the clean chunk, not the noisy one
                assert write.prefix == (Cf + start) * tpf and write.frames.pos.equal(last.frames.pos)
            start += n
    # after the story: the next shot's global context (6 frames of 3 shots) and nothing local yet
    assert session.memory.global_context.tokens == 6 * tpf and session.memory.kv.length == 6 * tpf


def test_a_shot_stopped_and_retried_is_the_shot_never_stopped():
    """Cancel mid-shot (after a chunk has been written to the local cache) and submit it again:
    the retry starts from an empty local cache and streams exactly what an uncancelled run does,
    with decoding overlapped (the denoiser a chunk ahead) or not."""
    reference = make_pipe().session(seed=4)
    for p in ("a red circle walks left", "it jumps"):
        reference.submit(p)
    list(reference.stream())
    for overlap in (False, True):
        session = make_pipe().session(seed=4, overlap_decode=overlap)
        session.submit("a red circle walks left")
        list(session.stream())
        session.submit("it jumps")
        for chunk in session.stream():
            if chunk.chunk == 1:
                session.cancel()
        assert len(session.shots) == 1
        session.submit("it jumps")
        list(session.stream())
        assert np.array_equal(session.story_frames(), reference.story_frames()), f"overlap_decode={overlap}"


# ---------------------------------------------------------------------------------------------
# Samplers


def test_teacher_sigmas_are_the_shifted_uniform_grid():
    sigmas = fm.teacher_sigmas(4, 3.0)
    u = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64)
    torch.testing.assert_close(sigmas, 3 * u / (1 + 2 * u))
    assert fm.teacher_sigmas(4, 1.0).tolist() == u.tolist()


def test_few_step_sampler_renoises_its_x0_to_the_next_sigma():
    """Step i predicts x0 from x at sigmas[i]; step i+1 sees x0 noised with fresh noise to
    sigmas[i+1] exactly; the result is the last step's x0."""
    sigmas = fm.student_sigmas([1000, 750, 500, 250], 8.0)
    target = torch.randn(2, 3, 4)
    seen = []

    def denoise(x, sigma):  # a perfect denoiser of `target`
        seen.append((x.clone(), sigma.clone()))
        return (x - target) / sigma[:, None, None]

    noise = torch.randn(2, 3, 4)
    out = fm.few_step_sample(denoise, noise, sigmas, torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    assert torch.equal(seen[0][0], noise)
    for i in range(1, len(sigmas)):
        fresh = torch.randn(noise.shape, generator=g)
        torch.testing.assert_close(seen[i][0], (1 - sigmas[i].item()) * target + sigmas[i].item() * fresh)
        assert torch.equal(seen[i][1], torch.full((2,), sigmas[i].item()))
    torch.testing.assert_close(out, target)


# ---------------------------------------------------------------------------------------------
# Training objectives, on random tiny checkpoints


@pytest.fixture(scope="module")
def random_models(tmp_path_factory):
    """A random autoencoder, bidirectional teacher and causal student of a 2-layer tiny preset (9
    frames a shot: 3 latent frames, one chunk), saved as the stages load them."""
    from shotstream.autoencoder import TinyVideoAutoencoder
    from shotstream.model.loading import save_pretrained

    root = tmp_path_factory.mktemp("random_models")
    config = apply_overrides(get_preset("tiny"), ["model.dim=32", "model.ffn_dim=64", "model.num_layers=2",
                                                   "model.num_heads=2", "video.frames_per_shot=9"]).validate()
    torch.manual_seed(0)
    TinyVideoAutoencoder(config.video, base_channels=8).save_pretrained(root / "autoencoder")
    save_pretrained(perturbed(WanDiT(config.model, config.video.latent_channels), 1), config, root / "teacher", kind="bidirectional")
    save_pretrained(perturbed(WanDiT(config.model, config.video.latent_channels), 2), config, root / "student", kind="causal")
    return root


def stage(name: str, root, tmp_path, *overrides):
    """A training stage on the random checkpoints (a self-forcing stage unless overrides say more)."""
    from shotstream.training.cli import load_stage, resolve_config

    models = [f"stage.teacher={root / 'teacher'}"]
    if name != "ode":
        models += [f"stage.autoencoder={root / 'autoencoder'}", f"stage.init={root / 'student'}"]
    cfg = resolve_config(name, f"{name}_smoke", [*models, *overrides], out=str(tmp_path / name))
    return load_stage(name)(cfg.stage, cfg)


def test_self_forcing_rollout_is_the_streamed_twin_of_its_batch(random_models, tmp_path):
    """The stage turns a training batch into the rollout's conditioning (flags, caption slots,
    context): streamed in full, it equals teacher forcing on that batch."""
    intra = stage("intra", random_models, tmp_path)
    batch = intra.batch(3, 0, 1)
    assert int(batch.shot[0]) > 0 and batch.context_valid.any()
    with torch.no_grad(), recorded(intra.generator) as calls:
        intra.rollout(batch, grad=False, full=True)
    writes, chunks, local = split_streamed(calls, len(intra.sigmas))
    assert len(writes) == 1
    for streamed, forced in teacher_forced(intra.generator, batch, chunks):
        torch.testing.assert_close(streamed, forced, **TOL)


def test_exit_steps_are_drawn_from_every_step(random_models, tmp_path, monkeypatch):
    from shotstream.training import self_forcing

    intra = stage("intra", random_models, tmp_path)
    exits = []

    def fake_rollout(model, memory, cond, noise, sigmas, exit_steps=None, **kw):
        exits.append(exit_steps)
        yield noise

    monkeypatch.setattr(self_forcing, "rollout_shot", fake_rollout)
    batch = intra.batch(0, 0, 1)
    torch.manual_seed(0)
    for _ in range(40):
        intra.rollout(batch, grad=False)
    assert {e for run in exits for e in run} == set(range(len(intra.sigmas)))
    intra.rollout(batch, grad=False, full=True)
    assert exits[-1] == [len(intra.sigmas) - 1] * len(exits[-1])


def test_critic_and_generator_losses_read_the_students_rollout_with_clean_context(random_models, tmp_path, monkeypatch):
    """Both DMD losses take the rollout of this step (never the ground-truth target); every
    teacher / critic forward puts the context at t = 0 and only the target at its noise level."""
    intra = stage("intra", random_models, tmp_path)
    batch = intra.batch(3, 0, 1)
    C = batch.budget
    rollouts, inputs = [], []
    rollout = intra.rollout
    monkeypatch.setattr(intra, "rollout", lambda *a, **kw: rollouts.append(rollout(*a, **kw)) or rollouts[-1])
    for name in ("critic_loss", "generator_loss"):
        loss = getattr(intra.dmd, name)
        monkeypatch.setattr(intra.dmd, name, lambda x0, b, loss=loss: inputs.append(x0) or loss(x0, b))
    with recorded(intra.critic) as fake, recorded(intra.dmd.real_score) as real:
        intra.loss("critic", batch, 0)
        intra.loss("generator", batch, 1)
    assert len(inputs) == len(rollouts) == 2
    assert all(x is r for x, r in zip(inputs, rollouts)) and not torch.equal(rollouts[0], batch.target)
    assert fake and real
    for c in fake + real:
        assert not c.t[:, :C].any() and (c.t[:, C:] > 0).all()


def test_inter_shot_stage_conditions_on_the_students_own_shots(random_models, tmp_path):
    """Shot 1 of an inter-shot story is conditioned on the student's decoded shot 0 (its history),
    not on the story's ground-truth render."""
    inter = stage("inter", random_models, tmp_path, "stage.max_shots=2")
    inter.batch(0, 0, 1)
    batch = inter.batch(1, 0, 1)
    assert int(batch.shot[0]) == 1
    for b, history in enumerate(inter.history):
        picks = select_context_frames([len(h) for h in history], batch.budget)
        frames = torch.stack([to_model_video(history[s][f:f + 1], inter.device)[0] for s, f in picks])
        torch.testing.assert_close(batch.context[b, :len(picks)], inter.autoencoder.encode_image(frames)[:, 0])
        assert batch.context_shots[b, :len(picks)].tolist() == [s for s, _ in picks]


def test_ode_loss_is_zero_exactly_when_the_student_predicts_the_teachers_x0(random_models, tmp_path, monkeypatch):
    """The ODE stage regresses the student's x0 prediction, from the trajectory's state at each
    chunk's sampled step and that step's sigma, onto the teacher's x0."""
    from shotstream.training import ode
    from shotstream.training.ode import PairsConfig, make_pairs

    pairs = make_pairs(PairsConfig(teacher=str(random_models / "teacher"), autoencoder=str(random_models / "autoencoder"),
                                   out=str(tmp_path / "pairs"), steps=2, shard_size=2), count=2, progress=False)
    student = stage("ode", random_models, tmp_path, f"stage.pairs={pairs}")
    (pick, step_idx) = batch = student.batch(0, 0, 1)
    states, seen = pick["states"].float(), []

    def velocity_to(x0):
        def fn(model, nb, clean, noisy, sigma):
            seen.append((noisy, sigma))
            return fm.x0_to_velocity(noisy, x0, sigma)
        return fn

    monkeypatch.setattr(ode, "teacher_forcing_velocity", velocity_to(pick["x0"].float()))
    assert student.loss("model", batch, 0)[0].item() < 1e-10
    noisy, sigma = seen[0]
    for b in range(len(step_idx)):
        for f, s in enumerate(step_idx[b].tolist()):
            assert torch.equal(noisy[b, f], states[b, s, f]) and sigma[b, f] == student.sigmas[s]
    monkeypatch.setattr(ode, "teacher_forcing_velocity", velocity_to(pick["x0"].float() + 0.5))
    torch.testing.assert_close(student.loss("model", batch, 0)[0], torch.tensor(0.25))

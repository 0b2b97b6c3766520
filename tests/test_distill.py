"""Distillation pieces: teacher forcing is the exact twin of cached streaming; DMD's gradient."""

import dataclasses

import pytest
import torch

from shotstream import flow_matching as fm
from shotstream.conditioning import next_shot_velocity
from shotstream.config import ModelConfig
from shotstream.model.dit import WanDiT
from shotstream.model.memory import KVCache
from shotstream.training.data import NextShotBatch
from shotstream.training.dmd import DMD, DMDConfig
from shotstream.training.ode import teacher_forcing_mask, teacher_forcing_velocity


def small_model(seed=0) -> WanDiT:
    torch.manual_seed(seed)
    model = WanDiT(ModelConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=2, text_dim=8, chunk_frames=2), 4).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def small_batch(B=2, C=2, F=4, seed=1) -> NextShotBatch:
    g = torch.Generator().manual_seed(seed)
    return NextShotBatch(
        target=torch.randn(B, F, 4, 4, 4, generator=g),
        context=torch.randn(B, C, 4, 4, 4, generator=g),
        context_valid=torch.ones(B, C, dtype=torch.bool),
        context_shots=torch.zeros(B, C, dtype=torch.long),
        text=torch.randn(B, C + 1, 3, 8, generator=g),
        text_mask=torch.ones(B, C + 1, 3, dtype=torch.bool),
        shot=torch.ones(B, dtype=torch.long),
    )


def test_teacher_forcing_mask_layout():
    m = teacher_forcing_mask(context=1, frames=4, chunk=2)
    # rows/cols: [ctx | clean c0 c0 c1 c1 | noisy c0 c0 c1 c1]
    noisy_c1 = m[7]
    assert noisy_c1.tolist() == [True, True, True, False, False, False, False, True, True]
    assert m[0].tolist() == [True] + [False] * 8  # context sees only itself
    assert m[3].tolist() == [True, True, True, True, True, False, False, False, False]  # clean c1


def test_teacher_forcing_equals_cached_streaming():
    """Noisy chunk j in one teacher-forcing forward == the same chunk streamed after the clean
    chunks < j were written to the cache by t = 0 passes (what the ODE stage trains for)."""
    model, batch = small_model(), small_batch()
    B, F = batch.target.shape[:2]
    C = batch.budget
    g = torch.Generator().manual_seed(2)
    noisy = torch.randn(B, F, 4, 4, 4, generator=g)
    sigma = torch.tensor([[0.9, 0.9, 0.5, 0.5]]).expand(B, F)
    with torch.no_grad():
        tf = teacher_forcing_velocity(model, batch, batch.target, noisy, sigma)
        info = batch.conditioning(model.cfg.chunk_frames).frames(F)
        cache = KVCache(2, B, 2, 16, capacity=(C + F + 2) * 4)
        model(batch.context, torch.zeros(B, C), batch.text, batch.text_mask, info.slice(0, C), cache=cache)
        cache.commit()
        streamed = []
        for j in range(2):
            a, b = C + 2 * j, C + 2 * j + 2
            streamed.append(model(noisy[:, 2 * j:2 * j + 2], sigma[:, 2 * j:2 * j + 2] * 1000, batch.text, batch.text_mask,
                                  info.slice(a, b), cache=cache))
            model(batch.target[:, 2 * j:2 * j + 2], torch.zeros(B, 2), batch.text, batch.text_mask, info.slice(a, b), cache=cache)
            cache.commit()
    torch.testing.assert_close(tf, torch.cat(streamed, 1), rtol=1e-5, atol=1e-5)


def test_dmd_generator_gradient_is_the_normalised_score_difference():
    real, fake, gen = small_model(0), small_model(1), small_model(2)
    batch = small_batch()
    null = torch.zeros(1, 3, 8), torch.ones(1, 3, dtype=torch.bool)
    dmd = DMD(gen, real, fake, DMDConfig(guidance_scale=1.0), null, shift=3.0)
    x0 = torch.randn_like(batch.target, requires_grad=True)
    torch.manual_seed(5)
    loss, logs = dmd.generator_loss(x0, batch)
    loss.backward()
    # recompute the expected gradient with the same noise and sigma
    torch.manual_seed(5)
    sigma = dmd.sample_sigma(2, "cpu")
    x_t = fm.add_noise(x0.detach(), torch.randn_like(x0), sigma)
    with torch.no_grad():
        cond = batch.conditioning(real.cfg.chunk_frames)
        x_real = fm.predict_x0(x_t, next_shot_velocity(real, cond, x_t, sigma), sigma)
        x_fake = fm.predict_x0(x_t, next_shot_velocity(fake, cond, x_t, sigma), sigma)
    norm = (x0.detach() - x_real).abs().mean(dim=(1, 2, 3, 4), keepdim=True)
    expected = (x_fake - x_real) / norm / x0.numel()  # d/dx of 0.5 * mean((x - sg(x - g))^2)
    torch.testing.assert_close(x0.grad, expected, rtol=1e-4, atol=1e-7)
    assert logs["dmd_grad_norm"] > 0
    # identical real and fake scores -> no gradient at all
    same = DMD(gen, real, real, DMDConfig(guidance_scale=1.0), null, shift=3.0)
    x1 = torch.randn_like(batch.target, requires_grad=True)
    same.generator_loss(x1, batch)[0].backward()
    assert torch.count_nonzero(x1.grad) == 0


@pytest.mark.parametrize("context_scale", [1.0, 0.0])
def test_real_score_guidance_on_the_context_hides_it_from_the_unconditional_branch(context_scale):
    # At guidance scale 0 the real score is its unconditional branch alone: with as much guidance
    # on the context it must not depend on the conditional frames, with none (1) it must.
    real, batch = small_model(0), small_batch()
    other = dataclasses.replace(batch, context=torch.randn_like(batch.context))
    null = torch.zeros(1, 3, 8), torch.ones(1, 3, dtype=torch.bool)
    dmd = DMD(real, real, real, DMDConfig(guidance_scale=0.0, context_scale=context_scale), null, shift=3.0)
    x_t, sigma = torch.randn_like(batch.target), torch.full((2,), 0.7)
    with torch.no_grad():
        assert torch.equal(dmd.real_x0(batch, x_t, sigma), dmd.real_x0(other, x_t, sigma)) == (context_scale == 0.0)


def test_dmd_timesteps_follow_the_teacher_shift_unless_told_otherwise():
    null = torch.zeros(1, 3, 8), torch.ones(1, 3, dtype=torch.bool)
    models = small_model(0), small_model(1), small_model(2)
    draw = {}
    for name, cfg in (("teacher", DMDConfig()), ("uniform", DMDConfig(timestep_shift=1.0))):
        torch.manual_seed(0)
        draw[name] = DMD(*models, cfg, null, shift=3.0).sample_sigma(4096, "cpu")
    torch.manual_seed(0)
    u = 0.02 + 0.96 * torch.rand(4096)
    torch.testing.assert_close(draw["uniform"], u)
    torch.testing.assert_close(draw["teacher"], fm.shift_sigma(u, 3.0))
    assert (draw["uniform"] < 0.3).float().mean() > 2 * (draw["teacher"] < 0.3).float().mean()
    for bad in (DMDConfig(timestep_shift=-1.0), DMDConfig(min_sigma=0.5, max_sigma=0.4)):
        with pytest.raises(ValueError, match="stage"):
            bad.validate()


def test_critic_loss_trains_the_fake_score_only():
    real, fake, gen = small_model(0), small_model(1), small_model(2)
    fake.train()
    batch = small_batch()
    dmd = DMD(gen, real, fake, DMDConfig(), (torch.zeros(1, 3, 8), torch.ones(1, 3, dtype=torch.bool)), shift=3.0)
    loss, _ = dmd.critic_loss(torch.randn_like(batch.target, requires_grad=True), batch)
    loss.backward()
    assert all(p.grad is None for p in real.parameters()) and all(p.grad is None for p in gen.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in fake.parameters())

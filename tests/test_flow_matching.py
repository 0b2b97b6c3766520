"""Exact tests of the flow-matching schedule and samplers (shotstream/flow_matching.py)."""

import pytest
import torch

from shotstream import flow_matching as fm
from shotstream.config import SamplerConfig, ShotStreamConfig


def test_shift_matches_official_student_sigmas():
    cfg = SamplerConfig()
    s = fm.student_sigmas(cfg.student_timesteps, cfg.shift)
    assert [round(v, 3) for v in s.tolist()] == [1.0, 0.958, 0.889, 0.738]
    assert fm.shift_sigma(0.0, 8.0) == 0.0 and fm.shift_sigma(1.0, 8.0) == 1.0
    assert fm.shift_sigma(0.5, 1.0) == 0.5  # shift 1 is the identity
    with pytest.raises(ValueError, match="shift"):
        fm.shift_sigma(0.5, 0.0)


def test_teacher_sigmas_descend_to_zero():
    s = fm.teacher_sigmas(50, 3.0)
    assert s.shape == (51,) and s[0] == 1.0 and s[-1] == 0.0
    assert (s[1:] < s[:-1]).all()
    with pytest.raises(ValueError, match="positive integer"):
        fm.teacher_sigmas(0, 3.0)


@pytest.mark.parametrize("bad", [[], [500, 740], [1000, 740, 740], [1200, 500], [0]])
def test_student_timesteps_validated(bad):
    with pytest.raises(ValueError, match="student timesteps"):
        fm.student_sigmas(bad, 8.0)


def test_add_noise_predict_x0_predict_noise_inverse():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 3, 4, 5, 6, generator=g, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    for sigma in (0.3, torch.tensor([0.2, 0.9], dtype=torch.float64), torch.rand(2, 3, generator=g, dtype=torch.float64)):
        x_t = fm.add_noise(x0, noise, sigma)
        v = fm.velocity_target(x0, noise)
        torch.testing.assert_close(fm.predict_x0(x_t, v, sigma), x0, rtol=0, atol=1e-12)
        torch.testing.assert_close(fm.predict_noise(x_t, v, sigma), noise, rtol=0, atol=1e-12)
        torch.testing.assert_close(fm.x0_to_velocity(x_t, x0, sigma), v, rtol=0, atol=1e-10)
    # Per-frame sigma really is per frame: frame 1 of sample 0 gets its own level.
    sigma = torch.zeros(2, 3, dtype=torch.float64)
    sigma[0, 1] = 1.0
    x_t = fm.add_noise(x0, noise, sigma)
    assert torch.equal(x_t[0, 1], noise[0, 1]) and torch.equal(x_t[0, 0], x0[0, 0]) and torch.equal(x_t[1], x0[1])


def test_bad_shapes_raise():
    x = torch.zeros(2, 3, 4, 5, 5)
    with pytest.raises(ValueError, match="leading dims"):
        fm.add_noise(x, x, torch.zeros(3))
    with pytest.raises(ValueError, match="leading dims"):
        fm.add_noise(x, x, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="same shape"):
        fm.add_noise(x, torch.zeros(2, 3, 4, 5, 6), 0.5)
    with pytest.raises(ValueError, match="same shape"):
        fm.cfg(x, x[:1], 3.0)
    with pytest.raises(ValueError, match="descending"):
        fm.euler_sample(lambda x, s: x, x, [0.0, 1.0])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fm.few_step_sample(lambda x, s: x, x, [1.5, 0.5])
    with pytest.raises(ValueError, match="exit_step"):
        fm.few_step_sample(lambda x, s: x, x, [1.0, 0.5], exit_step=2)
    with pytest.raises(ValueError, match="output"):
        fm.euler_sample(lambda x, s: x[:, :1], x, [1.0, 0.0])


def test_euler_on_straight_velocity_field_reaches_x0_exactly():
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(2, 3, 4, 8, 8, generator=g, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)

    # The true rectified-flow field for a single data point: v(x, sigma) = (x - x0) / sigma.
    def velocity(x, sigma):
        assert sigma.shape == (2,)
        return (x - x0) / sigma.view(-1, 1, 1, 1, 1)

    for sigmas in (fm.teacher_sigmas(7, 3.0), fm.teacher_sigmas(1, 1.0)):
        out = fm.euler_sample(velocity, noise, sigmas)
        torch.testing.assert_close(out, x0, rtol=0, atol=1e-12)


def test_guidance_on_caption_and_context_is_instruct_pix2pix_through_one_unconditional_branch():
    x, sigma = torch.zeros(2, 3), torch.ones(2)
    cond, no_caption, no_context = torch.randn(3, 2, 3).unbind(0)
    calls = []

    def fn(v, name):
        return lambda x, s: calls.append(name) or v

    for scale, context_scale in ((3.0, 1.0), (3.0, 3.0), (3.0, 2.0), (5.0, 1.5)):
        calls.clear()
        forwards = SamplerConfig(guidance_scale=scale, context_scale=context_scale).teacher_forwards_per_step
        u = fm.unconditional_fn(fn(no_caption, "caption"), fn(no_context, "context"), scale, context_scale)
        expected = no_context + context_scale * (no_caption - no_context) + scale * (cond - no_caption)
        torch.testing.assert_close(fm.cfg(cond, u(x, sigma), scale), expected)
        # a branch is only run when its weight is not zero
        assert calls == {1.0: ["caption"], scale: ["context"]}.get(context_scale, ["caption", "context"])
        assert forwards == 1 + len(calls)
    assert fm.unconditional_fn(fn(no_caption, "c"), fn(no_context, "n"), 1.0) is None
    with pytest.raises(ValueError, match="needs guidance on the caption"):
        fm.unconditional_fn(fn(no_caption, "c"), fn(no_context, "n"), 1.0, context_scale=2.0)
    with pytest.raises(ValueError, match="sampler.context_scale=2.0 needs guidance"):  # refused when loaded
        ShotStreamConfig(sampler=SamplerConfig(guidance_scale=1.0, context_scale=2.0)).validate()


def test_cfg_applies_to_all_channels():
    x = torch.zeros(1, 2, 4, 3, 3)
    v_cond, v_uncond = torch.ones_like(x), torch.zeros_like(x)
    guided = fm.cfg(v_cond, v_uncond, 3.0)
    assert torch.equal(guided, torch.full_like(x, 3.0))  # every channel, not 3 of 4
    out = fm.euler_sample(lambda x, s: torch.ones_like(x), x, [1.0, 0.0], guidance_scale=3.0,
                          uncond_fn=lambda x, s: torch.zeros_like(x))
    assert torch.equal(out, torch.full_like(x, -3.0))
    with pytest.raises(ValueError, match="uncond_fn"):
        fm.euler_sample(lambda x, s: x, x, [1.0, 0.0], guidance_scale=3.0)


def test_few_step_sample_renoises_and_is_deterministic():
    sigmas = fm.student_sigmas(SamplerConfig().student_timesteps, 8.0)
    target = torch.full((2, 3, 4, 2, 2), 0.5)
    seen = []

    def denoise(x, sigma):
        seen.append(sigma.clone())
        return (x - target) / sigma.view(-1, 1, 1, 1, 1)  # a perfect denoiser for `target`

    def run(seed, **kw):
        g = torch.Generator().manual_seed(seed)
        noise = torch.randn(target.shape, generator=g)
        return fm.few_step_sample(denoise, noise, sigmas, generator=g, **kw)

    a = run(0)
    torch.testing.assert_close(a, target)
    assert len(seen) == 4 and [round(float(s[0]), 3) for s in seen] == [1.0, 0.958, 0.889, 0.738]

    # A denoiser that depends on its input: fresh noise matters, and the same seed repeats it.
    def noisy(x, sigma):
        return x

    g1, g2, g3 = (torch.Generator().manual_seed(s) for s in (5, 5, 6))
    n = torch.randn(target.shape, generator=torch.Generator().manual_seed(9))
    r1 = fm.few_step_sample(noisy, n, sigmas, generator=g1)
    r2 = fm.few_step_sample(noisy, n, sigmas, generator=g2)
    r3 = fm.few_step_sample(noisy, n, sigmas, generator=g3)
    assert torch.equal(r1, r2) and not torch.equal(r1, r3)
    # A trailing 0 is ignored.
    assert torch.equal(r1, fm.few_step_sample(noisy, n, torch.cat([sigmas, torch.zeros(1, dtype=sigmas.dtype)]),
                                              generator=torch.Generator().manual_seed(5)))


def test_few_step_exit_step_and_gradient_control():
    sigmas = [1.0, 0.75, 0.5]
    w = torch.tensor(2.0, requires_grad=True)
    calls = []

    def denoise(x, sigma):
        calls.append(torch.is_grad_enabled())
        return x * w

    noise = torch.ones(1, 1, 1, 1, 1)
    out = fm.few_step_sample(denoise, noise, sigmas, generator=torch.Generator().manual_seed(0), exit_step=1,
                             grad_exit_only=True)
    assert calls == [False, True]
    assert out.requires_grad
    out.sum().backward()
    assert w.grad is not None
    # exit_step 0 returns the first x0 prediction: x - 1.0 * (x * w) = 1 - 2 = -1.
    assert float(fm.few_step_sample(denoise, noise, sigmas, exit_step=0).detach()) == -1.0


def test_trajectory_records_exact_states_at_student_sigmas():
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(2, 3, 4, 2, 2, generator=g, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    record = fm.student_sigmas((1000, 740, 500, 260), 8.0)
    states, out = fm.trajectory(lambda x, s: (x - x0) / s.view(-1, 1, 1, 1, 1), noise, record, steps=10, shift=3.0)
    assert states.shape == (2, 4, 3, 4, 2, 2)
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-12)
    assert torch.equal(states[:, 0], noise)
    for k, sigma in enumerate(record.tolist()):  # straight-line field: x_sigma is known exactly
        torch.testing.assert_close(states[:, k], fm.add_noise(x0, noise, sigma), rtol=0, atol=1e-12)


def test_merge_sigma_grids_keeps_extra_exactly():
    grid = fm.merge_sigma_grids(torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64), [0.75, 0.5 + 1e-12])
    assert grid.tolist() == [1.0, 0.75, 0.5 + 1e-12, 0.0]


def test_training_sigmas_deterministic_and_in_range():
    a = fm.sample_training_sigmas((4, 3), 3.0, torch.Generator().manual_seed(0))
    b = fm.sample_training_sigmas((4, 3), 3.0, torch.Generator().manual_seed(0))
    c = fm.sample_training_sigmas((4, 3), 3.0, torch.Generator().manual_seed(0), distribution="logit_normal")
    assert a.shape == (4, 3) and a.dtype == torch.float32 and torch.equal(a, b) and not torch.equal(a, c)
    assert ((a >= 0) & (a < 1)).all() and ((c > 0) & (c < 1)).all()
    # The shift moves mass to high noise: shifted median well above 0.5.
    big = fm.sample_training_sigmas(20000, 3.0, torch.Generator().manual_seed(1))
    assert 0.7 < float(big.median()) < 0.8  # shift(0.5, 3) = 0.75
    with pytest.raises(ValueError, match="distribution"):
        fm.sample_training_sigmas(3, 3.0, distribution="cosine")


def test_flow_matching_loss_weight_masks_frames():
    x0 = torch.zeros(1, 2, 1, 1, 1)
    noise = torch.ones_like(x0)
    v = torch.tensor([1.0, 3.0]).view(1, 2, 1, 1, 1)  # frame 0 exact, frame 1 off by 2
    assert float(fm.flow_matching_loss(v, x0, noise)) == 2.0
    assert float(fm.flow_matching_loss(v, x0, noise, weight=torch.tensor([[1.0, 0.0]]))) == 0.0
    assert float(fm.flow_matching_loss(v, x0, noise, weight=torch.tensor([[0.0, 1.0]]))) == 4.0

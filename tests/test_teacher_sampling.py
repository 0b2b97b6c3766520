"""The official bidirectional teacher's sampling (DESIGN.md section 6) as sampler options: context
frames at the target's noise level, the negative prompt in every caption slot of the
unconditional branch, shift 8, guidance 6 (the wan2.1-1.3b preset); the tiny teacher's own
sampling (clean context, only the target's slot dropped) stays the default (tests/test_wiring.py)."""

import pytest
import torch

from helpers import make_pipe
from shotstream import flow_matching as fm
from shotstream.config import SamplerConfig, apply_overrides, get_preset
from shotstream.conditioning import generate_shot_bidirectional


def record_calls(model):
    """Every DiT forward's (x, t, text), as the model received them."""
    calls = []

    def hook(_, args, kwargs):
        calls.append(tuple(a.detach().clone() for a in args[:3]))

    return calls, model.register_forward_pre_hook(hook, with_kwargs=True)


@pytest.fixture(scope="module")
def second_shot():
    """A bidirectional pipe after one streamed shot, and shot 2's conditioning (context frames and
    two caption slots)."""
    pipe = make_pipe(kind="bidirectional")
    session = pipe.session(seed=0)
    session.submit("a red star walks in the snow")
    list(session.stream())
    with torch.no_grad():
        cond = session.conditioning("the star jumps on the beach")
    assert cond.num_context > 0 and cond.text.shape[1] == 2
    return pipe, cond


def sample(pipe, cond, **kw):
    torch.manual_seed(1)
    noise = torch.randn(1, pipe.config.video.latent_frames_per_shot, *cond.context.shape[2:])
    calls, handle = record_calls(pipe.model)
    try:
        generate_shot_bidirectional(pipe.model, cond, noise, fm.teacher_sigmas(3, 8.0), 6.0, pipe.null_caption(), **kw)
    finally:
        handle.remove()
    return calls


def test_context_at_the_targets_noise_level(second_shot):
    pipe, cond = second_shot
    Cf = cond.num_context
    eps = torch.randn(cond.context.shape, generator=torch.Generator().manual_seed(3))
    calls = sample(pipe, cond, context_noise=eps)
    assert len(calls) == 6  # 3 steps x (conditional, unconditional)
    for x, t, _ in calls:
        sigma = t[:, -1] / fm.TIMESTEP_SCALE
        assert sigma.item() > 0
        torch.testing.assert_close(t[:, :Cf], t[:, -1:].expand(-1, Cf), rtol=0, atol=0)
        s = sigma[:, None, None, None, None]
        torch.testing.assert_close(x[:, :Cf], (1 - s) * cond.context + s * eps, rtol=1e-6, atol=1e-6)


def test_clean_context_by_default(second_shot):
    pipe, cond = second_shot
    for x, t, _ in sample(pipe, cond):
        assert not t[:, :cond.num_context].any()
        assert torch.equal(x[:, :cond.num_context], cond.context)


@pytest.mark.parametrize("all_slots", [False, True])
def test_negative_prompt_in_the_unconditional_slots(second_shot, all_slots):
    pipe, cond = second_shot
    null = pipe.null_caption()[0][0]  # [L, D]
    calls = sample(pipe, cond, null_all_slots=all_slots)
    for _, _, text in calls[0::2]:  # the conditional branch reads the captions
        assert torch.equal(text, cond.text)
    for _, _, text in calls[1::2]:
        assert torch.equal(text[0, cond.target_slot], null)
        other = text[0, 1 - cond.target_slot]
        assert torch.equal(other, null) if all_slots else torch.equal(other, cond.text[0, 1 - cond.target_slot])


def test_the_session_samples_as_the_config_says():
    """sampler.teacher_context_noise / teacher_null_slots / negative_prompt reach the teacher."""
    pipe = make_pipe(kind="bidirectional")
    apply_overrides(pipe.config, ["sampler.teacher_context_noise=target", "sampler.teacher_null_slots=all",
                                  "sampler.negative_prompt=blurry shaky"])
    negative = pipe.embed_captions(["blurry shaky"])[0][0, 0]
    session = pipe.session(seed=0)
    session.submit("a red star walks in the snow")
    list(session.stream())
    calls, handle = record_calls(pipe.model)
    try:
        session.submit("the star jumps on the beach")
        list(session.stream())
    finally:
        handle.remove()
    Cf = calls[0][0].shape[1] - pipe.config.video.latent_frames_per_shot
    assert Cf > 0 and len(calls) == 2 * pipe.config.sampler.teacher_steps
    for _, t, _ in calls:
        assert t[:, :Cf].min() > 0 and torch.equal(t[:, :Cf], t[:, -1:].expand(-1, Cf))
    for _, _, text in calls[1::2]:
        assert all(torch.equal(text[0, s], negative) for s in range(text.shape[1]))


def test_the_release_preset_samples_as_the_official_teacher_and_tiny_as_its_own():
    s = get_preset("wan2.1-1.3b").sampler
    assert (s.teacher_shift, s.guidance_scale, s.teacher_context_noise, s.teacher_null_slots) == (8.0, 6.0, "target", "all")
    t = get_preset("tiny").sampler
    assert (t.teacher_shift, t.guidance_scale, t.teacher_context_noise, t.teacher_null_slots, t.negative_prompt) == (
        3.0, 3.0, "clean", "target", "")


def test_bad_options_are_clear_errors(second_shot):
    with pytest.raises(ValueError, match="teacher_context_noise must be clean or target"):
        SamplerConfig(teacher_context_noise="noisy").validate()
    with pytest.raises(ValueError, match="teacher_null_slots must be target or all"):
        SamplerConfig(teacher_null_slots="every").validate()
    pipe, cond = second_shot
    with pytest.raises(ValueError, match="context_noise has shape"):
        sample(pipe, cond, context_noise=torch.zeros(1, 1, 1, 1, 1))

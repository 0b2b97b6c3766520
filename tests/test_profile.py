"""benchmark.profile: every phase of a streamed shot is found by its label and the table adds up."""

import pytest
import torch

from benchmark.flops import forward_flops
from benchmark.profile import PHASES, denoise_flops, profile_story, report
from shotstream.autoencoder import TinyVideoAutoencoder
from shotstream.config import apply_overrides, get_preset
from shotstream.model.dit import WanDiT
from shotstream.session import ShotStreamPipeline
from shotstream.text_encoder import TextEncoder


@pytest.fixture(scope="module")
def pipe():
    cfg = apply_overrides(get_preset("tiny"), ["model.dim=64", "model.num_layers=2", "model.ffn_dim=128",
                                               "video.frames_per_shot=13"])
    torch.manual_seed(0)
    model = WanDiT(cfg.model, cfg.video.latent_channels).eval()
    return ShotStreamPipeline(model, cfg, TinyVideoAutoencoder(cfg.video, base_channels=8).eval(),
                              TextEncoder(max_len=cfg.model.text_len))


def test_profile_times_every_phase_of_a_streamed_shot(pipe):
    result = profile_story(pipe)
    phases = result["phases"]
    chunks = 2  # 13 frames = 4 latent frames = chunks of 3 + 1
    assert result["chunks"] == chunks and result["frames"] == 13
    assert phases["denoise"][1] == phases["decode"][1] == phases["video_encoding"][1] == chunks
    assert phases["cache_write"][1] == chunks - 1  # (no chunk reads the shot's last one)
    assert phases["text_encoding"][1] == phases["context_encoding"][1] == phases["global_cache_write"][1] == 1
    assert all(ms > 0 for ms, _ in phases.values())
    assert sum(ms for ms, _ in phases.values()) <= result["profiled_s"] * 1000  # disjoint ranges inside the shot
    text = report(pipe, result, peak_bf16=1e11, peak_fp32=2e11, command="python -m benchmark.profile", chunk_matmul=5e10)
    assert all(f"| {p} |" in text for p in PHASES) and "achieved / bf16 peak" in text and "Roofline" in text


def test_each_phase_counts_its_own_flops(pipe):
    """The denoiser's counted FLOPs (matmuls and attention, from the profiled ops) agree with the
    analytic model; the codec's phases count their convolutions; video encoding counts none."""
    flops = profile_story(pipe)["flops"]
    assert flops["denoise"] == pytest.approx(denoise_flops(pipe.config, "causal"), rel=0.02)
    assert flops["decode"] > 0 and flops["context_encoding"] > 0 and flops["cache_write"] > 0
    assert flops["video_encoding"] == 0


def test_denoise_flops_count_the_sampler_passes(pipe):
    cfg = pipe.config
    student = denoise_flops(cfg, "causal")
    cfg_teacher = apply_overrides(get_preset("tiny"), ["model.dim=64", "model.num_layers=2", "model.ffn_dim=128",
                                                       "video.frames_per_shot=13", "sampler.teacher_steps=10"])
    teacher = denoise_flops(cfg_teacher, "bidirectional")
    cfg_teacher.sampler.guidance_scale = 1.0
    assert denoise_flops(cfg_teacher, "bidirectional") * 2 == teacher  # CFG doubles the forwards
    n = (6 + 4) * 64  # context + target latent frames, 8x8 tokens each
    assert teacher == 20 * forward_flops(cfg_teacher, n, n)  # 10 steps x (cond + uncond), every token
    assert student < teacher / 5

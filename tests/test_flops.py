"""The analytic FLOP model equals torch's own count of the tiny model's cached forward."""

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from benchmark.flops import cache_bytes, chunk_flops, chunk_tokens, forward_flops, project, tokens_per_frame
from shotstream.config import apply_overrides, get_preset
from shotstream.model.dit import FrameInfo, WanDiT
from shotstream.model.memory import DualCache


def test_forward_flops_match_torch_flop_counter():
    cfg = apply_overrides(get_preset("tiny"), ["model.num_layers=2", "model.dim=128", "model.ffn_dim=256"])
    model = WanDiT(cfg.model, cfg.video.latent_channels).eval()
    tpf = tokens_per_frame(cfg)
    mem = DualCache(cfg.model, model.grid(*cfg.video.latent_size), cfg.video.latent_frames_per_shot)
    mem.kv.length = 6 * tpf  # a full global context already cached
    x, t = torch.randn(1, 3, cfg.video.latent_channels, 16, 16), torch.zeros(1, 3)
    text, mask = torch.randn(1, 1, cfg.model.text_len, 384), torch.ones(1, 1, cfg.model.text_len, dtype=torch.bool)
    frames = FrameInfo.build(pos=[6, 7, 8], shot=[1, 1, 1])
    # the math backend runs attention as matmuls, which the counter sees
    for cache_only in (False, True):  # a denoising pass, then a cache write (stops at the last K/V)
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            model(x, t, text, mask, frames, cache=mem.kv, cache_only=cache_only)
        assert counter.get_total_flops() == forward_flops(cfg, 3 * tpf, 9 * tpf, cache_only=cache_only)


def test_chunk_cost_is_bounded_and_projection_is_sane():
    cfg = get_preset("wan2.1-1.3b")
    assert tokens_per_frame(cfg) == 1560
    # the local cache grows inside a shot, never across shots: each chunk dearer than the one
    # before, but the last, whose K/V no chunk reads (no cache write)
    costs = [chunk_flops(cfg, j) for j in range(7)]
    last = chunk_tokens(cfg, 6)
    assert costs[:-1] == sorted(costs[:-1]) and not last.written
    assert costs[-1] == 4 * forward_flops(cfg, last.tokens, last.keys, text_kv=False)  # (the caption read at chunk 0)
    assert cache_bytes(cfg) == 2 * 30 * (6 + 21 + 3) * 1560 * 1536 * 2
    slow, fast = project(cfg, 100, 1000), project(cfg, 1000, 3000)
    assert fast.fps > slow.fps and fast.first_frame_s < slow.first_frame_s


def test_projection_page_lists_gpus_and_checks_the_paper_claim():
    from benchmark.flops import GPUS, projection_page

    page = projection_page("wan2.1-1.3b")
    assert all(f"| {name} |" in page for name in GPUS)
    h100 = project(get_preset("wan2.1-1.3b"), *GPUS["H100 SXM"], 0.4)
    assert f"{h100.fps:.1f}" in page and "16 FPS" in page

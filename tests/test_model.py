"""The model core: cached == uncached, causality, the RoPE indicator, context selection, loading."""

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F

from shotstream.checkpoint import CheckpointError
from shotstream.config import ModelConfig, ShotStreamConfig, VideoConfig
from shotstream.model.dit import FrameInfo, LayerNorm, WanDiT, block_causal_mask
from shotstream.model.loading import (expand_blocks, expansion_plan, export_model, from_pretrained, load_official,
                                      load_wan_folder, save_pretrained)
from shotstream.model.memory import DualCache, KVCache, select_context_frames
from shotstream.model.rope import apply_rope, rope_angles, rope_phasors

TEXT_DIM = 32


def small_cfg(**kw) -> ModelConfig:
    return ModelConfig(dim=64, ffn_dim=128, num_heads=4, num_layers=2, text_dim=TEXT_DIM, **kw)


def make_model(seed=0, **kw) -> WanDiT:
    torch.manual_seed(seed)
    model = WanDiT(small_cfg(**kw), latent_channels=4).eval()
    with torch.no_grad():  # the zero-initialised head would make every output 0
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def story_inputs(B=2, ctx=2, chunks=(3, 3, 2), seed=1):
    """Two context frames from shot 0, then shot 1's target in chunks; per-frame captions."""
    g = torch.Generator().manual_seed(seed)
    F = ctx + sum(chunks)
    x = torch.randn(B, F, 4, 8, 8, generator=g)
    t = torch.rand(B, F, generator=g) * 1000
    t[:, :ctx] = 0
    text = torch.randn(B, 2, 5, TEXT_DIM, generator=g)
    mask = torch.ones(B, 2, 5, dtype=torch.bool)
    mask[:, 1, 3:] = False  # padding must be ignored
    frames = FrameInfo.build(pos=list(range(F)), shot=[0] * ctx + [1] * sum(chunks),
                             text_index=[0] * ctx + [1] * sum(chunks), batch=B)
    bounds = [0, ctx] + [ctx + sum(chunks[: i + 1]) for i in range(len(chunks))]
    blocks = torch.cat([torch.full((b - a,), i) for i, (a, b) in enumerate(zip(bounds, bounds[1:]))])
    return x, t, text, mask, frames, bounds, blocks


@pytest.mark.parametrize("indicator", ["rope", "none", "learned"])
def test_cached_rollout_equals_block_causal_forward(indicator):
    model = make_model(shot_indicator=indicator)
    x, t, text, mask, frames, bounds, blocks = story_inputs()
    if indicator == "learned":
        frames.cut[:, 2:5] = True
    with torch.no_grad():
        full = model(x, t, text, mask, frames, frame_mask=block_causal_mask(blocks))
        cache = KVCache(2, x.shape[0], 4, 16, capacity=x.shape[1] * 16)
        outs = []
        for a, b in zip(bounds, bounds[1:]):
            outs.append(model(x[:, a:b], t[:, a:b], text, mask, frames.slice(a, b), cache=cache))
            cache.commit()
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-5, atol=1e-5)


def test_a_cache_only_pass_writes_what_a_whole_forward_writes():
    """A t = 0 pass that only writes the cache (the last block stops at its K/V, no head) leaves
    every layer's keys and values exactly as the whole forward does, and returns nothing."""
    model = make_model()
    x, t, text, mask, frames, bounds, _ = story_inputs()
    caches = [KVCache(2, x.shape[0], 4, 16, capacity=x.shape[1] * 16) for _ in range(2)]
    with torch.no_grad():
        for a, b in zip(bounds, bounds[1:]):
            assert model(x[:, a:b], t[:, a:b], text, mask, frames.slice(a, b), cache=caches[0]) is not None
            assert model(x[:, a:b], t[:, a:b], text, mask, frames.slice(a, b), cache=caches[1], cache_only=True) is None
            for c in caches:
                c.commit()
    assert caches[0].length == caches[1].length == x.shape[1] * 16
    assert torch.equal(caches[0].k, caches[1].k) and torch.equal(caches[0].v, caches[1].v)
    with pytest.raises(ValueError, match="cache_only needs a cache"):
        model(x, t, text, mask, frames, cache_only=True)


def test_the_cache_projects_a_caption_once_and_never_serves_a_stale_one():
    """Streaming reads a shot's caption at every step and chunk: through a cache each block
    projects its K/V once, with the velocities of projecting every pass; other captions, or these
    edited in place, are projected afresh; with autograd on every pass projects (training's
    gradients reach the projections)."""
    model = make_model()
    x, t, text, mask, frames, bounds, _ = story_inputs()
    a, b = bounds[1], bounds[2]  # the target's first chunk (caption slot 1)
    projected = []
    model.blocks[0].cross_attn.k.register_forward_hook(lambda m, i, o: projected.append(i[0].shape))
    cache = KVCache(2, x.shape[0], 4, 16, capacity=x.shape[1] * 16)
    chunk = lambda text, **kw: model(x[:, a:b], t[:, a:b], text, mask, frames.slice(a, b),  # noqa: E731
                                     text_embedded=True, **kw)
    with torch.no_grad():
        emb = model.embed_text(text)
        expected = chunk(emb.clone())
        projected.clear()
        outs = [chunk(emb, cache=cache) for _ in range(3)]  # staged, never committed: the same pass
        assert len(projected) == 1 and all(torch.equal(out, expected) for out in outs)
        other = emb.flip(1)  # another caption, as fresh as the first
        assert torch.equal(chunk(other, cache=cache), chunk(other.clone())) and len(projected) == 3
        chunk(emb, cache=cache)
        emb[:, 1] += 1.0  # edited in place
        assert torch.equal(chunk(emb, cache=cache), chunk(emb.clone())) and len(projected) == 6
        mem = DualCache(model.cfg, model.grid(8, 8), 8, batch=x.shape[0])
        chunk(emb, cache=mem.kv)
        mem.clear()  # (a new shot: what was kept may be another model's)
        chunk(emb, cache=mem.kv)
        assert len(projected) == 8
    with torch.inference_mode():  # (its tensors keep no version: every pass projects)
        assert torch.equal(chunk(emb.clone(), cache=cache), chunk(emb.clone()))
    projected.clear()
    chunk(emb, cache=cache).square().sum().backward()  # right after a pass without autograd
    assert len(projected) == 1 and model.blocks[0].cross_attn.k.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("affine", [False, True])
def test_layer_norm_is_wans_fp32_norm_returned_in_the_inputs_dtype(affine):
    """A bf16 input goes straight to torch's kernel when the weights are bf16 too (it normalises
    in fp32), through fp32 when they are not (autocast): both equal the fp32 round trip but for
    one rounding step, in bf16."""
    torch.manual_seed(0)
    x = (torch.randn(2, 384, 64) * 3 + 1).bfloat16()
    norm = LayerNorm(64, eps=1e-6, elementwise_affine=affine)
    if affine:
        with torch.no_grad():  # (values bf16 holds exactly, so that both dtypes hold the same weights)
            norm.weight.copy_(torch.randn(64).bfloat16()), norm.bias.copy_(torch.randn(64).bfloat16())
    w, b = (norm.weight, norm.bias) if affine else (None, None)
    expected = F.layer_norm(x.float(), (64,), w, b, 1e-6).bfloat16()
    for dtype in (torch.float32, torch.bfloat16):
        with torch.no_grad():
            out = norm.to(dtype)(x)
        assert out.dtype == torch.bfloat16
        torch.testing.assert_close(out, expected, atol=1e-2, rtol=2**-7)


def test_future_frames_do_not_change_the_past():
    model = make_model()
    x, t, text, mask, frames, bounds, blocks = story_inputs()
    fm = block_causal_mask(blocks)
    with torch.no_grad():
        before = model(x, t, text, mask, frames, frame_mask=fm)
        x2 = x.clone()
        x2[:, -1] += 10.0  # perturb the last chunk
        after = model(x2, t, text, mask, frames, frame_mask=fm)
    past = bounds[-2]
    assert torch.equal(before[:, :past], after[:, :past])
    assert not torch.allclose(before[:, past:], after[:, past:])


def test_padding_tokens_of_the_caption_are_ignored():
    model = make_model()
    x, t, text, mask, frames, *_ = story_inputs()
    text2 = text.clone()
    text2[:, 1, 3:] = 100.0  # change only masked-out token states
    with torch.no_grad():
        assert torch.equal(model(x, t, text, mask, frames), model(x, t, text2, mask, frames))


def test_each_frame_reads_its_own_shots_caption():
    model = make_model()
    x, t, text, mask, frames, *_ = story_inputs()
    text2 = text.clone()
    text2[:, 0] += 1.0  # change shot 0's caption: only frames of slot 0 (and who attends to them) change
    with torch.no_grad():
        a = model(x[:, 2:], t[:, 2:], text, mask, frames.slice(2, x.shape[1]))
        b = model(x[:, 2:], t[:, 2:], text2, mask, frames.slice(2, x.shape[1]))
    assert torch.equal(a, b)


def test_captions_no_frame_reads_do_not_change_the_output():
    """Cross-attention projects only the slots the frames read (a chunk's cost stays flat as slots fill)."""
    model = make_model()
    x, t, text, mask, frames, *_ = story_inputs()
    later = frames.slice(2, x.shape[1])
    assert int(later.text_index.min()) >= 1
    shifted = dataclasses.replace(later, text_index=later.text_index - 1)
    projected = []  # token count of the caption states the first block's K projection sees
    hook = model.blocks[0].cross_attn.k.register_forward_hook(lambda m, i, o: projected.append(i[0].shape[1:3]))
    with torch.no_grad():
        a = model(x[:, 2:], t[:, 2:], text, mask, later)
    hook.remove()
    read = int(later.text_index.unique().numel())
    assert read < text.shape[1] and projected == [(read, text.shape[2])]
    with torch.no_grad():
        b = model(x[:, 2:], t[:, 2:], text[:, 1:], mask[:, 1:], shifted)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_rotates_each_consecutive_pair_by_its_angle(dtype):
    """Wan's layout: pair j is (x[2j], x[2j+1]), turned counter-clockwise by angle j."""
    angles = torch.tensor([[[0.3, -1.2, 2.5]]], dtype=torch.float64)  # [B, N, Dh/2]
    x = torch.randn(1, 2, 1, 6).to(dtype)  # [B, H, N, Dh]: both heads rotated alike
    out = apply_rope(x, rope_phasors(angles))
    c, s = angles.cos().float()[0, 0], angles.sin().float()[0, 0]
    even, odd = x.float()[..., 0::2], x.float()[..., 1::2]
    expected = torch.stack([even * c - odd * s, even * s + odd * c], dim=-1).flatten(-2)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), expected, atol=1e-6 if dtype == torch.float32 else 2e-2, rtol=1e-2)


def test_rope_indicator_adds_exactly_the_shot_phase():
    """q of shot k vs k of shot i: the logit equals the one with temporal pairs rotated by (k-i)*phi."""
    head_dim, phi = 64, 1 / 6
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 1, 1, 1, head_dim, generator=g)
    pos = torch.tensor([[3.0]]), torch.tensor([[1.0]])
    flags = torch.tensor([[4.0]]), torch.tensor([[1.0]])

    def logit(p):
        cq = rope_phasors(rope_angles(pos[0], flags[0], (1, 1), head_dim, phi=p))
        ck = rope_phasors(rope_angles(pos[1], flags[1], (1, 1), head_dim, phi=p))
        return (apply_rope(q, cq) * apply_rope(k, ck)).sum().item()

    # Predicted: rotating q's temporal pairs by an extra (4 - 1) * phi relative to k.
    bt = (head_dim - 4 * (head_dim // 6)) // 2
    ang = rope_angles(pos[0], torch.zeros(1, 1), (1, 1), head_dim)
    ang[..., :bt] += (4 - 1) * phi
    cq = rope_phasors(ang)
    ck = rope_phasors(rope_angles(pos[1], torch.zeros(1, 1), (1, 1), head_dim))
    predicted = (apply_rope(q, cq) * apply_rope(k, ck)).sum().item()
    assert logit(phi) == pytest.approx(predicted, abs=1e-5)
    assert logit(0.0) != pytest.approx(logit(phi), abs=1e-3)
    # same shot: no change at all
    same = rope_angles(pos[0], flags[0], (2, 2), head_dim, phi=phi) - rope_angles(pos[1], flags[0], (2, 2), head_dim, phi=phi)
    plain = rope_angles(pos[0], flags[0], (2, 2), head_dim) - rope_angles(pos[1], flags[0], (2, 2), head_dim)
    torch.testing.assert_close(same, plain)


def test_indicator_none_ignores_shot_flags_and_rope_does_not():
    x, t, text, mask, frames, *_ = story_inputs()
    moved = FrameInfo(frames.pos, frames.shot + 3, frames.text_index, frames.cut)
    with torch.no_grad():
        m = make_model(shot_indicator="none")
        assert torch.equal(m(x, t, text, mask, frames), m(x, t, text, mask, moved))
        m = make_model(shot_indicator="rope")
        # a uniform shift of every flag leaves relative phases, hence outputs, unchanged ...
        torch.testing.assert_close(m(x, t, text, mask, frames), m(x, t, text, mask, moved), rtol=1e-4, atol=1e-5)
        # ... but moving only the target's flags marks a different cut
        moved.shot[:, 2:] += 1
        assert not torch.allclose(m(x, t, text, mask, frames), m(x, t, text, mask, moved), atol=1e-4)


# Official dynamic-sampling table: frames per earlier shot, for n = 1..7 earlier shots, budget 6.
OFFICIAL_COUNTS = {1: [6], 2: [3, 3], 3: [2, 2, 2], 4: [1, 1, 2, 2], 5: [1, 1, 1, 1, 2], 6: [1] * 6, 7: [0] + [1] * 6}


@pytest.mark.parametrize("n", range(1, 8))
def test_select_context_frames_matches_official_table(n):
    picks = select_context_frames([33] * n, budget=6)
    counts = [sum(1 for s, _ in picks if s == i) for i in range(n)]
    assert counts == OFFICIAL_COUNTS[n]
    for i in range(n):
        frames = [f for s, f in picks if s == i]
        if len(frames) >= 2:
            assert frames[0] == 0 and frames[-1] == 32  # first and last included
            gaps = {b - a for a, b in zip(frames, frames[1:])}
            assert max(gaps) - min(gaps) <= 1  # evenly spaced
    assert len(picks) == 6


def test_select_context_frames_edge_cases():
    assert select_context_frames([], 6) == []  # shot 0 sees no context
    assert select_context_frames([33, 33], 6) == [(0, 0), (0, 16), (0, 32), (1, 0), (1, 16), (1, 32)]
    assert select_context_frames([2], 6) == [(0, 0), (0, 1)]  # a short shot gives what it has
    with pytest.raises(ValueError):
        select_context_frames([33, 0], 6)


def test_dual_cache_size_is_derived_and_bounded():
    cfg = small_cfg()
    mem = DualCache(cfg, grid=(4, 4), frames_per_shot=9)
    assert mem.kv.capacity == (cfg.context_frames + 9 + cfg.chunk_frames) * 16
    assert mem.kv.k.shape == (cfg.num_layers, 1, cfg.num_heads, mem.kv.capacity, cfg.head_dim)


def test_a_dropped_cache_is_freed_at_once_not_by_the_garbage_collector():
    """A session's memory is its largest allocation: the demo frees a story by dropping it, so
    nothing in it may hold a reference cycle (with the collector off, it must still go)."""
    import gc
    import weakref

    cfg = small_cfg()
    mem = DualCache(cfg, grid=(4, 4), frames_per_shot=9)
    assert len(mem.kv.layers) == cfg.num_layers
    gone = weakref.ref(mem.kv)
    gc.disable()
    try:
        del mem
        assert gone() is None
    finally:
        gc.enable()


def test_local_window_rolls_and_keeps_the_sink():
    cfg = small_cfg(local_window=4, sink_frames=1)
    mem = DualCache(cfg, grid=(1, 1), frames_per_shot=9)
    kv = mem.kv
    for frame in range(7):
        mem.local_context.make_room(1)
        kv.extend(0, torch.full((1, 4, 1, 16), float(frame)), torch.zeros(1, 4, 1, 16))
        kv.commit()
        assert mem.local_context.frames <= 4
    kept = kv.k[0, 0, 0, : kv.length, 0].tolist()
    assert kept == [0.0, 4.0, 5.0, 6.0]  # sink frame 0, then the most recent


def test_bad_inputs_give_clear_errors():
    model = make_model()
    x, t, text, mask, frames, *_ = story_inputs()
    with pytest.raises(ValueError, match="channels"):
        model(x[:, :, :3], t, text, mask, frames)
    with pytest.raises(ValueError, match=r"\[B, F, C, H, W\]"):
        model(x[0], t, text, mask, frames)
    with pytest.raises(ValueError, match="divisible"):
        model(x[..., :7], t, text, mask, frames)
    with pytest.raises(ValueError, match="timestep"):
        model(x, t[:, :3], text, mask, frames)
    with pytest.raises(ValueError, match="text"):
        model(x, t, text[..., :5], mask, frames)
    with pytest.raises(TypeError, match="floating"):
        model(x.long(), t, text, mask, frames)
    cache = KVCache(2, 2, 4, 16, capacity=64, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="KV cache holds"):
        model(x[:, :2], t[:, :2], text, mask, frames.slice(0, 2), cache=cache)
    with pytest.raises(RuntimeError, match="overflow"):
        model(x, t, text, mask, frames, cache=KVCache(2, 2, 4, 16, capacity=16))


def test_checkpoint_round_trip_is_bit_identical(tmp_path):
    model = make_model(shot_indicator="learned")
    config = ShotStreamConfig(video=VideoConfig(latent_channels=4), model=small_cfg(shot_indicator="learned"))
    save_pretrained(model, config, tmp_path / "m", kind="causal")
    loaded, cfg2, kind = from_pretrained(tmp_path / "m")
    assert kind == "causal" and cfg2 == config
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)


def test_export_keeps_fp32_for_the_next_stage_and_ships_bf16(tmp_path):
    """A small update to bf16-grid weights survives in the run's copy, which the next stage loads."""
    from safetensors import safe_open

    model = make_model()
    config = ShotStreamConfig(video=VideoConfig(latent_channels=4), model=small_cfg())
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.bfloat16().float() * (1 + 1e-4))  # well below half a bf16 step (2^-9)
    run, shipped = export_model(model, config, tmp_path / "run", tmp_path / "shipped", kind="causal")
    dtypes = {}
    for folder in (run, shipped):
        with safe_open(folder / "model.safetensors", "pt") as f:
            dtypes[folder.name] = {f.get_tensor(k).dtype for k in f.keys()}
    assert dtypes == {"run": {torch.float32}, "shipped": {torch.bfloat16}}
    loaded = from_pretrained(run)[0].state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())
    assert export_model(model, config, tmp_path / "only", "", kind="causal") == [tmp_path / "only"]


@pytest.mark.parametrize("layers", [2, 3, 4])
def test_expanded_blocks_compute_the_same_function_until_trained(layers):
    model = make_model()
    x, t, text, mask, frames, bounds, blocks = story_inputs()
    deeper = expand_blocks(model, layers)
    assert len(deeper.blocks) == deeper.cfg.num_layers == layers and deeper.cfg.dim == model.cfg.dim
    with torch.no_grad():
        torch.testing.assert_close(deeper(x, t, text, mask, frames), model(x, t, text, mask, frames), rtol=1e-5, atol=1e-5)
    # 2 -> 3: block 0, block 1, then block 1's copy with its outputs zeroed, which a step moves
    copy = deeper.blocks[-1]
    if layers == 3:
        assert torch.equal(copy.self_attn.q.weight, model.blocks[1].self_attn.q.weight)
        assert not copy.ffn[2].weight.any() and not copy.self_attn.o.weight.any()
        deeper.train()
        deeper(x, t, text, mask, frames).square().mean().backward()
        assert copy.ffn[2].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="between the model's 2 and twice"):
        expand_blocks(model, 5)


def test_expansion_plan_spreads_the_new_blocks():
    assert expansion_plan(6, 8) == [(0, False), (1, False), (2, False), (2, True),
                                    (3, False), (4, False), (5, False), (5, True)]
    assert expansion_plan(2, 4) == [(0, False), (0, True), (1, False), (1, True)]
    assert expansion_plan(3, 3) == [(0, False), (1, False), (2, False)]


def test_truncated_or_mismatched_checkpoint_is_named(tmp_path):
    model = make_model()
    config = ShotStreamConfig(video=VideoConfig(latent_channels=4), model=small_cfg())
    path = save_pretrained(model, config, tmp_path / "m")
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        from_pretrained(path)
    # a checkpoint of a different size names the bad keys
    save_pretrained(model, config, tmp_path / "m2")
    config.model.num_layers = 3
    (tmp_path / "m2" / "config.json").write_text(config.to_json())
    with pytest.raises(CheckpointError, match=r"missing keys \[blocks\.2\."):
        from_pretrained(tmp_path / "m2")


def write_wan_folder(folder, state, **config):
    """An official Wan2.1 DiT folder: the safetensors and a config.json with exactly the keys of
    Wan2.1-T2V-1.3B's (no text_dim, patch_size, qk_norm: the loader reads them from the weights)."""
    from safetensors.torch import save_file

    folder.mkdir()
    save_file(state, str(folder / "diffusion_pytorch_model.safetensors"))
    real = {"_class_name": "WanModel", "dim": 64, "eps": 1e-06, "ffn_dim": 128, "freq_dim": 256, "in_dim": 4,
            "model_type": "t2v", "num_heads": 4, "num_layers": 2, "out_dim": 4, "text_len": 512}
    (folder / "config.json").write_text(json.dumps(real | config))
    return folder


def test_official_wan_layout_loads(tmp_path):
    """A small checkpoint written in Wan2.1's layout (+ Self-Forcing's `model.` wrapper) loads strictly."""
    src = make_model(seed=3)
    state = {k: v.clone() for k, v in src.state_dict().items()}
    assert "blocks.0.self_attn.q.weight" in state and "head.head.weight" in state and "blocks.1.modulation" in state
    folder = write_wan_folder(tmp_path / "Wan2.1-T2V-small", state)
    loaded = load_wan_folder(folder)
    assert loaded.cfg.text_dim == TEXT_DIM and loaded.cfg.text_len == 512  # text_dim from text_embedding.0
    for k, v in state.items():
        assert torch.equal(loaded.state_dict()[k], v)
    # a ShotStream/Self-Forcing .pt with {"generator": {"model.<key>": ...}}
    torch.save({"generator": {f"model.{k}": v for k, v in state.items()}}, tmp_path / "shotstream.pt")
    other = load_official(make_model(seed=4), tmp_path / "shotstream.pt")
    assert torch.equal(other.state_dict()["blocks.1.ffn.2.weight"], state["blocks.1.ffn.2.weight"])
    # strict: a missing and an unexpected key are both named
    del state["blocks.1.ffn.2.weight"]
    state["blocks.9.extra"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"missing keys \[blocks\.1\.ffn\.2\.weight\].*unexpected keys \[blocks\.9\.extra\]"):
        load_official(make_model(), tmp_path / "bad.pt")


def test_wan_folder_sizes_come_from_the_weights(tmp_path):
    """Every size the config leaves out is read from the shapes; one it contradicts is an error."""
    src = WanDiT(dataclasses.replace(small_cfg(), ffn_dim=96, num_layers=3), latent_channels=4)
    loaded = load_wan_folder(write_wan_folder(tmp_path / "a", src.state_dict(), ffn_dim=96, num_layers=3))
    assert (loaded.cfg.ffn_dim, loaded.cfg.num_layers, loaded.cfg.patch_size) == (96, 3, (1, 2, 2))
    assert loaded.cfg.qk_norm and loaded.cfg.cross_attn_norm and loaded.latent_channels == 4
    with pytest.raises(CheckpointError, match=r"config.json: .*contradicts.*ffn_dim: config 128 vs weights 96"):
        load_wan_folder(write_wan_folder(tmp_path / "b", src.state_dict()))
    with pytest.raises(CheckpointError, match=r"config.json: not found"):
        load_wan_folder(tmp_path)


def test_folder_with_several_checkpoints_is_refused_unless_one_is_named(tmp_path):
    """A run folder often holds several .pt snapshots: loading must not merge them (the last would win)."""
    a, b = make_model(seed=5), make_model(seed=6)
    torch.save({"generator": {f"model.{k}": v for k, v in a.state_dict().items()}}, tmp_path / "a.pt")
    torch.save({"generator": {f"model.{k}": v for k, v in b.state_dict().items()}}, tmp_path / "b.pt")
    with pytest.raises(CheckpointError, match=r"several checkpoints in the folder \(a\.pt, b\.pt\); name the file"):
        load_official(make_model(), tmp_path)
    loaded = load_official(make_model(), tmp_path / "a.pt")
    assert torch.equal(loaded.state_dict()["blocks.0.ffn.0.weight"], a.state_dict()["blocks.0.ffn.0.weight"])
    (tmp_path / "b.pt").unlink()  # a folder with one checkpoint loads it
    assert torch.equal(load_official(make_model(), tmp_path).state_dict()["head.head.weight"], a.state_dict()["head.head.weight"])


def test_bf16_forward_runs_and_is_close_to_fp32():
    model = make_model()
    x, t, text, mask, frames, *_ = story_inputs()
    with torch.no_grad():
        ref = model(x, t, text, mask, frames)
        out = model.to(torch.bfloat16)(x, t, text, mask, frames)
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max() < 0.05 * ref.abs().max() + 0.05
    assert math.isfinite(out.float().sum().item())

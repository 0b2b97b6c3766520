"""benchmark.gpu_check at a tiny size on the CPU: the page's fields and that its numbers agree with
each other (FPS = frames / time, FLOP/s = FLOPs / time, the KV cache the session's). No wall time
is asserted; the real-size run needs a GPU and is not part of the test suite."""

import re

import pytest
import torch

from benchmark import gpu_check
from benchmark.flops import cache_bytes, shot_flops
from benchmark.timing import chunk_time_growth

# The wan2.1-1.3b preset (its release behaviour, the Wan VAE's streamed decode) at toy sizes:
# 13-frame shots = 4 latent frames = two chunks of 2 (equal chunks: a steady line for the growth).
TINY = ["model.num_layers=1", "model.dim=32", "model.ffn_dim=64", "model.num_heads=2", "model.text_len=16",
        "model.text_dim=32", "model.chunk_frames=2", "video.height=16", "video.width=16", "video.frames_per_shot=13"]
SHOTS = 3


@pytest.fixture(scope="module")
def checked():
    pipe = gpu_check.random_pipeline("wan2.1-1.3b", TINY, "cpu", torch.float32, vae_base_dim=8)
    return pipe, gpu_check.run_check(pipe, SHOTS, warmup=0)


def test_figures_agree_with_each_other(checked):
    pipe, r = checked
    cfg = pipe.config
    assert [s["frames"] for s in r["shots"]] == [cfg.video.frames_per_shot] * SHOTS
    assert r["frames"] == SHOTS * cfg.video.frames_per_shot
    assert r["fps"] == pytest.approx(r["frames"] / r["wall_s"])
    assert r["first_frame_s"] == r["shots"][0]["first_frame_s"]
    assert r["first_frame_steady_s"] == pytest.approx(sum(s["first_frame_s"] for s in r["shots"][1:]) / (SHOTS - 1))
    for s in r["shots"]:
        assert 0 < s["first_frame_s"] <= s["shot_s"] and 0 < s["dit_s"] < s["shot_s"]
    assert r["wall_s"] >= sum(s["shot_s"] for s in r["shots"])
    assert len(r["chunk_s"]) == SHOTS * 2
    assert r["chunk_time_growth"] == chunk_time_growth(r["chunk_shots"], r["chunk_s"], 1, SHOTS - 1)
    # The FLOP model's shot is what was timed: one global-context pass, then `steps` forwards per
    # chunk and a cache write after each but the last.
    steps = len(cfg.sampler.student_timesteps)
    assert [s["dit_calls"] for s in r["shots"][1:]] == [1 + 2 * steps + 1] * (SHOTS - 1)
    assert r["dit_flops"] == shot_flops(cfg) * (SHOTS - 1)
    assert r["dit_s"] == pytest.approx(sum(s["dit_s"] for s in r["shots"][1:]))
    assert r["achieved_flops"] == pytest.approx(r["dit_flops"] / r["dit_s"])
    # Memory per component: the session's dual cache, the DiT's and the VAE's own tensors.
    assert r["kv_cache_bytes"] == cache_bytes(cfg, bytes_per_value=4)
    assert r["dit_bytes"] == sum(p.numel() * 4 for p in pipe.model.parameters()) + sum(
        b.numel() * b.element_size() for b in pipe.model.buffers())
    assert r["vae_bytes"] >= sum(p.numel() * 4 for p in pipe.autoencoder.vae.parameters()) > 0
    assert r["text_encoder_bytes"] == 0 and r["peak_memory_mb"] > 0


def test_page_names_every_figure(checked):
    _, r = checked
    text = gpu_check.page(r, "python -m benchmark.gpu_check")
    for field in ("first-frame latency, first shot", "first-frame latency, mean of shots 2-3", "FPS",
                  "chunk-time growth, shot 2 -> 3", "peak memory", "DiT weights", "KV cache", "VAE weights",
                  "text encoder weights", "achieved FLOP/s of the denoiser", "bf16 matmul measured here",
                  "timings exclude text encoding"):
        assert field in text
    frames, wall = re.search(r"\| frames / story wall time \| (\d+) / ([\d.]+) s \|", text).groups()
    fps = float(re.search(r"\| FPS \| ([\d.]+) \|", text).group(1))
    # the page rounds the wall time to 1 ms and the FPS to 0.01: allow exactly that
    assert fps == pytest.approx(int(frames) / float(wall), abs=0.005 + fps * 0.0005 / (float(wall) - 0.0005))
    assert len(re.findall(r"^\| \d \| 2 \| 13 \|", text, re.M)) == SHOTS  # one row per shot


def test_stand_in_text_states_have_the_dits_width():
    te = gpu_check.StandInTextEncoder(dim=24, max_len=7)
    states, mask = te.encode(["a", "b", "a"])
    assert states.shape == (3, 7, 24) and mask.all()
    assert torch.equal(states[0], states[2]) and not torch.equal(states[0], states[1])


@pytest.mark.parametrize("name, expected", [
    ("NVIDIA H100 80GB HBM3", ("H100 SXM", 989.0)), ("NVIDIA A100-SXM4-80GB", ("A100 SXM", 312.0)),
    ("NVIDIA L40S", ("L40S", 362.0)), ("NVIDIA H100 PCIe", None), ("NVIDIA H100 NVL", None), ("Tesla T4", None)])
def test_gpu_peak_by_name(name, expected):
    assert gpu_check.gpu_peak_tflops(name) == expected


def test_main_writes_the_page(tmp_path, capsys):
    out = tmp_path / "perf" / "gpu_check.md"
    assert gpu_check.main(["--device", "cpu", "--shots", "2", "--warmup", "0", "--vae-base-dim", "8",
                           "--override", *TINY, "--out", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert text.startswith("# GPU check") and "float32" in text and "| FPS |" in text
    assert text in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--shots", "1"], "--shots must be at least 2"),
    (["--model", "x", "--override", "video.height=16"], "a --model folder has its own config"),
    (["--override", "model.dimm=3"], "did you mean 'dim'"),
    (["--device", "cpu", "--dtype", "fp8"], "unknown dtype"),
])
def test_bad_input_is_a_clear_error(argv, message, capsys):
    with pytest.raises(SystemExit):
        gpu_check.main(argv)
    assert message in capsys.readouterr().err

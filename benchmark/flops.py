"""An analytic FLOP and memory model of streaming, and a GPU projection from it.

    python -m benchmark.flops                                   # wan2.1-1.3b on H100-class numbers
    python -m benchmark.flops --preset tiny --tflops 0.37 --bandwidth 20

FLOPs count multiply-adds as 2 (the matmul convention torch's FlopCounterMode uses). Per forward
of N new tokens attending to K keys (global + local + themselves), per layer:

    self-attention projections  2 * N * 4 D^2
    self-attention              2 * 2 * N * K * D           (QK^T and AV)
    cross-attention             2 * N * 2 D^2 + 2 * 2 * N * L * D   (+ 2 * L * 2 D^2 for K/V of the caption)
    feed-forward                2 * N * 2 D * F

plus the patch embedding, the head and the per-frame timestep MLP. A chunk costs `steps` denoising forwards and one t = 0
cache-writing forward (which stops at the last block's K/V; none for a shot's last chunk); K grows
inside a shot (local cache) but not across shots (bounded memory). A shot projects its caption's
K/V once, not in every forward (the cache keeps them), and embeds it once per caption.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from shotstream.config import ShotStreamConfig, get_preset


def tokens_per_frame(cfg: ShotStreamConfig) -> int:
    h, w = cfg.video.latent_size
    _, ph, pw = cfg.model.patch_size
    return (h // ph) * (w // pw)


def forward_flops(cfg: ShotStreamConfig, query_tokens: int, key_tokens: int, text_tokens: int | None = None,
                  text_kv: bool = True, text_embedded: bool = False, cache_only: bool = False) -> int:
    """FLOPs of one DiT forward: `query_tokens` new tokens attending to `key_tokens` keys.
    text_kv: the forward reads its caption afresh (`caption_flops`); a streamed chunk's forwards do
    not, since the session embeds a caption once and the cache keeps its K/V. text_embedded: the
    caption arrives through the text MLP already.
    cache_only: a t = 0 pass that only writes the cache (the last block stops at its K/V, no head)."""
    m = cfg.model
    D, N, K = m.dim, query_tokens, key_tokens
    L = m.text_len if text_tokens is None else text_tokens
    patch = math.prod(m.patch_size) * cfg.video.latent_channels
    kv = 2 * N * 2 * D * D  # k, v
    per_layer = (
        kv + 2 * N * 2 * D * D  # q, o
        + 4 * N * K * D  # QK^T, AV
        + 2 * N * 2 * D * D  # cross q, o
        + 4 * N * L * D  # cross QK^T, AV
        + 2 * N * 2 * D * m.ffn_dim  # FFN
    )
    full = m.num_layers - cache_only  # (a cache-only pass: the last block computes its K/V alone)
    layers = full * per_layer + (kv if cache_only else 0)
    embed = 2 * N * patch * D + (0 if cache_only else 2 * N * D * patch)  # patch embedding + head
    frames = N // tokens_per_frame(cfg)
    time_mlp = 2 * frames * (m.freq_dim * D + D * D + D * 6 * D)  # per-frame timestep embedding
    caption = caption_flops(cfg, L, layers=full, embed=not text_embedded) if text_kv else 0
    return layers + embed + time_mlp + caption


def caption_flops(cfg: ShotStreamConfig, text_tokens: int | None = None, layers: int | None = None,
                  embed: bool = True) -> int:
    """FLOPs of reading a caption of `text_tokens`: the text MLP (`embed`) and the cross-attention
    K/V of `layers` blocks (default all)."""
    m = cfg.model
    L = m.text_len if text_tokens is None else text_tokens
    layers = m.num_layers if layers is None else layers
    return layers * 2 * L * 2 * m.dim * m.dim + (2 * L * (m.text_dim * m.dim + m.dim * m.dim) if embed else 0)


class ChunkTokens(NamedTuple):
    tokens: int  # the chunk's own
    keys: int  # what they attend to: global context, the shot's earlier chunks, themselves
    written: bool  # whether a t = 0 pass writes the chunk to the cache


def chunk_tokens(cfg: ShotStreamConfig, chunk: int) -> ChunkTokens:
    """Chunk `chunk` of a shot of the causal student, with a full global context. Its K/V are
    written for the shot's later chunks: not the last one's, which none reads."""
    tpf, chunk_frames, shot_frames = tokens_per_frame(cfg), cfg.model.chunk_frames, cfg.video.latent_frames_per_shot
    n = min(chunk_frames, shot_frames - chunk * chunk_frames) * tpf  # a shot's last chunk may be short
    keys = (cfg.model.context_frames + chunk * chunk_frames) * tpf + n
    if cfg.model.local_window:
        keys = min(keys, (cfg.model.context_frames + cfg.model.local_window) * tpf + n)
    return ChunkTokens(n, keys, (chunk + 1) * chunk_frames < shot_frames)


def chunk_flops(cfg: ShotStreamConfig, chunk: int, steps: int | None = None) -> int:
    """FLOPs to stream chunk `chunk` of a shot with a full global context: denoising + the cache
    write (none after the shot's last chunk). The first chunk's first forward also projects the
    caption's K/V, which the cache keeps for the shot (embedded before, once per caption)."""
    steps = len(cfg.sampler.student_timesteps) if steps is None else steps
    c = chunk_tokens(cfg, chunk)
    denoise = forward_flops(cfg, c.tokens, c.keys, text_kv=False)
    write = forward_flops(cfg, c.tokens, c.keys, text_kv=False, cache_only=True)
    return steps * denoise + (write if c.written else 0) + (caption_flops(cfg, embed=False) if chunk == 0 else 0)


def shot_flops(cfg: ShotStreamConfig, steps: int | None = None) -> int:
    """FLOPs of one streamed shot: the global-context pass plus every chunk."""
    C = cfg.model.context_frames * tokens_per_frame(cfg)
    chunks = -(-cfg.video.latent_frames_per_shot // cfg.model.chunk_frames)
    return forward_flops(cfg, C, C, cache_only=True) + sum(chunk_flops(cfg, j, steps) for j in range(chunks))


def cache_bytes(cfg: ShotStreamConfig, bytes_per_value: int = 2) -> int:
    """Dual-cache size: K and V of [global | local | staged chunk] tokens in every layer."""
    m = cfg.model
    frames = m.context_frames + (m.local_window or cfg.video.latent_frames_per_shot) + m.chunk_frames
    return 2 * m.num_layers * frames * tokens_per_frame(cfg) * m.dim * bytes_per_value


def weight_bytes(cfg: ShotStreamConfig, bytes_per_value: int = 2) -> int:
    m = cfg.model
    per_layer = 8 * m.dim * m.dim + 2 * m.dim * m.ffn_dim + 6 * m.dim
    return bytes_per_value * (m.num_layers * per_layer + m.text_dim * m.dim + 7 * m.dim * m.dim)


@dataclass
class Projection:
    seconds_per_chunk: float
    fps: float
    first_frame_s: float
    compute_bound: bool


def project(cfg: ShotStreamConfig, tflops: float, bandwidth_gbs: float, efficiency: float = 0.4) -> Projection:
    """Roofline projection: each forward takes max(FLOPs / (peak * efficiency), bytes / bandwidth).

    Bytes per forward = weights + the K/V it reads. Steady state is a mid-shot chunk; the first
    frame needs the global-context pass and the first chunk (decoding not counted).
    """
    steps = len(cfg.sampler.student_timesteps)
    chunks = -(-cfg.video.latent_frames_per_shot // cfg.model.chunk_frames)

    def seconds(flops: float, keys: int) -> tuple[float, bool]:
        kv = 2 * cfg.model.num_layers * keys * cfg.model.dim * 2
        t_compute = flops / (tflops * 1e12 * efficiency)
        t_memory = (weight_bytes(cfg) + kv) / (bandwidth_gbs * 1e9)
        return max(t_compute, t_memory), t_compute >= t_memory

    per_chunk = []
    for j in range(chunks):
        n, keys, written = chunk_tokens(cfg, j)
        t, bound = seconds(forward_flops(cfg, n, keys, text_kv=False), keys)
        write = seconds(forward_flops(cfg, n, keys, text_kv=False, cache_only=True), keys)[0] if written else 0.0
        if j == 0:  # the shot's first forward also projects its caption's K/V
            t0 = seconds(forward_flops(cfg, n, keys, text_embedded=True), keys)[0]
            per_chunk.append(t0 + (steps - 1) * t + write)
        else:
            per_chunk.append(steps * t + write)
    C = cfg.model.context_frames * tokens_per_frame(cfg)
    ctx, _ = seconds(forward_flops(cfg, C, C, cache_only=True), C)
    frames = cfg.video.frames_per_shot
    return Projection(
        seconds_per_chunk=sum(per_chunk) / chunks,
        fps=frames / (ctx + sum(per_chunk)),
        first_frame_s=ctx + per_chunk[0],
        compute_bound=bound,
    )


def measure_matmul_flops(dtype: torch.dtype = torch.bfloat16, n: int = 2048, repeats: int = 10, device="cpu",
                         shape: tuple[int, int, int] | None = None) -> float:
    """Measured matmul FLOP/s on this machine, best of `repeats`: [n, n] @ [n, n] (the peak, the
    denominator of the efficiency figure) or [m, k] @ [k, n] for `shape` (m, k, n)."""
    m, k, n = shape or (n, n, n)
    a = torch.randn(m, k, dtype=dtype, device=device)
    b = torch.randn(k, n, dtype=dtype, device=device)
    inner = max(1, round(1e9 / (2 * m * k * n)))  # a small product is timed over ~1 GFLOP of calls
    for _ in range(3):
        a @ b
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(inner):
            a @ b
        if device != "cpu":
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - t) / inner)
    return 2 * m * k * n / best


# Dense bf16 tensor-core peak (TFLOP/s) and memory bandwidth (GB/s) from the vendors' data sheets.
GPUS = {"H100 SXM": (989.0, 3350.0), "A100 SXM": (312.0, 2039.0), "L40S": (362.0, 864.0), "RTX 4090": (165.0, 1008.0)}
PAPER_FPS = 16.0  # ShotStream's claim for Wan2.1-1.3B on one GPU; Self-Forcing reports 17 FPS on an H100


def projection_page(preset: str, efficiencies=(0.25, 0.4)) -> str:
    """Markdown: the preset's per-chunk / per-shot cost and projected FPS on common GPUs."""
    cfg = get_preset(preset)
    lines = [
        f"# GPU projection of the {preset} preset",
        "",
        f"_`python -m benchmark.flops --preset {preset} --out results/perf/projection.md` — analytic FLOPs "
        "(checked against torch's FlopCounterMode in tests/test_flops.py) and a roofline per forward._",
        "",
        f"{tokens_per_frame(cfg)} tokens per latent frame, chunks of {cfg.model.chunk_frames} latent frames, "
        f"{len(cfg.sampler.student_timesteps)} denoising steps a chunk and a K/V-only cache write after each but the last: "
        f"{chunk_flops(cfg, 3) / 1e12:.1f} TFLOP per mid-shot chunk, {shot_flops(cfg) / 1e12:.0f} TFLOP per "
        f"{cfg.video.frames_per_shot}-frame shot; dual cache {cache_bytes(cfg) / 2**30:.2f} GiB and weights "
        f"{weight_bytes(cfg) / 2**30:.2f} GiB in bf16, the same at every shot.",
        "",
        "| GPU | bf16 TFLOP/s | GB/s | " + " | ".join(f"FPS at {e:.0%} | first frame at {e:.0%}" for e in efficiencies) + " |",
        "|---|---:|---:|" + "---:|---:|" * len(efficiencies),
    ]
    for name, (tflops, bandwidth) in GPUS.items():
        cells = []
        for e in efficiencies:
            p = project(cfg, tflops, bandwidth, e)
            cells += [f"{p.fps:.1f}", f"{p.first_frame_s:.2f} s"]
        lines.append(f"| {name} | {tflops:g} | {bandwidth:g} | " + " | ".join(cells) + " |")
    h100 = {e: project(cfg, *GPUS["H100 SXM"], e).fps for e in efficiencies}
    lines += ["", f"The paper claims {PAPER_FPS:g} FPS on one GPU: on an H100 the model predicts "
              + " to ".join(f"{v:.1f}" for v in h100.values())
              + f" FPS at {efficiencies[0]:.0%} to {efficiencies[-1]:.0%} of peak (decoding not counted), "
              "so the claim needs kernels at roughly "
              f"{min(1.0, PAPER_FPS / h100[efficiencies[-1]] * efficiencies[-1]):.0%} of peak or better.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="wan2.1-1.3b")
    ap.add_argument("--tflops", type=float, default=989.0, help="peak dense bf16 TFLOP/s (H100 SXM: 989)")
    ap.add_argument("--bandwidth", type=float, default=3350.0, help="memory bandwidth GB/s (H100 SXM: 3350)")
    ap.add_argument("--efficiency", type=float, default=0.4, help="fraction of peak the kernels reach")
    ap.add_argument("--out", default=None, help="also write a markdown page of projections on common GPUs here "
                    "(e.g. results/perf/projection.md, inlined in results/REPORT.md)")
    args = ap.parse_args(argv)
    cfg = get_preset(args.preset)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(projection_page(args.preset), encoding="utf-8")
        print(f"wrote {args.out}")
    p = project(cfg, args.tflops, args.bandwidth, args.efficiency)
    print(f"{args.preset}: {tokens_per_frame(cfg)} tokens/latent frame, chunk = {cfg.model.chunk_frames} latent frames")
    print(f"  per chunk (mid-shot): {chunk_flops(cfg, 3) / 1e12:.1f} TFLOP; per shot {shot_flops(cfg) / 1e12:.0f} TFLOP")
    print(f"  dual cache {cache_bytes(cfg) / 2**30:.2f} GiB (bf16), weights {weight_bytes(cfg) / 2**30:.2f} GiB")
    print(f"  projected at {args.tflops:g} TFLOP/s x {args.efficiency:.0%}, {args.bandwidth:g} GB/s: "
          f"{p.fps:.1f} FPS, first frame {p.first_frame_s:.2f} s ({'compute' if p.compute_bound else 'memory'}-bound)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

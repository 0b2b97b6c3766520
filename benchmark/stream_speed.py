"""Streaming speed of the causal model on this machine (not a test: it measures wall time).

    python -m benchmark.stream_speed                      # tiny preset, random weights, fp32 + bf16
    python -m benchmark.stream_speed --model checkpoints/tiny/student --shots 10
    python -m benchmark.stream_speed --dtypes fp32 --overlap-decode   # + the decode-overlap variant

Prints, per dtype: ms per chunk (mean over chunks after the first shot), first-chunk latency
(prompt submitted -> first decoded frames), frames per second, and the growth of the per-chunk
time from the second shot, the first with a full memory, to the last (the memory is bounded, so
this should stay ~1.0; benchmark.timing.chunk_time_growth, as in the benchmark's metric).
Speed does not depend on the weights, so random weights give the same figures as trained ones.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmark.timing import chunk_time_growth
from shotstream import paths
from shotstream.autoencoder import TinyVideoAutoencoder
from shotstream.config import get_preset
from shotstream.model.dit import WanDiT, num_parameters
from shotstream.runtime import add_runtime_args, as_arg, dtype_name, set_threads, torch_dtype
from shotstream.session import ShotStreamPipeline

SHIPPED_AUTOENCODER = paths.SHIPPED / "autoencoder"
PROMPTS = [
    "a red striped star walks to the left in a snowy field, wide shot",
    "close-up of the same character spinning on the beach",
    "it jumps in the city at night, medium shot",
]


def build_pipeline(model_path: str | None, dtype: torch.dtype, device: str) -> ShotStreamPipeline:
    if model_path:
        return ShotStreamPipeline.from_pretrained(model_path, device=device, dtype=dtype)
    from shotstream.text_encoder import TextEncoder

    cfg = get_preset("tiny")
    # Speed depends on the architecture, not the weights: the shipped codec (and its geometry) if any.
    if SHIPPED_AUTOENCODER.is_dir():
        ae = TinyVideoAutoencoder.from_pretrained(SHIPPED_AUTOENCODER, device=device)
        cfg.video = ae.cfg
    else:
        ae = TinyVideoAutoencoder(cfg.video).to(device).eval()
    torch.manual_seed(0)
    model = WanDiT(cfg.model, cfg.video.latent_channels).to(device=device, dtype=dtype).eval()
    return ShotStreamPipeline(model, cfg, ae, TextEncoder(max_len=cfg.model.text_len, device=device))


def measure(pipe: ShotStreamPipeline, shots: int, seed: int = 0, overlap_decode: bool = False) -> dict:
    session = pipe.session(seed=seed, max_queue=shots, overlap_decode=overlap_decode)
    chunk_ms: dict[int, list[float]] = {}
    first_chunk, frames, t0 = [], 0, time.perf_counter()
    for k in range(shots):
        session.submit(PROMPTS[k % len(PROMPTS)])
        prev = None
        for c in session.stream():
            start = c.t_start if prev is None else prev
            chunk_ms.setdefault(k, []).append(1000 * (c.t_ready - start))
            if c.chunk == 0:
                first_chunk.append(c.t_ready - c.t_submit)
            prev, frames = c.t_ready, frames + len(c.frames)
    wall = time.perf_counter() - t0
    steady = [ms for k, v in chunk_ms.items() if k > 0 for ms in v[1:]] or chunk_ms[0]
    return {
        "ms_per_chunk": statistics.mean(steady),
        "first_chunk_latency_s": statistics.mean(first_chunk[1:] or first_chunk),
        "fps": frames / wall,
        "chunk_time_growth": chunk_time_growth([k for k, v in chunk_ms.items() for _ in v],
                                               [ms for v in chunk_ms.values() for ms in v], 1 if shots > 2 else 0, shots - 1),
        "cache_mb": session.memory.nbytes / 2**20,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model folder (default: tiny preset with random weights)")
    ap.add_argument("--shots", type=int, default=10, help="shots per story (default 10)")
    ap.add_argument("--dtypes", type=as_arg(lambda text: [dtype_name(d) for d in text.split(",")]), default="fp32,bf16",
                    help="comma list of fp32, bf16, fp16 (default: fp32,bf16)")
    add_runtime_args(ap, dtype=None, threads=torch.get_num_threads())
    ap.add_argument("--overlap-decode", action="store_true",
                    help="also time the session with decoding overlapped with the next chunk's denoising "
                         "(a worker thread; on this 2-core CPU both compete for the same cores)")
    ap.add_argument("--compile", action="store_true",
                    help="also time the model under torch.compile(dynamic=True) (minutes of compilation on a CPU)")
    args = ap.parse_args(argv)
    if args.shots < 2:
        ap.error("--shots must be at least 2 (the chunk-time growth compares shots)")
    set_threads(args.threads)
    for name in args.dtypes:
        pipe = build_pipeline(args.model, torch_dtype(name), args.device)
        report(name, pipe, args)
        if args.overlap_decode:
            report(f"{name} overlap-decode", pipe, args, overlap_decode=True)
        if args.compile:
            t = time.perf_counter()
            pipe.model.compile(dynamic=True)
            measure(pipe, 2)  # (measure needs two shots for the chunk-time growth)
            print(f"{name} compiled: first two shots (compilation) {time.perf_counter() - t:.0f} s")
            report(f"{name} compiled", pipe, args)
    return 0


def report(name: str, pipe: ShotStreamPipeline, args, **session_kw) -> None:
    measure(pipe, 2, **session_kw)  # warm-up: allocator, kernels, text-encoder cache
    r = measure(pipe, args.shots, **session_kw)
    print(f"{name}: {num_parameters(pipe.model) / 1e6:.1f}M params, threads={args.threads}, "
          f"{r['ms_per_chunk']:.1f} ms/chunk, first chunk {r['first_chunk_latency_s'] * 1000:.0f} ms, "
          f"{r['fps']:.1f} FPS, chunk time growth shot 2 -> {args.shots} {r['chunk_time_growth']:.3f}, "
          f"cache {r['cache_mb']:.1f} MB")


if __name__ == "__main__":
    raise SystemExit(main())

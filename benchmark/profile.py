"""Where the time of one streamed shot goes, and how close the denoiser runs to this machine's peak.

    python -m benchmark.profile                                  # shipped student, fp32 -> results/perf/profile.md
    python -m benchmark.profile --model teacher --dtype bf16 --out results/perf/profile_teacher_bf16.md

One story is streamed through `ShotStreamSession` exactly as the demo does: two warm-up shots,
then one shot with a new prompt under `torch.profiler`, each decoded chunk also encoded as the
H.264 segment the demo sends to the browser. The phases are the `record_function` labels of
`shotstream/rollout.py` and `shotstream/session.py`; `other` is the rest of the shot's wall time
(Python, tensor glue, the profiler itself). A second new-prompt shot without the profiler gives
the real wall time.

Every phase's FLOPs are counted in a replay of the profiled shot (`phase_flops`); the figure of merit is the
denoiser's achieved FLOP/s divided by the bf16 matmul FLOP/s measured in the same run
(`benchmark.flops.measure_matmul_flops`), beside the roofline of a chunk: the FLOP/s of its largest
matmul alone, what a chunk of this size could reach without fusing its ops.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # the CPU profiler's own start/stop chatter
import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile, record_function

from benchmark.flops import caption_flops, chunk_tokens, forward_flops, measure_matmul_flops, tokens_per_frame
from benchmark.stream_speed import build_pipeline
from shotstream import runtime
from shotstream.runtime import add_runtime_args, set_threads, torch_dtype
from shotstream.video import encode_segment, pad_to_even

PHASES = ("text_encoding", "context_encoding", "global_cache_write", "denoise", "cache_write", "decode",
          "video_encoding")
WARMUP_PROMPTS = ("a red striped star walks to the left in a snowy field, wide shot",
                  "close-up of the same character spinning on the beach")
PROFILED_PROMPT = "medium shot of the red star jumping in the city at night"
TIMED_PROMPT = "the star creature waves in the desert, wide shot"


def stream_shot(session, prompt: str, segments: Path) -> tuple[float, list]:
    """Submit `prompt`, stream its shot, encode each chunk as a demo segment: (wall s, chunks)."""
    fps = session.pipe.config.video.fps
    t0 = time.perf_counter()
    session.submit(prompt)
    chunks = []
    for c in session.stream():
        with record_function("video_encoding"):
            encode_segment(pad_to_even(c.frames), fps, segments / f"shot{c.shot}_{c.chunk}.mp4")
        chunks.append(c)
    return time.perf_counter() - t0, chunks


def phase_times(prof) -> dict[str, tuple[float, int]]:
    """Wall milliseconds and call count of every labelled phase (outermost ranges only)."""
    out = {p: [0.0, 0] for p in PHASES}
    for e in prof.events():
        if e.name in out:
            out[e.name][0] += e.time_range.elapsed_us() / 1000
            out[e.name][1] += 1
    return {k: (v[0], v[1]) for k, v in out.items()}


# Ops whose FLOPs the profiler counts (with_flops: its matmul and convolution formulas; their
# children, e.g. mkldnn_convolution, carry none) and the attention op, counted from its shapes.
MATMUL_OPS = ("aten::addmm", "aten::mm", "aten::bmm", "aten::baddbmm", "aten::conv2d")
ATTENTION_OP = "aten::scaled_dot_product_attention"


def phase_of(event) -> str | None:
    """The labelled phase an op ran in (its innermost enclosing one), if any."""
    while event is not None and event.name not in PHASES:
        event = event.cpu_parent
    return event.name if event is not None else None


def phase_flops(prof) -> dict[str, float]:
    """FLOPs each phase did in a profiled shot: matmuls and 2-D convolutions as the profiler
    counts them, attention as 4 B H Nq Nk Dh from the recorded shapes of q and k (QK^T and AV).
    Not counted: element-wise ops and the DiT's 3-D patch embedding (~0.2% of a forward)."""
    out = dict.fromkeys(PHASES, 0.0)
    for e in prof.events():
        if e.name in MATMUL_OPS:
            flops = e.flops
        elif e.name == ATTENTION_OP:
            (b, h, nq, dh), (_, _, nk, _) = e.input_shapes[:2]
            flops = 4 * b * h * nq * nk * dh
        else:
            continue
        phase = phase_of(e)
        if phase is not None:
            out[phase] += flops
    return out


def denoise_flops(cfg, kind: str) -> float:
    """Analytic FLOPs of one shot's denoising forwards (no cache writes, no context pass); a streamed
    shot projects its caption's K/V once, in its first forward."""
    if kind == "bidirectional":
        tpf = tokens_per_frame(cfg)
        n = (cfg.model.context_frames + cfg.video.latent_frames_per_shot) * tpf
        passes = cfg.sampler.teacher_steps * cfg.sampler.teacher_forwards_per_step
        return passes * forward_flops(cfg, n, n)
    steps = len(cfg.sampler.student_timesteps)
    chunks = -(-cfg.video.latent_frames_per_shot // cfg.model.chunk_frames)
    return sum(steps * forward_flops(cfg, c.tokens, c.keys, text_kv=False)
               for c in (chunk_tokens(cfg, j) for j in range(chunks))) + caption_flops(cfg, embed=False)


def profile_story(pipe, seed: int = 0) -> dict:
    """Two warm-up shots, then one shot three times from the same history: under the profiler
    (phase times), again recording shapes for the FLOP count (which slows small ops, so apart),
    and once unprofiled with another prompt (the real wall time)."""
    session = pipe.session(seed=seed, max_queue=4)

    def rewind():  # the next shot sees the same history, prepared when its predecessor ended, as in the app
        session.shots.pop()
        session.prepare_context()

    with tempfile.TemporaryDirectory() as tmp:
        for prompt in WARMUP_PROMPTS:  # allocator, kernels, the first shots' history
            stream_shot(session, prompt, Path(tmp))
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            profiled_s, chunks = stream_shot(session, PROFILED_PROMPT, Path(tmp))
        rewind()
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True, with_flops=True) as counted:
            stream_shot(session, PROFILED_PROMPT, Path(tmp))
        rewind()
        wall_s, timed = stream_shot(session, TIMED_PROMPT, Path(tmp))
    return {"phases": phase_times(prof), "flops": phase_flops(counted), "profiled_s": profiled_s, "wall_s": wall_s,
            "chunks": len(chunks), "frames": sum(len(c.frames) for c in timed),
            "first_frame_s": timed[0].t_ready - timed[0].t_submit}


def chunk_matmul_shape(cfg) -> tuple[int, int, int]:
    """(m, k, n) of a streamed chunk's largest matmul: its tokens through the feed-forward's first layer."""
    return cfg.model.chunk_frames * tokens_per_frame(cfg), cfg.model.dim, cfg.model.ffn_dim


def report(pipe, result: dict, peak_bf16: float, peak_fp32: float, command: str, chunk_matmul: float) -> str:
    """The page: each phase's time, FLOPs and FLOP/s against the bf16 peak, and the roofline of a
    chunk (`chunk_matmul`: FLOP/s of its largest matmul alone, in the model's dtype)."""
    cfg = pipe.config
    phases, total_ms = result["phases"], result["profiled_s"] * 1000
    lines = [
        "# Profile of one streamed shot",
        "",
        f"_`{command}` — {pipe.kind} model, {cfg.preset} preset {cfg.video.width}x{cfg.video.height}, "
        f"{cfg.video.frames_per_shot} frames per shot, {str(pipe.model.dtype).removeprefix('torch.')}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, torch {torch.__version__}._",
        "",
        "GFLOP: the phase's matmuls, convolutions and attention (the profiler's count, see `phase_flops`); "
        "GFLOP/s over its profiled time, against the bf16 matmul peak measured in the same run.",
        "",
        "| phase | ms | calls | share | GFLOP | GFLOP/s | of bf16 peak |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, (ms, calls) in phases.items():
        flops = result["flops"][name]
        rate = flops / (ms / 1000) if ms else 0.0
        cells = [f"{flops / 1e9:.2f}", f"{rate / 1e9:.1f}", f"{rate / peak_bf16:.1%}"] if flops else ["", "", ""]
        lines.append(f"| {name} | {ms:.1f} | {calls} | {ms / total_ms:.1%} | " + " | ".join(cells) + " |")
    other = total_ms - sum(ms for ms, _ in phases.values())
    total_flops = sum(result["flops"].values())
    lines += [f"| other | {other:.1f} |  | {other / total_ms:.1%} |  |  |  |",
              f"| **shot, profiled** | **{total_ms:.1f}** |  | 100% | {total_flops / 1e9:.2f} | "
              f"{total_flops / result['profiled_s'] / 1e9:.1f} | {total_flops / result['profiled_s'] / peak_bf16:.1%} |", ""]
    analytic = denoise_flops(cfg, pipe.kind)
    denoise_s = phases["denoise"][0] / 1000
    achieved = result["flops"]["denoise"] / denoise_s if denoise_s else float("nan")
    m, k, n = chunk_matmul_shape(cfg)
    lines += [
        f"Without the profiler the shot took **{result['wall_s'] * 1000:.0f} ms** for {result['frames']} frames "
        f"({result['frames'] / result['wall_s']:.1f} FPS with video encoding), first frames after "
        f"**{result['first_frame_s'] * 1000:.0f} ms**.",
        "",
        f"Denoiser: {result['flops']['denoise'] / 1e9:.2f} GFLOP counted ({analytic / 1e9:.2f} in the analytic model "
        f"of `benchmark.flops`) in {phases['denoise'][0]:.0f} ms = **{achieved / 1e9:.1f} GFLOP/s**; measured matmul "
        f"peak bf16 {peak_bf16 / 1e9:.1f} GFLOP/s, fp32 {peak_fp32 / 1e9:.1f} GFLOP/s; **achieved / bf16 peak = "
        f"{achieved / peak_bf16:.1%}** (/ fp32 peak = {achieved / peak_fp32:.1%}).",
        "",
        f"Roofline of a chunk: its largest matmul alone ([{m}, {k}] @ [{k}, {n}]: the chunk's tokens into the "
        f"feed-forward) runs at {chunk_matmul / 1e9:.1f} GFLOP/s here, {chunk_matmul / peak_bf16:.1%} of the bf16 "
        f"peak: the ceiling of a chunk this size. The denoiser reaches {achieved / chunk_matmul:.0%} of it; the rest "
        "of its time is attention, norms, RoPE, casts and copies.",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="student",
                    help="shipped model name or folder (default: student; 'random' = tiny preset, random weights)")
    add_runtime_args(ap, threads=torch.get_num_threads())
    ap.add_argument("--out", default="results/perf/profile.md", help="markdown table to write ('' = print only)")
    args = runtime.parse_args(ap, argv)
    set_threads(args.threads)
    folder = None
    if args.model != "random":
        from shotstream.model.loading import resolve_model

        folder = str(resolve_model(args.model))
    pipe = build_pipeline(folder, torch_dtype(args.dtype), args.device)
    result = profile_story(pipe)
    peak_bf16 = measure_matmul_flops(torch.bfloat16, device=args.device)
    peak_fp32 = measure_matmul_flops(torch.float32, device=args.device)
    chunk_matmul = measure_matmul_flops(pipe.model.dtype, device=args.device, shape=chunk_matmul_shape(pipe.config))
    command = "python -m benchmark.profile " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
    text = report(pipe, result, peak_bf16, peak_fp32, command.strip(), chunk_matmul)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

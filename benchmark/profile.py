"""Where the time of one streamed shot goes, and how close the denoiser runs to this machine's peak.

    python -m benchmark.profile                                  # shipped student, fp32 -> results/perf/profile.md
    python -m benchmark.profile --model teacher --dtype bf16 --out results/perf/profile_teacher_bf16.md

One story is streamed through `ShotStreamSession` exactly as the demo does: two warm-up shots,
then one shot with a new prompt under `torch.profiler`, each decoded chunk also encoded as the
H.264 segment the demo sends to the browser. The phases are the `record_function` labels of
`shotstream/rollout.py` and `shotstream/session.py`; `other` is the rest of the shot's wall time
(Python, tensor glue, the profiler itself). A second new-prompt shot without the profiler gives
the real wall time.

Figure of merit (issue: real time on a 2-core CPU): achieved FLOP/s of the denoising forwards
(analytic FLOPs of `benchmark.flops` / measured `denoise` time) divided by the bf16 matmul FLOP/s
measured in the same run (`benchmark.flops.measure_matmul_flops`).
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

from benchmark.flops import chunk_flops, forward_flops, measure_matmul_flops, tokens_per_frame
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


def denoise_flops(cfg, kind: str) -> float:
    """Analytic FLOPs of one shot's denoising forwards (no cache writes, no context pass)."""
    if kind == "bidirectional":
        tpf = tokens_per_frame(cfg)
        n = (cfg.model.context_frames + cfg.video.latent_frames_per_shot) * tpf
        passes = cfg.sampler.teacher_steps * cfg.sampler.teacher_forwards_per_step
        return passes * forward_flops(cfg, n, n)
    steps = len(cfg.sampler.student_timesteps)
    chunks = -(-cfg.video.latent_frames_per_shot // cfg.model.chunk_frames)
    return sum(chunk_flops(cfg, j) * steps / (steps + 1) for j in range(chunks))


def profile_story(pipe, seed: int = 0) -> dict:
    session = pipe.session(seed=seed, max_queue=4)
    with tempfile.TemporaryDirectory() as tmp:
        for prompt in WARMUP_PROMPTS:  # allocator, kernels, the first shots' history
            stream_shot(session, prompt, Path(tmp))
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            profiled_s, chunks = stream_shot(session, PROFILED_PROMPT, Path(tmp))
        session.shots.pop()  # the unprofiled shot below sees the same history...
        session.prepare_context()  # ...prepared when its predecessor ended, as in the app
        wall_s, timed = stream_shot(session, TIMED_PROMPT, Path(tmp))
    phases = phase_times(prof)
    return {"phases": phases, "profiled_s": profiled_s, "wall_s": wall_s, "chunks": len(chunks),
            "frames": sum(len(c.frames) for c in timed), "first_frame_s": timed[0].t_ready - timed[0].t_submit}


def report(pipe, result: dict, peak_bf16: float, peak_fp32: float, command: str) -> str:
    cfg = pipe.config
    phases, total_ms = result["phases"], result["profiled_s"] * 1000
    lines = [
        "# Profile of one streamed shot",
        "",
        f"_`{command}` — {pipe.kind} model, {cfg.preset} preset {cfg.video.width}x{cfg.video.height}, "
        f"{cfg.video.frames_per_shot} frames per shot, {str(pipe.model.dtype).removeprefix('torch.')}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, torch {torch.__version__}._",
        "",
        "| phase | ms | calls | share |",
        "|---|---:|---:|---:|",
    ]
    for name, (ms, calls) in phases.items():
        lines.append(f"| {name} | {ms:.1f} | {calls} | {ms / total_ms:.1%} |")
    other = total_ms - sum(ms for ms, _ in phases.values())
    lines += [f"| other | {other:.1f} |  | {other / total_ms:.1%} |",
              f"| **shot, profiled** | **{total_ms:.1f}** |  | 100% |", ""]
    flops = denoise_flops(cfg, pipe.kind)
    achieved = flops / (phases["denoise"][0] / 1000) if phases["denoise"][0] else float("nan")
    lines += [
        f"Without the profiler the shot took **{result['wall_s'] * 1000:.0f} ms** for {result['frames']} frames "
        f"({result['frames'] / result['wall_s']:.1f} FPS with video encoding), first frames after "
        f"**{result['first_frame_s'] * 1000:.0f} ms**.",
        "",
        f"Denoiser: {flops / 1e9:.2f} GFLOP per shot (analytic) in {phases['denoise'][0]:.0f} ms = "
        f"**{achieved / 1e9:.1f} GFLOP/s**; measured matmul peak bf16 {peak_bf16 / 1e9:.1f} GFLOP/s, "
        f"fp32 {peak_fp32 / 1e9:.1f} GFLOP/s; **achieved / bf16 peak = {achieved / peak_bf16:.1%}** "
        f"(/ fp32 peak = {achieved / peak_fp32:.1%}).",
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
    command = "python -m benchmark.profile " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
    text = report(pipe, result, peak_bf16, peak_fp32, command.strip())
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

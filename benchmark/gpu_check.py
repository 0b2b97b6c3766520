"""GPU check of the released model's streaming path: latency, FPS, memory and FLOP/s of one story.

    python -m benchmark.gpu_check --device cuda                          # random weights, wan2.1-1.3b, 5 shots
    python -m benchmark.gpu_check --device cuda --model models/shotstream --text-device cpu
    python -m benchmark.gpu_check --device cpu --preset tiny --shots 3   # a smoke run

One story of `--shots` shots streams through `ShotStreamSession` exactly as the demo and the
benchmark stream it (Wan VAE decoding chunk by chunk with its causal cache), after a warm-up
shot in a separate session (kernels, allocator, cuDNN's choice of 3D-conv algorithms). Written
to results/perf/gpu_check.md (or --out) and printed:

- first-frame latency: prompt submitted -> its first decoded chunk, per shot;
- FPS: frames of the story / its wall time;
- chunk-time growth from the second shot (the first with a full memory) to the last, as
  `benchmark.stream_speed` computes it (`benchmark.timing.chunk_time_growth`; ~1.0 when memory
  is bounded);
- peak memory (CUDA: torch.cuda.max_memory_allocated over the story) and the resident size of
  each component: DiT weights, KV cache (the session's dual cache), VAE, text encoder;
- achieved FLOP/s of the denoiser: `benchmark.flops.shot_flops` (every DiT forward of a shot:
  the global-context pass, the denoising steps and the cache writes) over the measured time of
  the DiT's forwards (synchronised around each call) in the shots after the first, whose
  conditioning the FLOP model describes; against the GPU's data-sheet bf16 peak when its name
  is in `benchmark.flops.GPUS`, and against a bf16 matmul measured in the same run.

Random weights (the default) need no download: the DiT and a Wan2.1 VAE (diffusers'
AutoencoderKLWan, its default config = Wan2.1's) are built at random, and a stand-in text encoder
gives random states of the preset's text_dim and text_len. Speed does not depend on the weights.
Captions are embedded before the story in every case, so timings exclude text encoding; with
`--model` the real umT5's time per prompt is measured separately and reported.

Run time at the real size (480x832, 81-frame shots, 21 latent frames): the FLOP model gives
1,257 TFLOP per shot, ~5 s of DiT per shot at 25% of an H100's 989 TFLOP/s; with the Wan VAE's
decode (a few seconds per 81-frame shot) the warm-up shot + five shots take ~1 minute, and under
4 minutes even at 5% of peak: within 5 minutes on one H100-class GPU, model building included.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
import zlib
from pathlib import Path

import torch

from benchmark.flops import GPUS, measure_matmul_flops, shot_flops
from benchmark.stream_speed import PROMPTS
from benchmark.timing import chunk_time_growth, measure_peak_memory
from shotstream.config import apply_overrides, get_preset
from shotstream.runtime import add_runtime_args, as_arg, check_device, dtype_name, positive_int, set_threads, torch_dtype
from shotstream.session import ShotStreamPipeline

DEFAULT_OUT = "results/perf/gpu_check.md"
GLOBAL_CAPTION = "A red striped star and a blue round creature travel through snow, beach and city."


class StandInTextEncoder:
    """Random caption states of the DiT's text_dim: random weights need no umT5 download. The
    states are a fixed function of the caption (crc32 seed), all `max_len` tokens valid."""

    def __init__(self, dim: int, max_len: int):
        self.dim, self.max_len = dim, max_len

    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        states = torch.stack([torch.randn(self.max_len, self.dim, generator=torch.Generator().manual_seed(
            zlib.crc32(c.encode("utf-8")))) for c in captions])  # [n, L, text_dim]
        return states, torch.ones(len(captions), self.max_len, dtype=torch.bool)

    def null_caption(self, batch_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros(batch_size, self.max_len, self.dim), torch.ones(batch_size, self.max_len, dtype=torch.bool)


def random_pipeline(preset: str, overrides, device: str, dtype: torch.dtype, vae_base_dim: int = 96) -> ShotStreamPipeline:
    """The preset's DiT and a Wan2.1 VAE at random (vae_base_dim: 96 is Wan2.1's width; smaller
    only for a quick CPU run), with the stand-in text encoder."""
    from diffusers import AutoencoderKLWan

    from shotstream.model.dit import WanDiT
    from shotstream.wan_vae import WanVideoAutoencoder

    cfg = apply_overrides(get_preset(preset), overrides).validate()
    torch.manual_seed(0)
    with torch.device(device):  # built in place: no 5.7 GB fp32 copy of the 1.3B DiT on the host
        model = WanDiT(cfg.model, cfg.video.latent_channels).to(dtype).eval()
        vae = AutoencoderKLWan(base_dim=vae_base_dim, z_dim=cfg.video.latent_channels).to(dtype)
    return ShotStreamPipeline(model, cfg, WanVideoAutoencoder(vae), StandInTextEncoder(cfg.model.text_dim, cfg.model.text_len))


def nbytes(module) -> int:
    """Bytes of a module's parameters and buffers (0 for something without them)."""
    if not isinstance(module, torch.nn.Module):
        return 0
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def gpu_peak_tflops(name: str) -> tuple[str, float] | None:
    """(GPUS key, bf16 TFLOP/s) for a CUDA device name, e.g. 'NVIDIA H100 80GB HBM3' -> H100 SXM.
    An SXM figure is not given to the PCIe / NVL parts of the same chip (lower clocks)."""
    for key, (tflops, _) in GPUS.items():
        chip = key.removesuffix(" SXM")
        if chip in name and not (key.endswith("SXM") and ("PCIe" in name or "NVL" in name)):
            return key, tflops
    return None


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class ForwardTimer:
    """Wall seconds spent in the DiT's forwards, synchronised before and after each call so a
    CUDA kernel queue is not mistaken for compute (each forward is tens of ms at the real size)."""

    def __init__(self, model: torch.nn.Module):
        self.seconds, self.calls, self._t = 0.0, 0, 0.0
        self.device = next(model.parameters()).device
        self._handles = [model.register_forward_pre_hook(self._start), model.register_forward_hook(self._stop)]

    def _start(self, *_):
        sync(self.device)
        self._t = time.perf_counter()

    def _stop(self, *_):
        sync(self.device)
        self.seconds += time.perf_counter() - self._t
        self.calls += 1

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def stream_story(pipe: ShotStreamPipeline, shots: int, seed: int = 0) -> dict:
    """Stream `shots` shots, one prompt submitted after the previous shot ends (as stream_speed).
    Captions are embedded first (text encoding timed here, excluded from the stream)."""
    session = pipe.session(seed=seed, global_caption=GLOBAL_CAPTION, max_queue=1)
    prompts = [PROMPTS[k % len(PROMPTS)] for k in range(shots)]
    sync(pipe.device)
    t = time.perf_counter()
    pipe.embed_captions([session.prompt(p, k) for k, p in enumerate(prompts)])
    sync(pipe.device)
    text_s = time.perf_counter() - t
    timer = ForwardTimer(pipe.model)
    per_shot, chunk_shots, chunk_s = [], [], []
    try:
        sync(pipe.device)
        t0 = time.perf_counter()
        for k, prompt in enumerate(prompts):
            dit_before, calls_before = timer.seconds, timer.calls
            session.submit(prompt)
            prev, frames, chunks = None, 0, []
            for c in session.stream():  # t_ready is after the frames reached the host (.cpu() syncs)
                chunk_shots.append(k)
                chunk_s.append(c.t_ready - (c.t_start if prev is None else prev))
                prev, frames = c.t_ready, frames + len(c.frames)
                chunks.append(c)
            per_shot.append({"shot": k, "chunks": len(chunks), "frames": frames,
                             "first_frame_s": chunks[0].t_ready - chunks[0].t_submit,
                             "shot_s": chunks[-1].t_ready - chunks[0].t_submit, "dit_s": timer.seconds - dit_before,
                             "dit_calls": timer.calls - calls_before})
        wall = time.perf_counter() - t0
    finally:
        timer.remove()
    return {"shots": per_shot, "wall_s": wall, "frames": sum(s["frames"] for s in per_shot),
            "chunk_shots": chunk_shots, "chunk_s": chunk_s, "text_encoding_s": text_s, "prompts": len(prompts),
            "kv_cache_bytes": session.memory.nbytes}


def growth(chunk_shots: list[int], chunk_s: list[float], shots: int) -> float:
    """stream_speed's chunk-time growth, shot 2 -> last; NaN (reported, not raised) where the
    robust line cannot be read, so minutes of GPU time still end in a page."""
    try:
        return chunk_time_growth(chunk_shots, chunk_s, 1 if shots > 2 else 0, shots - 1)
    except ValueError:
        return float("nan")


def run_check(pipe: ShotStreamPipeline, shots: int, warmup: int = 1, seed: int = 0) -> dict:
    """Warm-up shots in their own session, then the timed story; every figure of the page."""
    if pipe.kind != "causal":
        raise ValueError(f"gpu_check times the causal streaming path; this model is {pipe.kind!r}")
    if shots < 2:
        raise ValueError(f"shots must be at least 2 (the chunk-time growth compares shots), got {shots}")
    device = pipe.device
    if warmup:
        stream_story(pipe, warmup, seed=seed + 1)
    story, peak_mb = measure_peak_memory(lambda: stream_story(pipe, shots, seed), str(device))
    steady = story["shots"][1:]  # the FLOP model's shots: a history to condition on
    flops = shot_flops(pipe.config) * len(steady)
    dit_s = sum(s["dit_s"] for s in steady)
    cuda = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if cuda else (platform.processor() or platform.machine())
    peak = gpu_peak_tflops(name) if cuda else None
    matmul = measure_matmul_flops(torch.bfloat16, n=4096 if cuda else 256, device=str(device))
    te = pipe.text_encoder
    return {
        **story,
        "device": name, "device_type": device.type, "dtype": str(pipe.model.dtype).removeprefix("torch."),
        "preset": pipe.config.preset, "height": pipe.config.video.height, "width": pipe.config.video.width,
        "frames_per_shot": pipe.config.video.frames_per_shot, "warmup_shots": warmup,
        "fps": story["frames"] / story["wall_s"],
        "first_frame_s": story["shots"][0]["first_frame_s"],
        "first_frame_steady_s": statistics.mean(s["first_frame_s"] for s in steady),
        "chunk_time_growth": growth(story["chunk_shots"], story["chunk_s"], shots),
        "peak_memory_mb": peak_mb,
        "dit_bytes": nbytes(pipe.model), "vae_bytes": nbytes(pipe.autoencoder),
        "text_encoder_bytes": nbytes(getattr(te, "model", None)),
        "text_encoder": "stand-in (random states)" if isinstance(te, StandInTextEncoder) else f"{type(te).__name__} on {te.device}",
        "dit_flops": flops, "dit_s": dit_s, "achieved_flops": flops / dit_s,
        "gpu_peak": peak, "matmul_flops": matmul,
    }


def human(value: float, unit: str, base: int = 1000) -> str:
    """3 significant digits with a k/M/G/T prefix (base 1024 for bytes): 1.2 GiB and 40 KiB alike."""
    prefixes = ["", "k" if base == 1000 else "Ki", "M" if base == 1000 else "Mi", "G" if base == 1000 else "Gi",
                "T" if base == 1000 else "Ti"]
    i = 0
    while abs(value) >= base and i < len(prefixes) - 1:
        value, i = value / base, i + 1
    return f"{value:.3g} {prefixes[i]}{unit}"


def page(r: dict, command: str) -> str:
    memory_kind = "torch.cuda.max_memory_allocated" if r["device_type"] == "cuda" else "peak resident set of the process"
    text_note = ("timings exclude text encoding: the stand-in gives random states, no umT5 ran"
                 if r["text_encoder"].startswith("stand-in") else
                 f"timings exclude text encoding, measured apart: {r['text_encoding_s'] / r['prompts']:.2f} s per prompt "
                 f"({r['text_encoder']})")
    lines = [
        "# GPU check: the streaming path at one story",
        "",
        f"_`{command}` — {r['device']}, {r['dtype']}, {r['preset']} preset {r['width']}x{r['height']}, "
        f"{r['frames_per_shot']} frames per shot, {len(r['shots'])} shots after {r['warmup_shots']} warm-up shot(s), "
        f"torch {torch.__version__}; {text_note}._",
        "",
        "| quantity | value |",
        "|---|---:|",
        f"| first-frame latency, first shot (submit -> first decoded chunk) | {r['first_frame_s']:.3f} s |",
        f"| first-frame latency, mean of shots 2-{len(r['shots'])} | {r['first_frame_steady_s']:.3f} s |",
        f"| frames / story wall time | {r['frames']} / {r['wall_s']:.3f} s |",
        f"| FPS | {r['fps']:.2f} |",
        f"| chunk-time growth, shot 2 -> {len(r['shots'])} | {r['chunk_time_growth']:.3f} |",
        f"| peak memory ({memory_kind}) | {human(r['peak_memory_mb'] * 2**20, 'B', 1024)} |",
        f"| DiT weights | {human(r['dit_bytes'], 'B', 1024)} |",
        f"| KV cache (dual cache of the session) | {human(r['kv_cache_bytes'], 'B', 1024)} |",
        f"| VAE weights | {human(r['vae_bytes'], 'B', 1024)} |",
        f"| text encoder weights | {human(r['text_encoder_bytes'], 'B', 1024)} ({r['text_encoder']}) |",
        f"| DiT FLOPs, shots 2-{len(r['shots'])} (benchmark.flops.shot_flops) | {human(r['dit_flops'], 'FLOP')} |",
        f"| DiT forward time, shots 2-{len(r['shots'])} | {r['dit_s']:.3f} s |",
        f"| achieved FLOP/s of the denoiser | {human(r['achieved_flops'], 'FLOP/s')} |",
        f"| bf16 matmul measured here | {human(r['matmul_flops'], 'FLOP/s')} "
        f"({r['achieved_flops'] / r['matmul_flops']:.1%} achieved) |",
    ]
    if r["gpu_peak"]:
        key, tflops = r["gpu_peak"]
        lines.append(f"| data-sheet bf16 peak ({key}) | {tflops:g} TFLOP/s ({r['achieved_flops'] / (tflops * 1e12):.1%} achieved) |")
    lines += ["", "| shot | chunks | frames | first frame (s) | shot (s) | DiT forwards | DiT forward time (s) |",
              "|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {s['shot'] + 1} | {s['chunks']} | {s['frames']} | {s['first_frame_s']:.3f} | {s['shot_s']:.3f} | {s['dit_calls']} | {s['dit_s']:.3f} |"
              for s in r["shots"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="an imported model folder (`shotstream import`); default: random weights")
    ap.add_argument("--preset", help="config preset of the random weights (default: wan2.1-1.3b)")
    ap.add_argument("--override", nargs="*", default=[], metavar="KEY=VALUE",
                    help="config overrides of the random weights, e.g. model.num_layers=2 video.height=64")
    ap.add_argument("--vae-base-dim", type=as_arg(positive_int), default=96,
                    help="width of the random Wan VAE (96 = Wan2.1's; smaller only for a quick CPU run)")
    add_runtime_args(ap, dtype=None)
    ap.add_argument("--dtype", type=as_arg(dtype_name), default=None, help="fp32 | bf16 | fp16 (default: bf16 on CUDA, else fp32)")
    ap.add_argument("--text-device", type=as_arg(check_device), default=None,
                    help="device of a real text encoder (--model; default: --device)")
    ap.add_argument("--shots", type=as_arg(positive_int), default=5, help="shots in the timed story (default 5)")
    ap.add_argument("--warmup", type=int, default=1, help="warm-up shots before the story (default 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=DEFAULT_OUT, help=f"markdown page to write (default {DEFAULT_OUT})")
    args = ap.parse_args(argv)
    if args.shots < 2:
        ap.error("--shots must be at least 2 (the chunk-time growth compares shots)")
    if args.warmup < 0:
        ap.error("--warmup must be >= 0")
    if args.model and (args.preset or args.override or args.vae_base_dim != 96):
        ap.error("--preset, --override and --vae-base-dim shape the random weights; a --model folder has its own config")
    dtype = torch_dtype(args.dtype or ("bfloat16" if torch.device(args.device).type == "cuda" else "float32"))
    set_threads(args.threads)
    if args.model:
        pipe = ShotStreamPipeline.from_pretrained(args.model, device=args.device, dtype=dtype, text_device=args.text_device)
    else:
        try:
            pipe = random_pipeline(args.preset or "wan2.1-1.3b", args.override, args.device, dtype, args.vae_base_dim)
        except (KeyError, ValueError) as e:
            ap.error(str(e).strip("'\""))
    result = run_check(pipe, args.shots, args.warmup, args.seed)
    text = page(result, "python -m benchmark.gpu_check " + " ".join(argv if argv is not None else sys.argv[1:]))
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Seconds a training step takes, split into building the batch and the update, per variant.

    python -m benchmark.train_speed                  # teacher phase 1: fp32, fp32 from the latent cache, bf16
    python -m benchmark.train_speed --variants fp32 fp32+cache --steps 6 --out results/perf/train_speed.md
    python -m benchmark.train_speed --stage inter --config inter --optimizer generator --variants fp32 bf16

A variant is a precision (fp32, or bf16 autocast) and, with `+cache`, the batch read from a warm
`data.LatentCache` (filled for the timed steps before timing; without it every example is
rendered and encoded, as `precision`-only runs do). Variants run interleaved in one process on
the same steps, so a machine that slows down meanwhile slows all alike; the first round is a
warm-up. The page records the machine: its fp32 and bf16 matmul FLOP/s measured in the same run,
and whether bf16 is native (`runtime.native_bf16`), which `precision: auto` decides on.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmark.flops import measure_matmul_flops
from shotstream.runtime import add_runtime_args, native_bf16, set_threads
from shotstream.training.cli import load_stage, resolve_config


VARIANTS = ("fp32", "fp32+cache", "bf16", "bf16+cache")


def cpu_name() -> str:
    """The CPU's model name and the vector units torch dispatches to (e.g. "AMD EPYC, AVX2")."""
    name = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        name = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                     if line.startswith("model name")), name)
    return f"{name}, {torch.backends.cpu.get_cpu_capability()}"


def time_step(stage, name: str, opt, precision: str, step: int, device: str) -> tuple[float, float]:
    """(batch s, update s) of one step: stage.batch, then optimizer `name`'s loss, backward and an AdamW step."""
    t0 = time.perf_counter()
    batch = stage.batch(step, 0, 1)
    t1 = time.perf_counter()
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss, _ = stage.loss(name, batch, step)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return t1 - t0, time.perf_counter() - t1


def page(config: str, batch_size: int, rows: dict[str, list[tuple[float, float]]], machine: dict,
         update: str | None = None) -> str:
    med = {p: tuple(statistics.median(t[i] for t in r) for i in (0, 1)) for p, r in rows.items()}
    title = f"# Training step time: `{config}`, batch {batch_size}" + (f", the {update} update" if update else "")
    lines = [title, "",
             f"Machine: {machine['cpu']}, {machine['threads']} threads; matmul {machine['fp32']:.0f} GFLOP/s in fp32, "
             f"{machine['bf16']:.0f} in bf16; native bf16: {'yes' if machine['native'] else 'no'} "
             f"(`precision: auto` trains in {'bf16' if machine['native'] else 'fp32'} here).", "",
             "| variant | batch (s) | update (s) | step (s) | step vs fp32 |", "|---|---|---|---|---|"]
    base = sum(med.get("fp32", next(iter(med.values()))))
    for p, (b, u) in med.items():
        lines.append(f"| {p} | {b:.2f} | {u:.2f} | {b + u:.2f} | {base / (b + u):.2f}x |")
    n = len(next(iter(rows.values())))
    lines += ["", f"Medians of {n} steps per variant after one warm-up round, interleaved in one run on the same "
              "steps (`python -m benchmark.train_speed`); `+cache`: the batch read from a warm latent cache."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", default="teacher")
    p.add_argument("--config", default="teacher", help="a shipped run config or a path (its batch size is used)")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE", help="as for `shotstream train`")
    p.add_argument("--optimizer", help="which of the stage's updates to time (default: its first; the DMD "
                   "stages: critic, generator)")
    p.add_argument("--variants", nargs="+", default=["fp32", "fp32+cache", "bf16"], choices=VARIANTS)
    p.add_argument("--steps", type=int, default=4, help="timed steps per variant (after one warm-up round)")
    p.add_argument("--out", type=Path, default=None, help="write the markdown page here (default: print it)")
    add_runtime_args(p, dtype=None, threads=2)
    args = p.parse_args(argv)
    set_threads(args.threads)
    machine = {"cpu": cpu_name(), "threads": torch.get_num_threads(),
               "fp32": measure_matmul_flops(torch.float32, n=1024, device=args.device) / 1e9,
               "bf16": measure_matmul_flops(torch.bfloat16, n=1024, repeats=3, device=args.device) / 1e9,
               "native": native_bf16(args.device)}
    with tempfile.TemporaryDirectory(prefix="shotstream-train-speed-") as tmp:
        stages = {}
        for cached in sorted({v.endswith("+cache") for v in args.variants}):
            cfg = resolve_config(args.stage, args.config, ["stage.export_to=", "sample_every=0", *args.override],
                                 out=f"{tmp}/run", device=args.device)
            if hasattr(cfg.stage, "latent_cache"):  # (the teacher's: off unless the variant reads it)
                cfg.stage.latent_cache = f"{tmp}/latents" if cached else ""
            elif cached:
                p.error(f"the {args.stage} stage has no latent cache: drop the +cache variants")
            stage = load_stage(args.stage)(cfg.stage, cfg)
            specs = stage.optimizers()
            name = args.optimizer or next(iter(specs))  # (the same for every variant)
            if name not in specs:
                p.error(f"--optimizer {name!r}: the {args.stage} stage has {', '.join(specs)}")
            if cached:
                for step in range(args.steps + 1):  # warm the cache for every step timed
                    stage.batch(step, 0, 1)
            params = [q for m in specs[name].modules for q in stage.modules()[m].parameters() if q.requires_grad]
            # (an optimizer of its own: nothing is saved, the weights only move a little)
            stages[cached] = stage, torch.optim.AdamW(params, lr=1e-5)
        rows: dict[str, list[tuple[float, float]]] = {v: [] for v in args.variants}
        for step in range(args.steps + 1):
            for v in args.variants:
                stage, opt = stages[v.endswith("+cache")]
                t = time_step(stage, name, opt, v.split("+")[0], step, args.device)
                if step:  # the first round warms up
                    rows[v].append(t)
                print(f"{v} step {step}: batch {t[0]:.2f} s, update {t[1]:.2f} s", flush=True)
    text = page(args.config, cfg.batch_size, rows, machine, update=name if len(specs) > 1 else None)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

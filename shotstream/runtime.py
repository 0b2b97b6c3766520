"""Device, dtype and CPU threads as chosen on a command line, checked once for every entry point
(`shotstream`, `shotstream-bench`, the demo, the speed tools): a typo or a missing GPU is one
clear error before anything loads, never a traceback from deep inside torch."""

from __future__ import annotations

import argparse
from typing import Callable

import torch

# Names accepted for a dtype -> torch's name, the one results record.
DTYPE_NAMES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16",
               "fp16": "float16", "float16": "float16"}


def dtype_name(name: str) -> str:
    """'bf16' or 'bfloat16' -> 'bfloat16'; ValueError for anything else."""
    if name not in DTYPE_NAMES:
        raise ValueError(f"unknown dtype {name!r}; choose from {', '.join(DTYPE_NAMES)}")
    return DTYPE_NAMES[name]


def torch_dtype(name: str) -> torch.dtype:
    return getattr(torch, dtype_name(name))


def dtype_arg(name: str) -> str:
    """A --dtype as typed: a dtype's name (as torch names it) or "auto", which `parse_args` resolves
    once the device is known."""
    if name == "auto":
        return name
    try:
        return dtype_name(name)
    except ValueError as e:
        raise ValueError(f"{e}, or auto") from None


def auto_dtype(device: str | torch.device) -> str:
    """The dtype "auto" runs in on `device`: bfloat16 where it multiplies bf16 natively
    (`native_bf16`), else float32 (emulated bf16 is ~100x slower than fp32)."""
    return "bfloat16" if native_bf16(device) else "float32"


def check_device(name: str) -> str:
    """A device string torch understands and this machine has ('cpu', 'cuda', 'cuda:1')."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: no CUDA GPU is visible on this machine (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: only {torch.cuda.device_count()} CUDA GPU(s) are visible")
    elif device.type != "cpu":
        raise ValueError(f"device {name!r}: only cpu and cuda are supported")
    return name


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise ValueError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise ValueError(f"must be at least 1, got {value}")
    return value


def as_arg(parse: Callable[[str], object]) -> Callable[[str], object]:
    """`parse` as an argparse type: its ValueError becomes argparse's one-line usage error."""
    def arg(text: str):
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    arg.__name__ = parse.__name__
    return arg


def add_runtime_args(parser: argparse.ArgumentParser, *, dtype: str | None = "fp32",
                     threads: int | None = None, text_device: bool = False) -> None:
    """--device, --dtype (unless dtype is None), --text-device (for a frontend that loads a text
    encoder) and --threads, validated at parse time; --dtype parses to torch's name ('bfloat16')
    or 'auto' (resolved by `parse_args` for the chosen device),
    --threads None means torch's default, --text-device None means --device."""
    parser.add_argument("--device", type=as_arg(check_device), default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    if text_device:
        parser.add_argument("--text-device", type=as_arg(check_device),
                            help="device of the text encoder (default: --device; cpu keeps umT5-XXL off a small GPU)")
    if dtype is not None:
        parser.add_argument("--dtype", type=as_arg(dtype_arg), default=dtype_arg(dtype),
                            help=f"fp32 | bf16 | fp16 (or float32, bfloat16, float16) | auto (bf16 where the "
                                 f"device multiplies it natively, else fp32; default: {dtype})")
    default = "torch's" if threads is None else threads
    parser.add_argument("--threads", type=as_arg(positive_int), default=threads,
                        help=f"CPU threads for torch (default: {default})")


def parse_args(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """`parser.parse_args`, with a --dtype of 'auto' resolved for the chosen --device."""
    args = parser.parse_args(argv)
    if getattr(args, "dtype", None) == "auto":
        args.dtype = auto_dtype(args.device)
    return args


def native_bf16(device: str | torch.device) -> bool:
    """Whether `device` multiplies bf16 natively: a CUDA GPU of compute capability 8.0 or more
    (Ampere on; torch's is_bf16_supported also says yes where bf16 is only emulated), a CPU with
    AVX512-BF16 or AMX (4-10x its fp32 matmul peak). Elsewhere bf16 is emulated: on an AVX2-only
    CPU a bf16 matmul runs at ~1 GFLOP/s against ~160 in fp32 (docs/experiments.md, "bf16 depends
    on the machine")."""
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return torch.cuda.get_device_properties(index).major >= 8
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's, private in torch 2.x
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """A training precision as run: "auto" is bf16 autocast where the device has native bf16
    (`native_bf16`), else fp32; "fp32" and "bf16" are kept as asked."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def set_threads(threads: int | None) -> None:
    if threads is not None:
        torch.set_num_threads(threads)

"""shotstream.runtime: the device / dtype / thread choices every command line shares."""

import argparse

import pytest
import torch

from shotstream.runtime import add_runtime_args, check_device, dtype_name, positive_int, torch_dtype


def test_dtype_aliases_name_torch_dtypes():
    assert [dtype_name(n) for n in ("fp32", "bf16", "float16")] == ["float32", "bfloat16", "float16"]
    assert torch_dtype("bf16") is torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype 'fp64'"):
        dtype_name("fp64")


def test_devices_are_checked_against_this_machine():
    assert check_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="unknown device"):
        check_device("gpu0")
    with pytest.raises(ValueError, match="only cpu and cuda"):
        check_device("meta")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            check_device("cuda")
    else:
        with pytest.raises(ValueError, match="visible"):
            check_device(f"cuda:{torch.cuda.device_count()}")


def test_runtime_arguments_parse_and_refuse_in_one_line(capsys):
    parser = argparse.ArgumentParser()
    add_runtime_args(parser, dtype="bf16", threads=2)
    args = parser.parse_args([])
    assert (args.device, args.dtype, args.threads) == ("cpu", "bfloat16", 2)
    assert parser.parse_args(["--dtype", "fp16", "--threads", "3"]).dtype == "float16"
    for argv, message in ((["--threads", "-1"], "at least 1"), (["--device", "tpu"], "unknown device"),
                          (["--dtype", "fp64"], "bf16, bfloat16, fp16, float16, or auto")):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
        assert message in capsys.readouterr().err
    assert positive_int("4") == 4


def test_auto_precision_is_bf16_only_where_the_device_has_native_bf16(monkeypatch):
    """An AVX2-only CPU emulates bf16 (~100x slower than fp32): "auto" must not pick it there."""
    from shotstream import runtime

    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, name, lambda: False, raising=False)
    assert not runtime.native_bf16("cpu") and runtime.resolve_precision("auto", "cpu") == "fp32"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert runtime.native_bf16("cpu") and runtime.resolve_precision("auto", "cpu") == "bf16"
    assert [runtime.resolve_precision(p, "cpu") for p in ("fp32", "bf16")] == ["fp32", "bf16"]


@pytest.mark.parametrize("native", [False, True])
def test_dtype_auto_is_resolved_for_the_device_by_every_entry_point(native, monkeypatch):
    """--dtype auto: bf16 where the device multiplies it natively, fp32 elsewhere, decided once the
    device is parsed, so no pipeline is ever asked for a dtype named 'auto'."""
    from benchmark import cli as bench_cli
    from benchmark import profile
    from demo import app
    from shotstream import cli, generate, runtime

    monkeypatch.setattr(runtime, "native_bf16", lambda device: native)
    want = "bfloat16" if native else "float32"
    assert app.parse_args(["--dtype", "auto"]).dtype == want
    seen = []
    monkeypatch.setattr(bench_cli, "cmd_run", lambda args: seen.append(args.dtype))
    monkeypatch.setattr(generate, "cmd_generate", lambda args: seen.append(args.dtype))
    assert bench_cli.main(["run", "--method", "student", "--dtype", "auto"]) == 0
    assert cli.main(["generate", "-p", "a red star", "--dtype", "auto"]) == 0
    assert cli.main(["generate", "-p", "a red star", "--dtype", "fp32"]) == 0
    assert seen == [want, want, "float32"]

    class Loaded(Exception):
        pass

    def build_pipeline(folder, dtype, device):
        raise Loaded(dtype)

    monkeypatch.setattr(profile, "build_pipeline", build_pipeline)
    with pytest.raises(Loaded) as loaded:
        profile.main(["--model", "random", "--dtype", "auto", "--out", ""])
    assert loaded.value.args[0] == getattr(torch, want)


def test_a_gpu_before_ampere_emulates_bf16_so_auto_keeps_fp32(monkeypatch):
    """torch.cuda.is_bf16_supported() says yes on a V100 or T4, which only emulate bf16."""
    from types import SimpleNamespace

    from shotstream import runtime

    asked = []
    major = {0: 7, 1: 8}  # cuda:0 a V100, cuda:1 an A100
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: asked.append(i) or SimpleNamespace(major=major[i]))
    assert [runtime.auto_dtype(d) for d in ("cuda", "cuda:0", "cuda:1")] == ["float32", "float32", "bfloat16"]
    assert asked == [0, 0, 1] and runtime.resolve_precision("auto", "cuda:1") == "bf16"

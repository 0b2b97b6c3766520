"""Trainer infrastructure on toy stages: exact resume, crash safety, divergence, torchrun, config errors."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import free_port, subprocess_env

from shotstream.checkpoint import load_checkpoint, load_tensors
from shotstream.training import DivergenceError, latest_checkpoint, load_module_weights, train
from shotstream.training.cli import CONFIG_DIR, STAGES, load_stage, main, resolve_config
from shotstream.training.metrics import trend
from shotstream.training.toy import ToyStage
from shotstream.training.trainer import OptimizerSpec

FAST = ["progress=false", "batch_size=8", "lr=0.01"]


def run(out: Path, stage: str = "toy", overrides=(), resume: bool = False):
    cfg = resolve_config(stage, overrides=[*FAST, *overrides], out=str(out), resume=resume)
    return train(load_stage(stage), cfg, name=stage, resume=resume)


def checkpoint_tensors(out: Path) -> dict[str, torch.Tensor]:
    """Weights, optimizer state and EMA of the newest checkpoint, in one dict."""
    path = out / "checkpoints" / "latest"
    _, tensors = load_checkpoint(path)
    for part in ("optimizer", "ema"):
        if (path / f"{part}.safetensors").is_file():
            tensors.update({f"{part}:{k}": v for k, v in load_tensors(path / f"{part}.safetensors").items()})
    return tensors


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def csv_rows(out: Path) -> list[list[str]]:
    with open(out / "metrics.csv", newline="") as f:
        return list(csv.reader(f))


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "stage, extra",
    [
        ("toy", ["precision=fp32"]),
        # Two optimizers (generator every 2nd step), EMA on, bf16 autocast, dropout: every piece of state.
        ("toy_distill", ["precision=bf16", "ema_decay=0.9", "stage.dropout=0.1", "stage.generator_every=2"]),
    ],
)
def test_resume_is_bit_identical_to_straight_run(tmp_path, stage, extra):
    # log_every=2 with checkpoint_every=3: the row of step 4 averages steps 3 and 4 across the resume.
    common = ["log_every=2", "checkpoint_every=3", "stage.noise=0.1", *extra]
    run(tmp_path / "straight", stage, [*common, "steps=6"])
    run(tmp_path / "split", stage, [*common, "steps=3"])
    assert (tmp_path / "split/checkpoints/latest").resolve().name == "step_00000003"
    run(tmp_path / "split", stage, ["steps=6"], resume=True)  # config reloaded from split/config.json

    assert_same_tensors(checkpoint_tensors(tmp_path / "straight"), checkpoint_tensors(tmp_path / "split"))
    rows = csv_rows(tmp_path / "split")
    assert rows == csv_rows(tmp_path / "straight")
    steps_logged = sorted({int(r[0]) for r in rows[1:]})
    assert steps_logged == [2, 4, 6]
    assert len(rows[1:]) == len({(r[0], r[1]) for r in rows[1:]}), "duplicate metric rows"
    if stage == "toy_distill":
        opt = load_tensors(tmp_path / "split/checkpoints/latest/optimizer.safetensors")
        assert float(opt["critic.0.step"]) == 6 and float(opt["generator.0.step"]) == 3


def test_resume_depends_on_restored_rng(tmp_path):
    """Guard for the test above: with noise on, a different RNG stream gives different weights."""
    run(tmp_path / "a", "toy", ["steps=2", "stage.noise=0.1"])
    run(tmp_path / "b", "toy", ["steps=2", "stage.noise=0.1", "seed=1"])
    a, b = checkpoint_tensors(tmp_path / "a"), checkpoint_tensors(tmp_path / "b")
    assert not torch.equal(a["model.0.weight"], b["model.0.weight"])


def test_loss_trend_smooths_a_long_log_and_leaves_a_short_one_raw():
    falling_noisy = [1.0 - i / 200 + (0.2 if i % 2 else -0.2) for i in range(100)]
    smooth = trend(falling_noisy)
    assert len(smooth) == 100 and smooth[0] == falling_noisy[0]
    def wiggle(ys):  # the largest step-to-step jump over the second half
        return max(abs(a - b) for a, b in zip(ys[50:], ys[51:]))

    assert wiggle(smooth) < wiggle(falling_noisy) / 5
    assert smooth[-1] < smooth[20]  # the fall survives the smoothing
    assert trend(falling_noisy[:10]) is None


def test_run_writes_config_csv_plot_samples_and_export(tmp_path):
    out = tmp_path / "run"
    run(out, "toy", ["steps=8", "log_every=2", "checkpoint_every=4", "sample_every=4", "ema_decay=0.5", "keep_last=1"])
    assert (out / "loss.png").stat().st_size > 1000
    rows = csv_rows(out)
    assert rows[0] == ["step", "metric", "value"]
    assert {r[1] for r in rows[1:]} == {"model/loss", "model/grad_norm", "model/lr"}
    assert sorted({int(r[0]) for r in rows[1:]}) == [2, 4, 6, 8]
    assert (out / "samples/step_00000004/predictions.png").is_file()
    assert json.loads((out / "samples/step_00000008/eval.json").read_text())["model/mse"] >= 0
    # keep_last=1: only the newest step folder, and `latest` points at it.
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step_00000008"]
    # The resolved config is a valid --config file, and it is in the checkpoint too.
    cfg = resolve_config("toy", config=str(out / "config.json"))
    assert cfg.steps == 8 and cfg.ema_decay == 0.5
    ckpt_config, _ = load_checkpoint(out / "checkpoints/latest")
    assert ckpt_config["run"]["steps"] == 8 and ckpt_config["stage_name"] == "toy"
    # Export = EMA weights, the same as load_module_weights picks.
    _, exported = load_checkpoint(out / "final/model")
    assert_same_tensors(exported, load_module_weights(out / "checkpoints/latest", "model"))
    _, raw = load_checkpoint(out / "checkpoints/latest")
    assert not torch.equal(exported["0.weight"], raw["model.0.weight"])


def test_fresh_run_refuses_existing_checkpoints_and_resume_needs_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume from"):
        run(tmp_path / "r", "toy", ["steps=2"], resume=True)
    run(tmp_path / "r", "toy", ["steps=2"])
    with pytest.raises(ValueError, match="--resume"):
        run(tmp_path / "r", "toy", ["steps=4"])


KILL_SCRIPT = """
import os, sys, time
import shotstream.checkpoint as ck
real_save_file = ck.save_file

def slow_save_file(tensors, filename, *args, **kwargs):
    real_save_file(tensors, filename, *args, **kwargs)
    if ".step_00000004.tmp" in filename:
        # Leave a half-written file in the temporary folder, then hang until SIGKILL.
        size = os.path.getsize(filename)
        with open(filename, "r+b") as f:
            f.truncate(size // 2)
        open(sys.argv[1], "w").close()
        time.sleep(600)

ck.save_file = slow_save_file
from shotstream.training.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_kill_9_during_save_keeps_last_checkpoint_and_resumes_exactly(tmp_path):
    common = [*FAST, "checkpoint_every=2", "log_every=1", "stage.noise=0.1"]
    script = tmp_path / "kill_me.py"
    script.write_text(KILL_SCRIPT)
    signal_file, out = tmp_path / "saving", tmp_path / "killed"
    args = ["train", "toy", "--out", str(out)] + [a for o in [*common, "steps=6"] for a in ("--override", o)]
    proc = subprocess.Popen([sys.executable, str(script), str(signal_file), *args], env=subprocess_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 40
        while not signal_file.exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the save of step 4 never started"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL

    ckpts = out / "checkpoints"
    assert any(p.name.startswith(".step_00000004.tmp") for p in ckpts.iterdir()), "kill did not hit the save"
    assert (ckpts / "latest").resolve().name == "step_00000002"
    assert latest_checkpoint(ckpts).name == "step_00000002"
    config, tensors = load_checkpoint(ckpts / "latest")
    assert config["step"] == 2 and "model.0.weight" in tensors

    assert main(["train", "toy", "--out", str(out), "--resume"]) == 0
    assert not any(p.name.startswith(".") for p in ckpts.iterdir()), "leftover temporary folder"
    run(tmp_path / "straight", "toy", [*common, "steps=6"])
    assert_same_tensors(checkpoint_tensors(tmp_path / "straight"), checkpoint_tensors(out))
    assert csv_rows(out) == csv_rows(tmp_path / "straight")


@pytest.mark.parametrize("kind, message", [("nan_loss", "loss is nan"), ("inf_grad", "gradient norm is")])
def test_divergence_stops_with_clear_message_and_keeps_last_good_checkpoint(tmp_path, kind, message):
    out = tmp_path / kind
    overrides = ["steps=8", "log_every=1", "checkpoint_every=2", "stage.diverge_at=5", f"stage.diverge={kind}"]
    with pytest.raises(DivergenceError) as err:
        run(out, "toy", overrides)
    text = str(err.value)
    assert "step 5" in text and "'model'" in text and message in text, text
    assert "step_00000004" in text, text
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step_00000004"]
    config, tensors = load_checkpoint(out / "checkpoints/latest")
    assert config["step"] == 4 and all(torch.isfinite(t).all() for t in tensors.values())
    assert (out / "loss.png").is_file()


def test_divergence_cli_exit_code_and_one_line_message(tmp_path, capsys):
    code = main(["train", "toy", "--out", str(tmp_path / "d"), "--override", "progress=false",
                 "--override", "steps=3", "--override", "stage.diverge_at=2"])
    err = capsys.readouterr().err.strip()
    assert code == 3 and "step 2" in err and "nan" in err and "no checkpoint saved yet" in err
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize("native", [False, True])
def test_a_run_records_the_precision_auto_chose_and_trains_in_it(tmp_path, monkeypatch, native):
    """"auto" is resolved once, before config.json is written (a resumed run keeps it), and the
    losses run under bf16 autocast exactly when it chose bf16."""
    from shotstream.training import trainer
    from shotstream.training.toy import ToyStage

    monkeypatch.setattr(trainer, "resolve_precision", lambda p, device: ("bf16" if native else "fp32") if p == "auto" else p)
    autocast, loss = [], ToyStage.loss
    monkeypatch.setattr(ToyStage, "loss", lambda self, *a: autocast.append(torch.is_autocast_enabled("cpu")) or loss(self, *a))
    run(tmp_path / "run", "toy", ["steps=2", "precision=auto"])
    assert json.loads((tmp_path / "run" / "config.json").read_text())["precision"] == ("bf16" if native else "fp32")
    assert autocast == [native, native]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--override", "stepz=3"], "did you mean 'steps'"),
        (["--override", "stage.hiden=3"], "did you mean 'hidden'"),
        (["--override", "precision=fp16"], "precision must be auto, fp32 or bf16"),
        (["--override", "batch_size=many"], "expected int"),
        (["--config", "no_such_config.json"], "no_such_config.json: config file not found"),
        (["--override", "device=cuda:9"], "device 'cuda:9'"),  # a config's device is checked too
    ],
)
def test_bad_config_gives_one_clear_error(tmp_path, capsys, argv, message):
    assert main(["train", "toy", "--out", str(tmp_path / "x"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err


def test_bad_key_in_config_file_names_the_file(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"steps": 3, "stage": {"hiden": 8}}))
    assert main(["train", "toy", "--config", str(bad), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "did you mean 'hidden'" in err
    assert main(["train", "toyy"]) == 2
    assert "did you mean 'toy'" in capsys.readouterr().err


def test_shipped_configs_load():
    """Every file of configs/ parses into its stage's config (`teacher_phase3` -> teacher) and validates."""
    configs = sorted(CONFIG_DIR.glob("*.json"))
    assert len(configs) >= 13
    for path in configs:
        stage = max((s for s in STAGES if path.stem == s or path.stem.startswith(s + "_")), key=len)
        cfg = resolve_config(stage, config=path.stem)
        assert cfg.steps > 0 and cfg.out_dir.startswith("runs/"), path.name


TORCHRUN_SCRIPT = """
import hashlib, os, sys
from shotstream.training import train
from shotstream.training.cli import load_stage, resolve_config

out = sys.argv[1]
cfg = resolve_config("toy", overrides=sys.argv[2:], out=out)
trainer = train(load_stage("toy"), cfg, name="toy")
weights = b"".join(v.numpy().tobytes() for v in trainer.modules["model"].state_dict().values())
with open(os.path.join(out, f"weights_rank{os.environ['RANK']}.sha256"), "w") as f:
    f.write(hashlib.sha256(weights).hexdigest())
"""


def test_torchrun_two_cpu_processes_match_gradient_accumulation(tmp_path):
    """2 ranks x 1 micro-batch == 1 process x 2 accumulated micro-batches (same shards, mean grads)."""
    common = [*FAST, "steps=4", "checkpoint_every=2", "log_every=1", "stage.noise=0"]
    script = tmp_path / "ddp.py"
    script.write_text(TORCHRUN_SCRIPT)
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(script), str(out), *common]
    result = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]

    hashes = [(out / f"weights_rank{r}.sha256").read_text() for r in (0, 1)]
    assert hashes[0] == hashes[1], "ranks ended with different weights"
    steps = [int(r[0]) for r in csv_rows(out)[1:] if r[1] == "model/loss"]
    assert steps == [1, 2, 3, 4], "rank 0 alone writes metrics.csv, once per step"
    config, _ = load_checkpoint(out / "checkpoints/latest")
    assert config["world_size"] == 2 and len(config["rng"]) == 2

    run(tmp_path / "accum", "toy", [*common, "grad_accum=2"])
    ddp, accum = checkpoint_tensors(out), checkpoint_tensors(tmp_path / "accum")
    for k in ddp:
        torch.testing.assert_close(ddp[k], accum[k], rtol=1e-5, atol=1e-6, msg=k)


def test_stage_export_hook_runs_once_at_the_end_with_ema_weights(tmp_path):
    from shotstream.training import Trainer, run_config_class
    from shotstream.training.toy import ToyStage

    class ExportingToy(ToyStage):
        def export(self, out_dir):
            assert not self.model.training and not torch.is_grad_enabled()
            torch.save({k: v.clone() for k, v in self.model.state_dict().items()}, out_dir / "weights.pt")

    cfg = run_config_class(ExportingToy)(steps=3, ema_decay=0.5, progress=False, out_dir=str(tmp_path / "e"))
    trainer = Trainer(ExportingToy, cfg, name="exporting")
    trainer.run()
    exported = torch.load(tmp_path / "e/final/weights.pt")
    assert_same_tensors(exported, trainer.ema.shadow["model"])
    assert not torch.equal(exported["0.weight"], trainer.modules["model"].state_dict()["0.weight"])
    assert sorted(p.name for p in (tmp_path / "e/final").iterdir()) == ["weights.pt"]


def test_ema_starts_at_ema_start_step(tmp_path):
    """Until ema_start_step the average copies the weights; then it averages from there on."""
    from shotstream.training import Trainer, run_config_class
    from shotstream.training.toy import ToyStage

    def trained(steps, **kw):
        cfg = run_config_class(ToyStage)(steps=steps, ema_decay=0.5, progress=False, out_dir=str(tmp_path / f"{steps}{kw}"), **kw)
        trainer = Trainer(ToyStage, cfg, name="toy")
        trainer.run()
        return trainer.modules["model"].state_dict(), trainer.ema.shadow["model"]

    live3, shadow3 = trained(3, ema_start_step=3)
    assert_same_tensors(shadow3, live3)
    live2, _ = trained(2)
    _, shadow = trained(3, ema_start_step=2)
    assert_same_tensors(shadow, {k: 0.5 * live2[k] + 0.5 * live3[k] for k in live3})


def test_lr_schedule_warms_up_holds_then_cools_down(tmp_path):
    """The lr each logged step used: linear warm-up, constant, then a linear cooldown to 0."""
    run(tmp_path / "s", overrides=["steps=10", "warmup_steps=2", "cooldown_steps=4", "log_every=1"])
    with open(tmp_path / "s/metrics.csv", newline="") as f:
        lrs = [float(r["value"]) for r in csv.DictReader(f) if r["metric"] == "model/lr"]
    assert lrs == pytest.approx([0.005, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.0075, 0.005, 0.0025])
    with pytest.raises(ValueError, match="cooldown_steps=11 exceeds steps=10"):
        run(tmp_path / "bad", overrides=["steps=10", "cooldown_steps=11"])


def test_lr_scale_gives_one_parameter_its_own_learning_rate(tmp_path):
    """AdamW's first step moves a weight by lr * (sign of its gradient + decay): linear in the lr,
    so a parameter scaled x10 moves 10x as far, and at x0 it stays at its initial value."""
    bias, rest = {}, {}
    for scale in (0, 1, 10):
        run(tmp_path / f"x{scale}", overrides=["steps=1", f"stage.head_bias_lr_scale={scale}"])
        _, w = load_checkpoint(tmp_path / f"x{scale}/final/model")
        bias[scale], rest[scale] = w.pop("3.bias"), w
    torch.testing.assert_close(bias[10] - bias[0], 10 * (bias[1] - bias[0]))
    assert (bias[1] != bias[0]).all()
    assert_same_tensors(rest[0], rest[1])
    assert_same_tensors(rest[0], rest[10])

    class Misnamed(ToyStage):
        def optimizers(self):
            return {"model": OptimizerSpec(("model",), lr_scale={"head.bias": 2.0})}

    cfg = resolve_config("toy", overrides=FAST, out=str(tmp_path / "bad"))
    with pytest.raises(KeyError, match=r"lr_scale names no trainable parameter of modules \('model',\): \['head.bias'\]"):
        train(Misnamed, cfg, name="toy")

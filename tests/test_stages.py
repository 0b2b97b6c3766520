"""Smoke runs of the real training stages: autoencoder -> teacher -> generate, a few steps each."""

import subprocess
import sys

import pytest
import torch

from shotstream.model.loading import from_pretrained
from shotstream.training.cli import resolve_config, load_stage
from shotstream.training.trainer import train
from shotstream.video import read_mp4


def run_stage(stage, config, out, *overrides):
    cfg = resolve_config(stage, config, list(overrides), out=str(out))
    train(load_stage(stage), cfg, name=stage)
    return out / "final"


@pytest.fixture(scope="module")
def smoke_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("smoke")
    ae = run_stage("autoencoder", "autoencoder_smoke", root / "ae") / "autoencoder"
    teacher = run_stage("teacher", "teacher_smoke", root / "teacher", f"stage.autoencoder={ae}") / "teacher"
    return root, ae, teacher


def test_stages_write_loadable_models_curves_and_samples(smoke_models):
    root, ae, teacher = smoke_models
    model, config, kind = from_pretrained(teacher)
    assert kind == "bidirectional" and config.model.dim == 64
    for run in ("ae", "teacher"):
        assert (root / run / "metrics.csv").stat().st_size > 0
        assert (root / run / "loss.png").is_file()
        assert (root / run / "config.json").is_file()
    assert (root / "teacher" / "samples" / "step_00000002" / "story.png").is_file()


def test_generate_command_streams_a_story_with_the_teacher(smoke_models, tmp_path):
    root, ae, teacher = smoke_models
    out = tmp_path / "story.mp4"
    proc = subprocess.run(
        [sys.executable, "-m", "shotstream", "generate", "--model", str(teacher), "--autoencoder", str(ae),
         "-p", "a red circle walks left in the forest", "-p", "close-up of it spinning", "-o", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    frames = read_mp4(out)
    assert frames.shape == (2 * 9, 128, 128, 3)  # two 9-frame shots of the smoke config
    assert out.with_suffix(".png").is_file()
    assert "first frames after" in proc.stderr


def test_generate_reports_bad_input_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "shotstream", "generate", "--model", str(tmp_path / "nope"), "-p", "x"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "neither a folder nor a shipped model" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "shotstream", "generate", "--story", "suite:99"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_distillation_chain_ode_intra_inter(smoke_models, tmp_path):
    """ODE pairs -> ODE init -> intra-shot DMD -> inter-shot DMD, each a few steps, each loadable."""
    from shotstream.training.ode import PairsConfig, make_pairs

    root, ae, teacher = smoke_models
    pairs = make_pairs(PairsConfig(teacher=str(teacher), autoencoder=str(ae), out=str(tmp_path / "pairs"),
                                   steps=2, shard_size=2), count=4, progress=False)
    assert len(list(pairs.glob("pairs_*.safetensors"))) == 2
    ode = run_stage("ode", "ode_smoke", tmp_path / "ode", f"stage.teacher={teacher}", f"stage.pairs={pairs}")
    common = [f"stage.teacher={teacher}", f"stage.autoencoder={ae}"]
    intra = run_stage("intra", "intra_smoke", tmp_path / "intra", *common, f"stage.init={ode / 'student_ode'}")
    inter = run_stage("inter", "inter_smoke", tmp_path / "inter", *common, f"stage.init={intra / 'student'}")
    model, config, kind = from_pretrained(inter / "student")
    assert kind == "causal" and config == from_pretrained(teacher)[1]
    rows = (tmp_path / "inter" / "metrics.csv").read_text()
    for metric in ("critic/loss", "generator/loss", "generator/dmd_grad_norm"):
        assert metric in rows
    # the student changed during self-forcing, and streams with the session
    before = from_pretrained(ode / "student_ode")[0].state_dict()
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    from shotstream.session import ShotStreamPipeline

    session = ShotStreamPipeline.from_pretrained(inter / "student", autoencoder=ae).session(seed=0)
    session.submit("a red circle walks left")
    session.submit("it spins")
    assert [c.shot for c in session.stream()] == [0, 1]  # 9 frames = 3 latent frames = one chunk per shot

"""benchmark.train_speed: a training step's batch and update times per variant, on one page."""

import pytest

from benchmark.train_speed import main, page


def test_the_page_compares_each_variant_with_fp32_from_medians():
    rows = {"fp32": [(4.0, 2.0), (6.0, 2.0), (5.0, 3.0)], "fp32+cache": [(0.5, 2.5), (0.5, 2.0), (1.0, 2.0)]}
    text = page("teacher", 4, rows, {"cpu": "x86_64", "threads": 2, "fp32": 160.0, "bf16": 1.0, "native": False})
    assert "| fp32 | 5.00 | 2.00 | 7.00 | 1.00x |" in text
    assert "| fp32+cache | 0.50 | 2.00 | 2.50 | 2.80x |" in text
    assert "native bf16: no" in text and "trains in fp32" in text and "Medians of 3 steps" in text


@pytest.mark.slow  # two teacher stages and their steps: ~1 min on 2 cores
def test_a_smoke_run_times_every_variant(tmp_path, capsys):
    out = tmp_path / "speed.md"
    assert main(["--config", "teacher_smoke", "--variants", "fp32", "fp32+cache", "--steps", "1", "--out", str(out)]) == 0
    text = out.read_text()
    assert "| fp32 |" in text and "| fp32+cache |" in text and "batch 2" in text
    assert "fp32+cache step 1" in capsys.readouterr().out


def test_a_dmd_stage_times_the_update_asked_for(smoke_models, tmp_path, capsys):
    """The DMD stages have two updates (critic every step, generator every k-th): --optimizer picks
    the one timed and the page names it; they have no latent cache to read."""
    from shotstream.model.dit import WanDiT
    from shotstream.model.loading import from_pretrained, save_pretrained

    _, ae, teacher = smoke_models
    _, config, _ = from_pretrained(teacher)
    save_pretrained(WanDiT(config.model, config.video.latent_channels), config, tmp_path / "student", kind="causal")
    stage = ["--stage", "inter", "--config", "inter_smoke", "--override", f"stage.teacher={teacher}",
             "--override", f"stage.autoencoder={ae}", "--override", f"stage.init={tmp_path / 'student'}"]
    out = tmp_path / "speed.md"
    assert main([*stage, "--optimizer", "generator", "--variants", "fp32", "--steps", "1", "--out", str(out)]) == 0
    assert "batch 2, the generator update" in out.read_text()
    for args, message in ((["--optimizer", "teacher"], "has critic, generator"),
                          (["--variants", "fp32+cache"], "no latent cache")):
        with pytest.raises(SystemExit):
            main([*stage, *args, "--steps", "1"])
        assert message in capsys.readouterr().err

"""Fixtures shared by test modules."""

import pytest

from helpers import run_stage


@pytest.fixture(scope="session")
def smoke_models(tmp_path_factory):
    """A few steps of the real autoencoder and teacher stages (test_stages, test_experiments)."""
    root = tmp_path_factory.mktemp("smoke")
    ae = run_stage("autoencoder", "autoencoder_smoke", root / "ae") / "autoencoder"
    teacher = run_stage("teacher", "teacher_smoke", root / "teacher", f"stage.autoencoder={ae}",
                        "stage.character_loss_weight=4", "stage.character_weight_from_step=1",
                        "stage.image_batches=1:2") / "teacher"
    return root, ae, teacher

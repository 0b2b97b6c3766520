"""`shotstream import` on tiny random "released" Wan2.1 folders in both download layouts, then a
two-shot story streamed through the pipeline and `shotstream generate`."""

import json

import pytest
import torch
from helpers import SMALL_VIDEO, diffusers_dit, write_release, write_shotstream_checkpoint
from test_umt5 import D_MODEL

from shotstream.checkpoint import CheckpointError
from shotstream.cli import main
from shotstream.importer import COMPONENTS, import_release
from shotstream.session import ShotStreamPipeline

pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A ShotStream training checkpoint: {"generator_ema": {"model.<WanModel key>": ...}}."""
    file = tmp_path_factory.mktemp("shotstream") / "shotstream.pt"
    return file, write_shotstream_checkpoint(file)


@pytest.mark.parametrize("layout", ["original", "diffusers"])
def test_import_and_stream_a_two_shot_story(tmp_path, checkpoint, layout):
    file, state = checkpoint
    wan = write_release(tmp_path / f"Wan2.1-T2V-{layout}", layout)
    out = import_release(wan, tmp_path / "imported", checkpoint=file, overrides=SMALL_VIDEO)
    index = json.loads((out / COMPONENTS).read_text())
    assert index["layout"] == layout and index["dit"] == "model.safetensors"
    # the released model's behaviour, in config.json (what loads) and in the index (for a reader)
    model = json.loads((out / "config.json").read_text())
    assert model["prompt"]["template"] == index["prompt_template"] == "{global_caption}shot{shot}:{caption}"
    assert model["model"]["text_mask"] is index["text_mask"] is False
    assert model["model"]["first_shot_zero_context"] is index["first_shot_zero_context"] is True
    assert index["sampler"] == {"student_timesteps": [1000.0, 740.0, 500.0, 260.0], "shift": 8.0}
    pipe = ShotStreamPipeline.from_pretrained(out, device="cpu")
    assert type(pipe.autoencoder).__name__ == "WanVideoAutoencoder"
    assert type(pipe.text_encoder.model).__name__ == "UMT5EncoderModel" and pipe.text_encoder.max_len == 512
    assert pipe.config.preset == "wan2.1-1.3b" and pipe.config.model.text_dim == D_MODEL and pipe.kind == "causal"
    assert all(torch.equal(pipe.model.state_dict()[k], v) for k, v in state.items())  # the checkpoint's DiT
    session = pipe.session(seed=0, global_caption="a red striped star")
    session.submit("walks to the left in a snowy field")
    session.submit("close up of the same character")
    chunks = list(session.stream())
    assert session.prompt("close up", 1) == "a red striped starshot1:close up"
    assert [(c.shot, len(c.frames)) for c in chunks] == [(0, 9), (0, 8), (1, 9), (1, 8)]
    assert session.shots[1].frames.shape == (17, 16, 16, 3)


def test_generate_takes_an_imported_folder(tmp_path, checkpoint, capsys):
    wan = write_release(tmp_path / "Wan2.1-T2V-1.3B", "original")
    args = ["--wan", str(wan), "--checkpoint", str(checkpoint[0]), "-o", str(tmp_path / "model"), "--dtype", "bf16"]
    assert main(["import", *args, *(a for s in SMALL_VIDEO for a in ("--set", s))]) == 0
    assert json.loads((tmp_path / "model" / "config.json").read_text())["kind"] == "causal"
    code = main(["generate", "--model", str(tmp_path / "model"), "--device", "cpu", "--text-device", "cpu",
                 "-p", "a red striped star walks", "-p", "close up of the same character", "-o", str(tmp_path / "s.mp4")])
    assert code == 0 and (tmp_path / "s.mp4").stat().st_size > 0
    assert "2 shots" in capsys.readouterr().err


def test_import_takes_the_diffusers_layouts_own_dit(tmp_path):
    """Without --checkpoint, the base DiT of transformer/, renamed from diffusers' names."""
    from shotstream.model.loading import wan_state_from_diffusers

    wan = write_release(tmp_path / "diffusers", "diffusers")
    out = import_release(wan, tmp_path / "base", overrides=SMALL_VIDEO, kind="bidirectional")
    pipe = ShotStreamPipeline.from_pretrained(out, device="cpu")
    expected = wan_state_from_diffusers(diffusers_dit(1).state_dict())
    assert pipe.kind == "bidirectional" and pipe.model.state_dict().keys() == expected.keys()
    assert all(torch.equal(pipe.model.state_dict()[k], v) for k, v in expected.items())


def test_import_takes_the_original_layouts_own_dit_and_a_safetensors_checkpoint(tmp_path, checkpoint):
    """Without --checkpoint, diffusion_pytorch_model.safetensors as stored; with a ShotStream DiT
    saved as safetensors (Wan names, no training wrapper), the same model as from its .pt."""
    from safetensors.torch import save_file

    from helpers import random_dit

    wan = write_release(tmp_path / "original", "original")
    base = ShotStreamPipeline.from_pretrained(import_release(wan, tmp_path / "base", overrides=SMALL_VIDEO), device="cpu")
    expected = random_dit(1)
    assert all(torch.equal(base.model.state_dict()[k], v) for k, v in expected.items())
    file, state = checkpoint
    save_file(state, str(tmp_path / "shotstream.safetensors"))
    out = import_release(wan, tmp_path / "st", checkpoint=tmp_path / "shotstream.safetensors", overrides=SMALL_VIDEO)
    pipe = ShotStreamPipeline.from_pretrained(out, device="cpu")
    assert pipe.model.state_dict().keys() == state.keys()
    assert all(torch.equal(pipe.model.state_dict()[k], v) for k, v in state.items())


def test_import_without_a_part_is_clear(tmp_path, checkpoint, capsys):
    diffusers_layout = write_release(tmp_path / "diffusers", "diffusers")
    original = write_release(tmp_path / "original", "original")
    (original / "Wan2.1_VAE.pth").unlink()
    assert main(["import", "--wan", str(original), "-o", str(tmp_path / "out")]) == 2
    assert "the original layout's vae is missing" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="several checkpoints in the folder"):
        torch.save({}, tmp_path / "a.pt"), torch.save({}, tmp_path / "b.pt")
        import_release(diffusers_layout, tmp_path / "out", checkpoint=tmp_path)

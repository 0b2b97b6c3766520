"""The benchmark and the demo take a folder written by `shotstream import`, as they take a tiny
model: the tiny random release of tests/helpers.py, imported, on CPU."""

import json

import pytest
from helpers import free_port, import_tiny_release

pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    return import_tiny_release(tmp_path_factory.mktemp("release"))


def test_bench_run_scores_an_imported_folder_with_its_own_vae(imported, tmp_path, capsys):
    """Its VAE and umT5 come from its components.json, even when --autoencoder names the codec of
    the run's tiny models."""
    from benchmark.cli import main as bench_main
    from benchmark.rows import RowStore
    from shotstream.autoencoder import TinyVideoAutoencoder
    from shotstream.config import apply_overrides, get_preset

    cfg = apply_overrides(get_preset("tiny"), ["video.height=16", "video.width=16", "video.frames_per_shot=17"])
    TinyVideoAutoencoder(cfg.video, base_channels=8).save_pretrained(tmp_path / "codec")
    prompts = tmp_path / "story.json"  # an official ShotStream prompt file
    prompts.write_text(json.dumps({"global_caption": "A red star in the snow.", "shot1": "It walks left.",
                                   "shot2": "Close-up of the star."}))
    argv = ["run", "--method", f"released={imported}", "--stories", str(prompts), "--metrics", "fps",
            "--autoencoder", str(tmp_path / "codec"), "--device", "cpu", "--text-device", "cpu", "--threads", "1",
            "--results", str(tmp_path / "r"), "--quiet", "--no-report"]
    assert bench_main(argv) == 0, capsys.readouterr().err
    rows = RowStore(tmp_path / "r").read()
    assert set(rows["method"]) == {"released"} and set(rows["preset"]) == {"wan2.1-1.3b"} and set(rows["steps"]) == {"4"}
    assert rows.loc[rows["metric"] == "fps", "value"].iloc[0] > 0


def test_the_demo_serves_an_imported_folder(imported, monkeypatch):
    gr = pytest.importorskip("gradio")
    gradio_client = pytest.importorskip("gradio_client")
    from demo import app as demo_app

    launched = []
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: launched.append(self))
    assert demo_app.main(["--model", str(imported), "--device", "cpu", "--text-device", "cpu"]) == 0  # loads it before serving
    assert len(launched) == 1 and demo_app.ModelSpec(str(imported), text_device="cpu") in demo_app._PIPELINES
    spec = demo_app.ModelSpec(str(imported))
    assert type(demo_app.get_pipeline(spec).autoencoder).__name__ == "WanVideoAutoencoder"
    monkeypatch.undo()

    demo = demo_app.build_app(spec, max_concurrent=1)
    port = free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        c = gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False)
        _, refused = c.predict("a red striped star walks left in a snowy field", "", 0, api_name="/add_shot")
        assert refused == ""
        list(c.submit(api_name="/run"))
        story = demo.shotstream.stories.get(c.session_hash, touch=False)
        assert [s.frames.shape for s in story.session.shots] == [(17, 16, 16, 3)]
    finally:
        demo.close()
        demo.shotstream.shutdown()

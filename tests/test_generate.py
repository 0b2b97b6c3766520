"""`shotstream generate` reports each shot's latency from that shot's own submit (a fake
pipeline with its own clock: no model, no wall time)."""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest

import shotstream.generate as generate_mod
import shotstream.session as session_mod
from shotstream.session import StreamChunk

SHOT_SECONDS = 1.5  # every fake shot takes this long to its first chunk


class FakeSession:
    """Generates queued shots in order on a fake clock: SHOT_SECONDS each, two chunks per shot."""

    def __init__(self, clock: list[float]):
        self.clock, self.queue, self.shots, self.max_shots = clock, [], [], 8

    def submit(self, prompt) -> int:
        self.queue.append((prompt, self.clock[0]))  # stamped as the real session does: at submit
        return len(self.shots) + len(self.queue) - 1

    def stream(self):
        while self.queue:
            caption, t_submit = self.queue.pop(0)
            k, t_start = len(self.shots), max(self.clock[0], t_submit)
            frames = np.full((2, 16, 16, 3), 40 * k, np.uint8)
            for j in range(2):
                self.clock[0] = t_start + SHOT_SECONDS * (j + 1)
                yield StreamChunk(k, j, frames, caption, t_submit, t_start, self.clock[0], j == 1)
            self.shots.append(SimpleNamespace(caption=caption, frames=np.concatenate([frames, frames])))

    def story_frames(self):
        return np.concatenate([s.frames for s in self.shots])


class FakePipeline:
    kind = "causal"
    config = SimpleNamespace(video=SimpleNamespace(fps=8), prompt=SimpleNamespace(max_chars=2000))

    def __init__(self):
        self.clock = [0.0]

    def session(self, **kw):
        return FakeSession(self.clock)


def test_generate_reports_each_shots_latency_from_its_own_submit(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(session_mod.ShotStreamPipeline, "from_pretrained", classmethod(lambda cls, *a, **k: FakePipeline()))
    monkeypatch.setattr(generate_mod, "resolve_model", lambda name: tmp_path)
    from shotstream.cli import main

    prompts = ["a red star walks left", "it jumps", "close-up of it spinning", "it stays"]
    argv = ["generate", *[a for p in prompts for a in ("-p", p)], "-o", str(tmp_path / "s.mp4"), "--device", "cpu"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    latencies = [float(x) for x in re.findall(r"first frames after ([\d.]+) s", err)]
    # submitted all at once, shot k would wait behind k shots: 1.5, 4.5, 7.5, 10.5
    assert latencies == [pytest.approx(SHOT_SECONDS)] * len(prompts), err
    assert (tmp_path / "s.mp4").is_file()


def test_generate_refuses_a_bad_prompt_before_the_first_shot(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(session_mod.ShotStreamPipeline, "from_pretrained", classmethod(lambda cls, *a, **k: FakePipeline()))
    monkeypatch.setattr(generate_mod, "resolve_model", lambda name: tmp_path)
    from shotstream.cli import main

    assert main(["generate", "-p", "a red star", "-p", "   ", "-o", str(tmp_path / "s.mp4"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "shot 0" not in err and not (tmp_path / "s.mp4").exists()  # nothing was generated


def test_shipped_models_are_the_ones_the_index_names_each_with_its_autoencoder(tmp_path):
    import json

    from shotstream.checkpoint import read_json
    from shotstream.model.loading import INDEX, model_autoencoder, resolve_model, shipped_models
    from shotstream.paths import SHIPPED

    # every model folder shipped (a config.json with a model kind) is named by the index, and no other
    models = {p.parent.name for p in SHIPPED.glob("*/config.json") if read_json(p).get("kind")}
    assert set(shipped_models()) == models and {"student", "teacher"} <= models
    assert all(model_autoencoder(SHIPPED / name) == SHIPPED / "autoencoder" for name in models)
    assert resolve_model("teacher") == SHIPPED / "teacher" and resolve_model("autoencoder") == SHIPPED / "autoencoder"
    # a folder of shipped models whose index names another codec; an unlisted folder keeps its sibling
    for name in ("m", "codec", "other"):
        (tmp_path / name).mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    (tmp_path / INDEX).write_text(json.dumps({"m": {"description": "a model", "autoencoder": "codec"}}))
    assert model_autoencoder(tmp_path / "m") == tmp_path / "codec"
    assert model_autoencoder(tmp_path / "other") == tmp_path / "autoencoder"
    assert resolve_model("m", tmp_path) == tmp_path / "m"
    with pytest.raises(FileNotFoundError, match=r"neither a folder nor a shipped model \(shipped: m\)"):
        resolve_model("nope", tmp_path)

"""Real encoders for `shotstream-bench score`, each tested on a tiny random model written in its
released layout: CLIP in every open_clip file layout (state dict, OpenAI's TorchScript archive, a
wrapped training checkpoint), DINOv2 (identity) and OWLv2 (the character's box) as transformers
folders, and the CLI that takes them (--clip-*, --identity-encoder, --detector, --device)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from benchmark.cli import main as bench_main
from benchmark.clip import ClipEncoder, build_clip
from shotstream.checkpoint import CheckpointError

ARCH = "ShotStream-CLIP-tiny"  # an open_clip CLIP in OpenAI's key layout (token_embedding, visual.conv1, ...)


def frames(seed=0, n=3, size=48) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def clip_model() -> torch.nn.Module:
    return build_clip(ARCH, seed=3).eval()


def write_openai_torchscript(model: torch.nn.Module, file: Path) -> None:
    """The layout of OpenAI's ViT-B-32.pt: a traced fp16 CLIP whose state dict also holds its sizes
    (input_resolution, context_length, vocab_size) and the causal attention mask."""
    import copy

    m = copy.deepcopy(model)
    for k, v in (("input_resolution", 64), ("context_length", 77), ("vocab_size", 49408)):
        m.__dict__.pop(k, None)
        m.register_buffer(k, torch.tensor(v))
    traced = torch.jit.trace(m, (torch.zeros(1, 3, 64, 64), torch.zeros(1, 77, dtype=torch.long)),
                             check_trace=False, strict=False)
    torch.jit.save(traced.half(), str(file))


@pytest.mark.parametrize("layout", ["safetensors", "torchscript", "wrapped"])
def test_clip_loads_from_every_open_clip_file_layout(layout, clip_model, tmp_path, capsys):
    state = clip_model.state_dict()
    file = tmp_path / ("w.safetensors" if layout == "safetensors" else "w.pt")
    if layout == "safetensors":
        save_file(state, file)
    elif layout == "torchscript":
        write_openai_torchscript(clip_model, file)
    else:  # open_clip's training checkpoint: DDP's module. prefix inside "state_dict", beside the optimiser
        torch.save({"epoch": 3, "name": "run", "state_dict": {f"module.{k}": v for k, v in state.items()},
                    "optimizer": {"state": {}, "param_groups": []}}, file)
    enc = ClipEncoder.from_arch(ARCH, file)
    ref = ClipEncoder(clip_model, enc.tokenizer, name="ref")
    # TorchScript's weights are fp16 (as OpenAI ships them): equal to the model's up to that rounding
    tol = 2e-3 if layout == "torchscript" else 0
    assert torch.allclose(enc.encode_images(frames()), ref.encode_images(frames()), atol=tol, rtol=0)
    assert torch.allclose(enc.encode_texts(["a red fox"]), ref.encode_texts(["a red fox"]), atol=tol, rtol=0)
    assert enc.name.startswith(f"{ARCH}@")
    # an OpenAI archive was trained with QuickGELU: an architecture without it is named in a warning
    assert ("pass --clip-arch ShotStream-CLIP-tiny-quickgelu" in capsys.readouterr().err) == (layout == "torchscript")


def test_clip_file_errors_say_what_is_wrong(clip_model, tmp_path):
    truncated = tmp_path / "t.pt"
    write_openai_torchscript(clip_model, truncated)
    truncated.write_bytes(truncated.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="unreadable or truncated"):
        ClipEncoder.from_arch(ARCH, truncated)
    other = tmp_path / "other.safetensors"
    save_file({"visual.conv1.weight": torch.zeros(2, 2)}, other)
    with pytest.raises(CheckpointError, match="missing keys"):
        ClipEncoder.from_arch(ARCH, other)


# --- DINOv2 and OWLv2 as transformers folders -------------------------------------------------------


def write_tiny_dinov2(folder: Path, seed: int = 0) -> Path:
    """A random DINOv2 in the hub's layout: config.json, model.safetensors, preprocessor_config.json."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                             patch_size=8, image_size=32)).save_pretrained(folder)
    # facebook/dinov2-*'s preprocessing (resize the short side, centre crop), at the tiny model's size
    BitImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32}, do_center_crop=True,
                      image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(folder)
    return folder


def write_tiny_owlv2(folder: Path, seed: int = 0) -> Path:
    """A random OWLv2 in the hub's layout: model, image processor and a CLIP BPE tokenizer built offline."""
    from transformers import CLIPTokenizer, Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

    torch.manual_seed(seed)
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, vocab_size=64,
                max_position_embeddings=16, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                  patch_size=8)
    model = Owlv2ForObjectDetection(Owlv2Config(text_config=text, vision_config=vision, projection_dim=32))
    with torch.no_grad():  # boxes near each patch's prior box (random heads saturate the sigmoid at the image edge)
        model.box_head.dense2.weight.mul_(0.01)
    model.save_pretrained(folder)
    # OWLv2 skips a query whose first token id is 0: "!" is id 0, as in CLIP's vocabulary (the padding)
    vocab = {"!": 0, "<|startoftext|>": 1, "<|endoftext|>": 2}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c], vocab[c + "</w>"] = len(vocab), len(vocab) + 1
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16, pad_token="!")
    Owlv2Processor(image_processor=Owlv2ImageProcessor(size={"height": 32, "width": 32}),
                   tokenizer=tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def dino_dir(tmp_path_factory) -> Path:
    return write_tiny_dinov2(tmp_path_factory.mktemp("dinov2") / "dinov2-tiny")


@pytest.fixture(scope="module")
def owl_dir(tmp_path_factory) -> Path:
    return write_tiny_owlv2(tmp_path_factory.mktemp("owlv2") / "owlv2-tiny")


def test_dinov2_embeds_crops_of_any_size_as_its_pooled_cls_token(dino_dir, tmp_path):
    from transformers import AutoImageProcessor, Dinov2Model

    from benchmark.encoders import IdentityEncoder

    enc = IdentityEncoder.from_pretrained(dino_dir)
    crops = [frames(1, 1, 48)[0], frames(2, 1, 20)[0][:, :12]]  # a square and a thin crop
    got = enc.encode_images(crops)
    model, proc = Dinov2Model.from_pretrained(dino_dir).eval(), AutoImageProcessor.from_pretrained(dino_dir)
    with torch.no_grad():
        ref = torch.cat([model(**proc(images=[c], return_tensors="pt")).pooler_output for c in crops])
    assert got.shape == (2, 32) and torch.allclose(got, torch.nn.functional.normalize(ref, dim=-1), atol=1e-6)
    assert enc.name.startswith("dinov2:dinov2-tiny@")
    other = IdentityEncoder.from_pretrained(write_tiny_dinov2(tmp_path / "dinov2-tiny", seed=1))
    assert other.name != enc.name  # the checksum tells weights apart


def test_owlv2_gives_each_frame_the_querys_best_box_in_pixels(owl_dir):
    from transformers import AutoProcessor, Owlv2ForObjectDetection

    from benchmark.encoders import CharacterDetector

    det = CharacterDetector.from_pretrained(owl_dir, query="a fox")
    video = frames(3, 5)[:, :, :40]  # [5, 48, 40, 3]: not square, so OWLv2 pads it
    boxes = det.locate(video)
    assert boxes.shape == (5, 4)
    assert (boxes[:, 2] <= 40).all() and (boxes[:, 3] <= 48).all() and (boxes >= 0).all()
    assert "[a fox]" in det.name and det.name.startswith("owlv2:owlv2-tiny@")
    # the same box as transformers' own post-processing, scaled to the padded square's side
    model, proc = Owlv2ForObjectDetection.from_pretrained(owl_dir).eval(), AutoProcessor.from_pretrained(owl_dir)
    with torch.no_grad():
        out = model(**proc(text=[["a fox"]], images=[video[2]], return_tensors="pt"))
    ref = proc.image_processor.post_process_object_detection(out, threshold=-1.0, target_sizes=[(48, 48)])[0]
    best = ref["boxes"][ref["scores"].argmax()].numpy()
    assert np.allclose(boxes[2], np.clip(best, 0, [40, 48, 40, 48]), atol=1e-4)


def test_folders_of_the_wrong_kind_are_clear_errors(dino_dir, owl_dir, tmp_path):
    from benchmark.encoders import CharacterDetector, IdentityEncoder

    with pytest.raises(CheckpointError, match="'owlv2' model; --identity-encoder takes a DINOv2 folder"):
        IdentityEncoder.from_pretrained(owl_dir)
    with pytest.raises(CheckpointError, match="'dinov2' model; --detector takes an OWLv2 folder"):
        CharacterDetector.from_pretrained(dino_dir)
    with pytest.raises(CheckpointError, match="no config.json.*never downloaded"):
        IdentityEncoder.from_pretrained(tmp_path / "facebook/dinov2-base")


# --- the score command with real encoders ----------------------------------------------------------


def write_films(root: Path) -> Path:
    """A manifest of one 'real' single-file story of two shots (not StoryWorld: no labels)."""
    import imageio.v3 as iio

    root.mkdir(parents=True)
    iio.imwrite(root / "film.mp4", np.concatenate([frames(5, 6, 48), frames(6, 6, 48)]), fps=8, codec="libx264")
    (root / "manifest.json").write_text(json.dumps({"method": "other-system", "stories": [
        {"id": "film", "video": "film.mp4", "shot_starts": [0, 6], "captions": ["a fox in snow", "it runs"]}]}))
    return root / "manifest.json"


def test_score_real_videos_with_clip_dinov2_and_owlv2_from_local_files(clip_model, dino_dir, owl_dir, tmp_path, capsys):
    from benchmark.encoders import CharacterDetector, IdentityEncoder
    from benchmark.manifest import load_manifest
    from benchmark.metrics import StoryOutput, get_metrics, score_story

    manifest = write_films(tmp_path / "films")
    weights = tmp_path / "clip.safetensors"
    save_file(clip_model.state_dict(), weights)
    results = tmp_path / "results"
    args = ["score", "--manifest", str(manifest), "--results", str(results), "--quiet",
            "--metrics", "clip_text,inter_shot_identity"]
    # the in-domain CLIP is never used silently on videos from outside StoryWorld
    assert bench_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not StoryWorld renders" in err
    assert "--clip-arch ARCH --clip-weights FILE" in err and "--in-domain-clip" in err
    assert not results.exists()

    real = ["--clip-arch", ARCH, "--clip-weights", str(weights), "--identity-encoder", str(dino_dir),
            "--detector", str(owl_dir), "--detector-query", "a fox", "--device", "cpu"]
    assert bench_main([*args, *real]) == 0, capsys.readouterr().err
    rows = pd.read_csv(results / "rows.csv")
    (encoder,) = rows["encoder"].unique()
    names = encoder.split(" + ")
    assert names[0].startswith(f"{ARCH}@") and names[1].startswith("identity=dinov2:dinov2-tiny@")
    assert names[2].startswith("detector=owlv2:owlv2-tiny@") and names[2].endswith("[a fox]")
    assert set(rows["device"]) == {"cpu"} and not rows["value"].isna().any()
    # identity is DINOv2 on the detector's crops: as when the labels hand the same boxes over
    story = load_manifest(manifest).stories[0]
    shots = story.load_frames()
    detector = CharacterDetector.from_pretrained(owl_dir, "a fox")
    boxed = StoryOutput("film", story.captions, shots, [{"boxes": detector.locate(f)} for f in shots])
    want = score_story(boxed, get_metrics(["inter_shot_identity"]),
                       embed=IdentityEncoder.from_pretrained(dino_dir).encode_images)
    got = rows[rows["metric"] == "inter_shot_identity"].set_index("shot")["value"]
    assert [r.shot for r in want] == list(got.index) == [1]
    assert np.allclose([r.value for r in want], got.to_numpy(), atol=1e-6)

    # asked for by name, the in-domain CLIP scores them (recorded as the encoder)
    assert bench_main([*args[:4], str(tmp_path / "in-domain"), "--quiet", "--metrics", "clip_text",
                       "--in-domain-clip"]) == 0
    assert pd.read_csv(tmp_path / "in-domain" / "rows.csv")["encoder"].str.startswith("ShotStream-CLIP-tiny@").all()
    # videos whose every shot carries StoryWorld's labels are its domain: no flag needed
    labelled = json.loads(manifest.read_text())
    labelled["stories"][0]["labels"] = [{"identity": "red-circle-plain", "scene": "beach", "framing": "wide",
                                         "action": "walk"}] * 2
    (manifest.parent / "storyworld.json").write_text(json.dumps(labelled))
    assert bench_main(["score", "--manifest", str(manifest.parent / "storyworld.json"), "--results",
                       str(tmp_path / "storyworld"), "--quiet", "--metrics", "clip_text"]) == 0

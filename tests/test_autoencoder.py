"""Causal video autoencoder: geometry, chunked decoding, checkpoints, the test stand-in."""

import json

import pytest
import torch

from shotstream.autoencoder import PixelSpaceStandIn, TinyVideoAutoencoder, reconstruction_loss
from shotstream.checkpoint import CheckpointError
from shotstream.config import VideoConfig

SMALL = VideoConfig(height=32, width=48)  # fast geometry for tests; 128x128 is checked once


def _video(frames, cfg=SMALL, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, frames, 3, cfg.height, cfg.width, generator=g) * 2 - 1


@pytest.fixture(scope="module")
def ae():
    torch.manual_seed(0)
    model = TinyVideoAutoencoder(SMALL, base_channels=16).eval()
    # Non-trivial weights and stats: zero-initialised residual branches would hide bugs.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
        model.latent_mean.copy_(torch.linspace(-0.5, 0.5, 16))
        model.latent_std.copy_(torch.linspace(0.5, 2.0, 16))
    return model


def test_shapes_33_and_1_frames_at_128():
    model = TinyVideoAutoencoder(VideoConfig(), base_channels=16).eval()
    with torch.no_grad():
        z = model.encode(_video(33, VideoConfig(), batch=1))
        assert z.shape == (1, 9, 16, 16, 16)
        assert model.decode(z).shape == (1, 33, 3, 128, 128)
        z1 = model.encode(_video(1, VideoConfig(), batch=1))
        assert z1.shape == (1, 1, 16, 16, 16)
        assert model.decode(z1).shape == (1, 1, 3, 128, 128)


@pytest.mark.parametrize("frames", [2, 4, 32, 34])
def test_frame_count_must_be_4k_plus_1(ae, frames):
    with pytest.raises(ValueError, match=f"4k\\+1 frames, got {frames}"):
        ae.encode(_video(frames))


def test_bad_inputs_raise(ae):
    with pytest.raises(ValueError, match=r"\[B, F, 3, H, W\]"):
        ae.encode(torch.zeros(2, 5, 4, 32, 48))
    with pytest.raises(ValueError, match="multiple of 8"):
        ae.encode(torch.zeros(1, 5, 3, 30, 48))
    with pytest.raises(ValueError, match="float video"):
        ae.encode(torch.zeros(1, 5, 3, 32, 48, dtype=torch.uint8))
    with pytest.raises(ValueError, match="latents"):
        ae.decode(torch.zeros(1, 2, 8, 4, 6))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        ae.encode_image(torch.zeros(1, 5, 3, 32, 48))


def test_chunk_decode_equals_full_decode(ae):
    with torch.no_grad():
        z = ae.encode(_video(33))  # [2, 9, 16, 4, 6]
        full = ae.decode(z)
        chunks = [ae.decode_chunk(z[:, :3], first_chunk=True)]
        chunks += [ae.decode_chunk(z[:, i : i + 3], first_chunk=False) for i in (3, 6)]
    assert [c.shape[1] for c in chunks] == [9, 12, 12]
    torch.testing.assert_close(torch.cat(chunks, dim=1), full, rtol=0, atol=1e-6)


def test_encode_is_causal_and_encode_image_is_first_frame_path(ae):
    v = _video(9)
    with torch.no_grad():
        z = ae.encode(v)
        v2 = v.clone()
        v2[:, 5:] = 0.0  # change the last group only
        z2 = ae.encode(v2)
        torch.testing.assert_close(z2[:, :2], z[:, :2], rtol=0, atol=1e-6)
        assert not torch.allclose(z2[:, 2], z[:, 2])
        torch.testing.assert_close(ae.encode_image(v[:, 0]), z[:, :1], rtol=0, atol=1e-6)


def test_latent_normalisation_fits_unit_stats():
    model = TinyVideoAutoencoder(SMALL, base_channels=16).eval()
    videos = [_video(9, seed=s) for s in range(3)]
    mean, std = model.fit_latent_stats(videos)
    with torch.no_grad():
        z = torch.cat([model.encode(v) for v in videos])
        raw = torch.cat([model.encode_raw(v) for v in videos])
    torch.testing.assert_close(z.mean(dim=(0, 1, 3, 4)), torch.zeros(16), rtol=0, atol=1e-4)
    torch.testing.assert_close(z.std(dim=(0, 1, 3, 4), unbiased=False), torch.ones(16), rtol=0, atol=1e-3)
    torch.testing.assert_close(model.denormalize(z), raw, rtol=0, atol=1e-5)


def test_save_load_round_trip_bit_identical(ae, tmp_path):
    ae.save_pretrained(tmp_path / "ae")
    cfg = json.loads((tmp_path / "ae" / "config.json").read_text())
    assert cfg["class"] == "TinyVideoAutoencoder" and cfg["video"]["height"] == 32
    loaded = TinyVideoAutoencoder.from_pretrained(tmp_path / "ae")
    for k, v in ae.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    v = _video(5)
    with torch.no_grad():
        assert torch.equal(loaded.decode(loaded.encode(v)), ae.decode(ae.encode(v)))


def test_corrupt_checkpoints_raise(ae, tmp_path):
    folder = tmp_path / "ae"
    ae.save_pretrained(folder)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        TinyVideoAutoencoder.from_pretrained(folder)

    # A checkpoint of a different width: every mismatched key is named.
    TinyVideoAutoencoder(SMALL, base_channels=8).save_pretrained(folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["base_channels"] = 16
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        TinyVideoAutoencoder.from_pretrained(folder)

    cfg["video"]["hieght"] = 32
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="did you mean 'height'"):
        TinyVideoAutoencoder.from_pretrained(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        TinyVideoAutoencoder.from_pretrained(folder)
    with pytest.raises(CheckpointError, match="not found"):
        TinyVideoAutoencoder.from_pretrained(tmp_path / "missing")


def test_reconstruction_loss_trains_every_path(ae):
    model = TinyVideoAutoencoder(SMALL, base_channels=16)
    loss, logs = reconstruction_loss(model, _video(5))
    assert set(logs) == {"loss", "l1", "mse", "grad", "psnr"} and torch.isfinite(loss)
    loss.backward()
    for name in ("enc_stem_group", "dec_head_group"):
        assert getattr(model, name).weight.grad.abs().sum() > 0, name
    assert all(p.grad is not None for p in model.parameters())
    # A lone frame is a still group: its latent is the latent of 4 copies, decoded as their mean.
    with torch.no_grad():
        frame = _video(1)[:, 0]
        still = frame[:, None].expand(-1, 4, -1, -1, -1)
        torch.testing.assert_close(model.encode_image(frame)[:, 0], model.normalize(model._encode_groups(still)[:, None])[:, 0])
        z = model.encode_image(frame)
        torch.testing.assert_close(model.decode(z, clamp=False)[:, 0],
                                   model.decode_chunk(z, first_chunk=False, clamp=False).mean(1))
    # A perfect reconstruction scores zero.
    stand_in = PixelSpaceStandIn(SMALL)
    flat = torch.full((1, 5, 3, 32, 48), 0.25)
    loss, logs = reconstruction_loss(stand_in, flat)
    assert float(loss) == 0.0


def test_pixel_space_stand_in_geometry_and_chunks():
    model = PixelSpaceStandIn(SMALL)
    v = _video(9)
    z = model.encode(v)
    assert z.shape == (2, 3, 16, 4, 6) and (z[:, :, 12:] == 0).all()
    out = model.decode(z)
    assert out.shape == v.shape
    # Decoding is an 8x8 block average of the input.
    block = v[:, :, :, :8, :8].mean(dim=(-1, -2))
    torch.testing.assert_close(out[:, :, :, 0, 0], block)
    chunks = torch.cat([model.decode_chunk(z[:, :1], True), model.decode_chunk(z[:, 1:], False)], dim=1)
    assert torch.equal(chunks, out)
    assert model.encode_image(v[:, 0]).shape == (2, 1, 16, 4, 6)
    with pytest.raises(ValueError, match="latent_channels >= 12"):
        PixelSpaceStandIn(VideoConfig(latent_channels=8))


def test_bad_autoencoder_config():
    with pytest.raises(ValueError, match="channel_mults needs 3"):
        TinyVideoAutoencoder(SMALL, channel_mults=(1, 2))
    with pytest.raises(ValueError, match="power of 2"):
        TinyVideoAutoencoder(VideoConfig(height=96, width=96, spatial_stride=12), channel_mults=(1, 2, 2))

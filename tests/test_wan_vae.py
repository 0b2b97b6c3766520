"""The Wan2.1 VAE (diffusers' AutoencoderKLWan) behind the autoencoder interface: both download
layouts load, streaming decode with the session's decode state equals the whole-shot decode."""

import re

import pytest
import torch

from shotstream.checkpoint import CheckpointError
from shotstream.video import to_uint8
from shotstream.wan_vae import WanVideoAutoencoder

diffusers = pytest.importorskip("diffusers")

TINY = {"base_dim": 8, "z_dim": 16}  # Wan2.1's architecture (dim_mult, res blocks, causal convs) at width 8


def tiny_vae(seed=0, **config):
    torch.manual_seed(seed)
    vae = diffusers.AutoencoderKLWan(**(TINY | config)).eval()
    with torch.no_grad():  # the RMS-norm gammas start at 1 and biases at 0: make every weight count
        for p in vae.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return vae


def wan_original_keys(state: dict) -> dict:
    """Diffusers' AutoencoderKLWan names -> Wan's WanVAE_ names (as in Wan2.1_VAE.pth), for the
    Wan2.1 architecture (2 res blocks per level): the inverse of diffusers' converter."""
    resnet = {"norm1.gamma": "residual.0.gamma", "conv1": "residual.2", "norm2.gamma": "residual.3.gamma",
              "conv2": "residual.6", "conv_shortcut": "shortcut"}

    def rename(key):
        for coder in ("encoder", "decoder"):
            key = key.replace(f"{coder}.conv_in.", f"{coder}.conv1.").replace(f"{coder}.norm_out.", f"{coder}.head.0.")
            key = key.replace(f"{coder}.conv_out.", f"{coder}.head.2.").replace(f"{coder}.mid_block.attentions.0.", f"{coder}.middle.1.")
            key = re.sub(rf"^{coder}\.mid_block\.resnets\.(\d)\.", lambda m: f"{coder}.middle.{2 * int(m[1])}.", key)
        key = key.replace("encoder.down_blocks.", "encoder.downsamples.")
        key = re.sub(r"^decoder\.up_blocks\.(\d)\.resnets\.(\d)\.", lambda m: f"decoder.upsamples.{4 * int(m[1]) + int(m[2])}.", key)
        key = re.sub(r"^decoder\.up_blocks\.(\d)\.upsamplers\.0\.", lambda m: f"decoder.upsamples.{4 * int(m[1]) + 3}.", key)
        key = {"quant_conv.weight": "conv1.weight", "quant_conv.bias": "conv1.bias",
               "post_quant_conv.weight": "conv2.weight", "post_quant_conv.bias": "conv2.bias"}.get(key, key)
        if re.match(r"^(encoder\.downsamples|decoder\.upsamples|encoder\.middle|decoder\.middle)\.\d+\.", key):
            for new, old in resnet.items():
                key = re.sub(rf"\.{re.escape(new)}(\.|$)", rf".{old}\1", key)
        return key

    return {rename(k): v for k, v in state.items()}


@pytest.fixture(scope="module")
def vae():
    return tiny_vae()


def test_both_layouts_load(tmp_path, vae):
    """The Diffusers vae/ folder and Wan's original .pth (converted by diffusers) give the same weights."""
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    state = vae.state_dict()
    original = wan_original_keys(state)
    assert "decoder.upsamples.4.shortcut.weight" in original and "encoder.middle.1.to_qkv.weight" in original
    assert convert_wan_vae_to_diffusers(original).keys() == state.keys()  # the helper inverts diffusers' converter

    vae.save_pretrained(tmp_path / "vae")  # config.json + diffusion_pytorch_model.safetensors
    torch.save(original, tmp_path / "Wan2.1_VAE.pth")
    for ae in (WanVideoAutoencoder.from_pretrained(tmp_path / "vae"),
               WanVideoAutoencoder.from_pretrained(tmp_path / "Wan2.1_VAE.pth")):  # widths from the shapes
        assert ae.latent_channels == 16 and (ae.temporal_stride, ae.spatial_stride) == (4, 8)
        assert all(torch.equal(ae.vae.state_dict()[k], v) for k, v in state.items())
        assert torch.allclose(ae.latent_mean[:2], torch.tensor([-0.7571, -0.7089]))  # Wan2.1's latent statistics
    bf16 = WanVideoAutoencoder.from_pretrained(tmp_path / "vae", dtype=torch.bfloat16)
    assert bf16.dtype == torch.bfloat16


def test_bad_vae_files_get_clear_errors(tmp_path, vae):
    original = wan_original_keys(vae.state_dict())
    del original["decoder.head.2.weight"]
    torch.save(original, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"bad.pth: missing keys \[decoder.conv_out.weight\]"):
        WanVideoAutoencoder.from_pretrained(tmp_path / "bad.pth", config=TINY)
    with pytest.raises(CheckpointError, match=r"shape mismatch"):  # a config that contradicts the weights
        WanVideoAutoencoder.from_pretrained(tmp_path / "bad.pth", config={"base_dim": 16})
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"empty: expected a Diffusers vae/ folder"):
        WanVideoAutoencoder.from_pretrained(tmp_path / "empty")
    with pytest.raises(CheckpointError, match=r"not found"):
        WanVideoAutoencoder.from_pretrained(tmp_path / "nothing.pth")


def test_chunked_decode_with_state_equals_whole_decode(vae):
    """6 latent frames in chunks of 3: 9 + 12 = 21 frames, equal to one decode; fresh caches per
    chunk would give 9 + 9 = 18 frames and a seam."""
    ae = WanVideoAutoencoder(vae)
    z = torch.randn(1, 6, 16, 2, 2, generator=torch.Generator().manual_seed(1))
    whole = ae.decode(z, clamp=False)
    assert whole.shape == (1, 21, 3, 16, 16)
    state = ae.decode_state()
    chunks = [ae.decode_chunk(z[:, :3], first_chunk=True, clamp=False, state=state),
              ae.decode_chunk(z[:, 3:], first_chunk=False, clamp=False, state=state)]
    assert [c.shape[1] for c in chunks] == [9, 12]
    torch.testing.assert_close(torch.cat(chunks, dim=1), whole, rtol=0, atol=1e-6)
    # the state restarts with the next shot's first chunk
    again = ae.decode_chunk(z[:, :3], first_chunk=True, clamp=False, state=state)
    torch.testing.assert_close(again, chunks[0], rtol=0, atol=0)
    with pytest.raises(ValueError, match="needs the decode state"):
        ae.decode_chunk(z[:, 3:], first_chunk=False)
    with pytest.raises(ValueError, match="has not seen the shot's first chunk"):
        ae.decode_chunk(z[:, 3:], first_chunk=False, state=ae.decode_state())


def test_encode_and_encode_image(vae):
    """Normalised posterior means; a lone frame (a context image) encodes as a video's frame 0 does."""
    ae = WanVideoAutoencoder(vae)
    video = torch.rand(2, 5, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    z = ae.encode(video)
    assert z.shape == (2, 2, 16, 2, 2)
    raw = vae.encode(video.permute(0, 2, 1, 3, 4)).latent_dist.mean.permute(0, 2, 1, 3, 4)
    mean, std = torch.tensor(vae.config.latents_mean), torch.tensor(vae.config.latents_std)
    torch.testing.assert_close(z, (raw - mean.view(-1, 1, 1)) / std.view(-1, 1, 1))
    image = ae.encode_image(video[:, 0])
    assert image.shape == (2, 1, 16, 2, 2)
    torch.testing.assert_close(image, z[:, :1], rtol=0, atol=1e-5)  # frame 0 is encoded alone (causal)
    torch.testing.assert_close(ae.denormalize(ae.normalize(z)), z)


class WordTextEncoder:
    """Caption states from the words' hashes: the session test needs no language model."""

    def encode(self, captions):  # -> states [B, 8, 16], mask [B, 8]
        states = torch.stack([torch.randn(8, 16, generator=torch.Generator().manual_seed(len(c))) for c in captions])
        return states, torch.ones(len(captions), 8, dtype=torch.bool)


def test_session_streams_through_the_wan_vae():
    """The session keeps one decode state per shot: every chunk after the first decodes with the
    cache its predecessors filled, and the shot equals decoding its latents at once."""
    from shotstream.config import ModelConfig, ShotStreamConfig, VideoConfig
    from shotstream.model.dit import WanDiT
    from shotstream.session import ShotStreamPipeline

    class Recording(WanVideoAutoencoder):
        def decode_chunk(self, latents, first_chunk, clamp=True, state=None):
            self.seen.append(latents)
            return super().decode_chunk(latents, first_chunk, clamp, state)

    cfg = ShotStreamConfig(video=VideoConfig(height=16, width=16, frames_per_shot=17),  # 5 latent frames
                           model=ModelConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=1, text_dim=16, text_len=8,
                                             chunk_frames=2))  # chunks of 2, 2, 1
    torch.manual_seed(0)
    ae = Recording(tiny_vae())
    pipe = ShotStreamPipeline(WanDiT(cfg.model, 16).eval(), cfg, ae, WordTextEncoder())
    ae.seen = []
    session = pipe.session(seed=0)
    session.submit("a red star walks")
    chunks = list(session.stream())
    assert [len(ch.frames) for ch in chunks] == [5, 8, 4]
    whole = to_uint8(ae.decode(torch.cat(ae.seen, dim=1)))
    assert (session.shots[0].frames.astype(int) - whole.astype(int)).__abs__().max() <= 1

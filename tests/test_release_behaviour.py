"""The released ShotStream's behaviour, as the `wan2.1-1.3b` preset's (DESIGN.md section 6), and
the tiny preset's own, each asserted directly on what the session feeds the model:

- the first shot reads `context_frames` zero latents at positions 0..5 (flag 0, its own caption)
  and its frames come after them, from position 6, with flag 1;
- the DiT attends to every one of the caption's `text_len` tokens, the zero padding included;
- shot i's prompt is global_caption + "shot{i}:" + caption, with no space;
- a ~2,100-character global caption reaches the text encoder whole;
- a prompt is cleaned before tokenising (ftfy, HTML entities), as Wan's tokenizer wrapper does.
"""

import warnings

import pytest
import torch

from helpers import make_pipe
from shotstream.config import ModelConfig, PromptConfig, ShotStreamConfig, get_preset
from shotstream.model.dit import FrameInfo, WanDiT
from shotstream.model.memory import select_context_frames
from test_wiring import perturbed, recorded, session_story, split_streamed

RELEASE = get_preset("wan2.1-1.3b")
TINY = get_preset("tiny")


def release_pipe(**kw):
    """A random small pipeline with the release preset's switches."""
    pipe = make_pipe(text_len=48, text_mask=RELEASE.model.text_mask,
                     first_shot_zero_context=RELEASE.model.first_shot_zero_context, **kw)
    pipe.config.prompt = PromptConfig(**vars(RELEASE.prompt))
    return pipe


def test_the_presets_record_their_behaviour():
    assert (TINY.model.text_mask, TINY.model.first_shot_zero_context) == (True, False)
    assert TINY.prompt.template == "{global_caption} {caption}" and TINY.prompt.max_chars == 2000
    assert (RELEASE.model.text_mask, RELEASE.model.first_shot_zero_context) == (False, True)
    assert RELEASE.prompt.template == "{global_caption}shot{shot}:{caption}"
    assert RELEASE.model.context_frames == 6
    # a config written before these fields existed (the shipped tiny checkpoints) reads as tiny
    old = ShotStreamConfig.from_dict({"preset": "tiny", "model": {"dim": 256}})
    assert (old.model.text_mask, old.model.first_shot_zero_context, old.prompt) == (True, False, TINY.prompt)


def test_the_first_shot_reads_six_zero_latents_then_its_frames_flagged_1_from_position_6():
    pipe = release_pipe()
    story, session, per_shot = session_story(pipe, shots=2)
    steps, tpf = len(pipe.config.sampler.student_timesteps), session.memory.tokens_per_frame
    C, F = pipe.config.model.context_frames, pipe.config.video.latent_frames_per_shot
    own_caption = pipe.embed_captions([session.prompt(story.shots[0].caption, 0)])[0][0, 0]

    writes, chunks, _ = split_streamed(per_shot[0], steps)
    (w,) = writes  # the global context cache: the zero latents, at t = 0
    assert w.prefix == 0 and w.x.shape[1] == C == 6 and not w.x.any() and not w.t.any()
    assert w.frames.pos[0].tolist() == [0, 1, 2, 3, 4, 5] and w.frames.shot[0].tolist() == [0] * 6
    assert (w.frames.text_index == w.frames.text_index[0, 0]).all()
    torch.testing.assert_close(w.text[0, w.frames.text_index[0, 0]], own_caption)
    start = 0
    for chunk in chunks:
        n = chunk[0].x.shape[1]
        for c in chunk:
            assert c.prefix == (C + start) * tpf  # the zero context, then this shot's earlier chunks
            assert c.frames.pos[0].tolist() == list(range(C + start, C + start + n))
            assert c.frames.shot[0].tolist() == [1] * n
            torch.testing.assert_close(c.text[0, c.frames.text_index[0, 0]], own_caption)
        start += n
    assert start == F

    # the second shot: its real context (shot 0's frames, flag 0) and its own frames with flag 1
    picks = select_context_frames([len(session.shots[0].frames)], C)
    writes, chunks, _ = split_streamed(per_shot[1], steps)
    (w,) = writes
    assert w.x.any() and w.frames.shot[0].tolist() == [0] * len(picks)
    assert chunks[0][0].frames.pos[0, 0] == len(picks) and chunks[0][0].frames.shot[0].tolist() == [1] * chunks[0][0].x.shape[1]


def test_the_tiny_first_shot_has_no_context():
    pipe = make_pipe(text_len=48)
    _, session, per_shot = session_story(pipe, shots=1)
    writes, chunks, _ = split_streamed(per_shot[0], len(pipe.config.sampler.student_timesteps))
    assert writes == [] and chunks[0][0].prefix == 0
    assert chunks[0][0].frames.pos[0, 0] == 0 and not chunks[0][0].frames.shot.any()


def test_the_release_prompt_is_global_caption_then_shot_i_colon_caption():
    pipe, seen = release_pipe(), []
    encode = pipe.text_encoder.encode
    pipe.text_encoder.encode = lambda captions: seen.extend(captions) or encode(captions)
    session = pipe.session(global_caption="A red star and a blue moon in the snow.")
    session.submit("The star walks left.")
    session.submit("Close-up of the moon.")
    list(session.stream())
    assert session.prompt("The star walks left.", 0) == "A red star and a blue moon in the snow.shot0:The star walks left."
    assert seen == ["A red star and a blue moon in the snow.shot0:The star walks left.",
                    "A red star and a blue moon in the snow.shot1:Close-up of the moon."]
    assert pipe.session().prompt("The star walks left.", 3) == "shot3:The star walks left."  # no global caption
    tiny = make_pipe().session(global_caption="A red star.")
    assert tiny.prompt("It walks left.", 1) == "A red star. It walks left."


def test_a_2100_character_global_caption_reaches_the_release_encoder_whole():
    caption = ("A long global caption of the story's people, place and light. " * 40)[:2100].strip()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert release_pipe().session(global_caption=caption).global_caption == caption
    with pytest.warns(UserWarning, match="truncated to 2000"):
        assert len(make_pipe().session(global_caption=caption).global_caption) == 2000


@pytest.mark.parametrize("text_mask", [True, False])
def test_the_release_dit_attends_to_the_padding_tokens(text_mask):
    """With text_mask=False (the release) the caption's mask changes nothing: the padding tokens'
    embedded zeros are attended like the caption's own; with the tiny preset's mask they are not."""
    cfg = ModelConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=2, text_dim=8, text_len=6, text_mask=text_mask)
    model = perturbed(WanDiT(cfg, 4))
    g = torch.Generator().manual_seed(0)
    x, text = torch.randn(1, 2, 4, 4, 4, generator=g), torch.randn(1, 1, 6, 8, generator=g)
    text[..., 4:, :] = 0  # zero padding after 4 tokens, as the text encoder returns it
    padded = torch.tensor([[[True] * 4 + [False] * 2]])
    t, frames = torch.full((1, 2), 500.0), FrameInfo.build([0, 1], [0, 0])
    with torch.no_grad():
        masked, unmasked = (model(x, t, text, m, frames) for m in (padded, torch.ones_like(padded)))
    assert torch.equal(masked, unmasked) != text_mask


def test_the_release_cleans_a_pasted_prompt_as_its_tokenizer_wrapper_does():
    session = release_pipe().session(global_caption="Tom &amp;amp; Jerry\u2019s\n\n chase. ")
    # mojibake repaired, curly quotes straightened (ftfy), HTML entities unescaped twice,
    # whitespace runs collapsed
    assert session.prompt("The cat\u00e2\u20ac\u2122s   tail &lt;3", 1) == "Tom & Jerry's chase.shot1:The cat's tail <3"
    tiny = make_pipe().session(global_caption="Tom &amp; Jerry.")
    assert tiny.prompt("It walks.", 1) == "Tom &amp; Jerry. It walks."  # the tiny models read prompts as typed


def test_a_bad_prompt_template_is_a_clear_error():
    for bad in ("{global_caption} {caption", "{global} {caption}", "{global_caption} shot{shot}:"):
        with pytest.raises(ValueError, match="prompt.template"):
            ShotStreamConfig(prompt=PromptConfig(template=bad)).validate()
    with pytest.raises(ValueError, match="prompt.max_chars=0"):
        ShotStreamConfig(prompt=PromptConfig(max_chars=0)).validate()


"""Video I/O: mp4 round trips, streaming segments, contact sheets, clear errors."""

import numpy as np
import pytest
from PIL import Image

from shotstream.video import contact_sheet, encode_segment, pad_to_even, read_mp4, sample_indices, save_png, write_mp4
from shotstream.world import render_shot, sample_story


@pytest.fixture(scope="module")
def shot():
    frames, _ = render_shot(sample_story(1), 0)  # uint8 [33, 128, 128, 3]
    return frames


def test_mp4_round_trip_keeps_count_size_and_pixels(tmp_path, shot):
    path = write_mp4(tmp_path / "sub" / "shot.mp4", shot, fps=16)
    back = read_mp4(path)
    assert back.shape == shot.shape and back.dtype == np.uint8
    err = np.abs(back.astype(np.int16) - shot.astype(np.int16))
    assert err.mean() < 5, err.mean()
    # a different video must not pass the same check (the tolerance is meaningful)
    assert np.abs(back[::-1].astype(np.int16) - shot.astype(np.int16)).mean() > err.mean() + 1


def test_non_square_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    frames = np.repeat(rng.integers(0, 255, (5, 1, 1, 3), dtype=np.uint8), 48 * 80, axis=1).reshape(5, 48, 80, 3)
    back = read_mp4(write_mp4(tmp_path / "wide.mp4", frames, fps=8))
    assert back.shape == (5, 48, 80, 3)
    assert np.abs(back.astype(int) - frames.astype(int)).mean() < 6


def test_segments_are_independently_playable(tmp_path, shot):
    chunks = [shot[:9], shot[9:21], shot[21:]]
    decoded = []
    for k, chunk in enumerate(chunks):
        data = encode_segment(chunk, fps=16)
        assert data[4:8] == b"ftyp"  # a complete file, not a bare fragment
        decoded.append(read_mp4(data))
        assert decoded[-1].shape == chunk.shape
    path = encode_segment(chunks[1], fps=16, path=tmp_path / "seg1.mp4")
    assert read_mp4(path).shape == chunks[1].shape
    assert np.abs(np.concatenate(decoded).astype(int) - shot.astype(int)).mean() < 6


def test_odd_size_is_a_clear_error_and_pad_fixes_it(tmp_path):
    frames = np.zeros((3, 31, 64, 3), np.uint8)
    with pytest.raises(ValueError, match=r"odd\.mp4: H\.264 yuv420p needs an even height and width, got 31x64"):
        write_mp4(tmp_path / "odd.mp4", frames, fps=8)
    with pytest.raises(ValueError, match="even height and width"):
        encode_segment(frames, fps=8)
    assert read_mp4(write_mp4(tmp_path / "odd.mp4", pad_to_even(frames), fps=8)).shape == (3, 32, 64, 3)


def test_bad_frames_are_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"x\.mp4: expected uint8 frames, got float32"):
        write_mp4(tmp_path / "x.mp4", np.zeros((2, 16, 16, 3), np.float32), fps=8)
    with pytest.raises(ValueError, match=r"shape \[F, H, W, 3\]"):
        write_mp4(tmp_path / "x.mp4", np.zeros((16, 16, 3), np.uint8), fps=8)
    with pytest.raises(ValueError, match="fps must be positive"):
        write_mp4(tmp_path / "x.mp4", np.zeros((2, 16, 16, 3), np.uint8), fps=0)


def test_read_errors_name_the_file(tmp_path, shot):
    with pytest.raises(FileNotFoundError, match=r"missing\.mp4: video file not found"):
        read_mp4(tmp_path / "missing.mp4")
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video at all")
    with pytest.raises(ValueError, match=r"notes\.mp4: not an mp4 file"):
        read_mp4(text)
    good = write_mp4(tmp_path / "good.mp4", shot, fps=16).read_bytes()
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(good[:2000])  # right header, truncated body
    with pytest.raises(ValueError, match=r"broken\.mp4: cannot decode video"):
        read_mp4(broken)


def test_sample_indices_include_first_and_last():
    assert sample_indices(33, 5).tolist() == [0, 8, 16, 24, 32]
    assert sample_indices(3, 5).tolist() == [0, 1, 2]


def test_contact_sheet_layout_and_pixels(tmp_path, shot):
    other = shot[:, :, ::-1].copy()
    sheet = contact_sheet([shot, other], ["first caption", "second caption"], n_per_shot=4, pad=4)
    assert sheet.dtype == np.uint8 and sheet.ndim == 3 and sheet.shape[-1] == 3
    assert sheet.shape[1] == 4 * (128 + 4) + 4
    assert sheet.shape[0] > 2 * 128
    # the first frame of shot 0 is pasted unchanged somewhere in column 0, below the caption
    tile = shot[0]
    rows = [y for y in range(sheet.shape[0] - 128) if np.array_equal(sheet[y, 4:132], tile[0])]
    assert rows and np.array_equal(sheet[rows[0]:rows[0] + 128, 4:132], tile)
    # the last tile of the first row is the last frame
    y0 = rows[0]
    assert np.array_equal(sheet[y0:y0 + 128, 4 + 3 * 132:4 + 3 * 132 + 128], shot[-1])
    with pytest.raises(ValueError, match="2 shots but 1 captions"):
        contact_sheet([shot, other], ["only one"])
    path = save_png(tmp_path / "sheet.png", sheet)
    assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), sheet)

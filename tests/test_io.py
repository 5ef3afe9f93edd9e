"""Video/image I/O: round trips, frame selection, resize/crop, atomic writes, user errors."""

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

import cvvae.io
from cvvae.errors import UserInputError
from cvvae.io import (
    atomic_path,
    check_not_input,
    is_image_path,
    list_videos,
    read_image,
    read_video,
    resize_center_crop,
    same_file,
    write_image,
    write_video,
)


def ramp_video(t: int, h: int, w: int) -> torch.Tensor:
    """A smooth synthetic clip ``(3, T, H, W)`` in [-1, 1] whose frames differ (frame i is
    brighter by i steps), so frame order and selection are visible after lossy coding."""
    ys = torch.linspace(-0.6, 0.6, h)[:, None].expand(h, w)
    xs = torch.linspace(-0.6, 0.6, w)[None, :].expand(h, w)
    base = torch.stack([ys, xs, (ys + xs) / 2])
    level = torch.linspace(-0.3, 0.3, t)[None, :, None, None]
    return (base[:, None] + level).clamp(-1, 1)


def frame_levels(video: torch.Tensor) -> torch.Tensor:
    """Mean value of each frame ``(T,)``."""
    return video.mean(dim=(0, 2, 3))


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_video_round_trip_keeps_frames_size_and_rate(tmp_path):
    video = ramp_video(9, 32, 48)
    path = tmp_path / "clip.mp4"
    write_video(path, video, fps=Fraction(30000, 1001))
    back, info = read_video(path)
    assert back.shape == video.shape and back.dtype == torch.float32
    assert info.rate == Fraction(30000, 1001) and info.fps == pytest.approx(29.97002997)
    assert info.total_frames == 9 and (info.height, info.width) == (32, 48)
    assert (back - video).abs().mean() < 0.02
    assert listing(tmp_path) == ["clip.mp4"]


def test_float_fps_29_97_round_trips(tmp_path):
    path = tmp_path / "clip.mp4"
    write_video(path, ramp_video(3, 16, 16), fps=30000 / 1001)
    assert read_video(path)[1].rate == Fraction(30000, 1001)
    write_video(path, ramp_video(3, 16, 16), fps=29.97)
    assert read_video(path)[1].fps == 29.97


def test_odd_size_video_keeps_exact_size(tmp_path):
    video = ramp_video(5, 33, 47)
    path = tmp_path / "odd.mp4"
    write_video(path, video, fps=24)
    back, info = read_video(path)
    assert back.shape == (3, 5, 33, 47)
    assert (back - video).abs().mean() < 0.02
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.pix_fmt == "yuv444p"


def test_even_size_video_is_yuv420p(tmp_path):
    path = tmp_path / "even.mp4"
    write_video(path, ramp_video(2, 16, 24), fps=24)
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.pix_fmt == "yuv420p"


def test_start_stride_and_count_select_frames(tmp_path):
    video = ramp_video(12, 16, 16)
    path = tmp_path / "clip.mp4"
    write_video(path, video, fps=30)
    back, _ = read_video(path, start=2, num_frames=3, stride=3)
    assert back.shape[1] == 3
    torch.testing.assert_close(
        frame_levels(back), frame_levels(video)[[2, 5, 8]], atol=0.02, rtol=0
    )
    # fewer frames come back when the video ends first
    assert read_video(path, start=10, num_frames=5)[0].shape[1] == 2


def test_read_stops_decoding_when_enough_frames(tmp_path, monkeypatch):
    path = tmp_path / "clip.mp4"
    write_video(path, ramp_video(20, 16, 16), fps=30)
    calls = []
    original = cvvae.io._from_uint8
    monkeypatch.setattr(cvvae.io, "_from_uint8", lambda rgb: calls.append(1) or original(rgb))
    read_video(path, num_frames=4)
    assert len(calls) == 4


def test_read_real_clip_with_resize(shared_dir):
    path = shared_dir / "data/videos/pexels_4896510_1280x720_30fps.mp4"
    video, info = read_video(path, num_frames=2, size=(64, 96))
    assert video.shape == (3, 2, 64, 96)
    assert (info.height, info.width, info.total_frames) == (720, 1280, 270)
    assert info.rate == Fraction(30000, 1001)
    assert -1 <= video.min() < video.max() <= 1


def test_resize_center_crop_keeps_aspect_and_crops_center():
    # a 20x40 image: -1 in the 4 outer columns on each side, +1 in between
    x = torch.full((3, 20, 40), -1.0)
    x[..., 4:36] = 1.0
    out = resize_center_crop(x, (10, 10))  # scale 0.5 -> 10x20, crop the middle 10 columns
    assert out.shape == (3, 10, 10)
    torch.testing.assert_close(out, torch.ones(3, 10, 10))
    whole = resize_center_crop(x, (10, 20))  # same scale, no crop: the dark border remains
    torch.testing.assert_close(whole[..., 0], torch.full((3, 10), -1.0))
    tall = resize_center_crop(torch.zeros(2, 3, 40, 20), (10, 20))  # leading dims kept
    assert tall.shape == (2, 3, 10, 20)
    same = torch.randn(3, 8, 8)
    torch.testing.assert_close(resize_center_crop(same, (8, 8)), same)


@pytest.mark.parametrize("name", ["img.png", "img.jpg"])
def test_image_round_trip(tmp_path, name):
    levels = torch.arange(256, dtype=torch.float32) / 127.5 - 1  # exact uint8 levels
    image = levels[torch.randint(0, 256, (3, 20, 30), generator=torch.Generator().manual_seed(0))]
    write_image(tmp_path / name, image)
    back = read_image(tmp_path / name)
    assert back.shape == (3, 20, 30)
    if name.endswith(".png"):
        torch.testing.assert_close(back, image, atol=0, rtol=0)
    else:
        assert (back - image).abs().mean() < 0.5  # JPEG is lossy; noise is the worst case
    assert listing(tmp_path) == [name]


def test_read_image_resize_and_grey(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((40, 60), 255, dtype=np.uint8), mode="L").save(tmp_path / "g.png")
    image = read_image(tmp_path / "g.png", size=(16, 16))
    assert image.shape == (3, 16, 16)
    torch.testing.assert_close(image, torch.ones(3, 16, 16))


def test_is_image_path():
    assert is_image_path("a/b.PNG") and is_image_path("x.jpeg") and is_image_path(Path("y.webp"))
    assert not is_image_path("clip.mp4") and not is_image_path("latents.safetensors")


def test_atomic_path_renames_on_success_and_cleans_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".bin" and tmp != target
        tmp.write_bytes(b"new")
        assert not target.exists()
    assert target.read_bytes() == b"new"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"new"
    assert listing(tmp_path) == ["out.bin"]


def test_atomic_path_missing_folder(tmp_path):
    with pytest.raises(UserInputError, match="output folder does not exist"):
        with atomic_path(tmp_path / "nope" / "x.mp4"):
            pass


def test_failed_video_write_leaves_nothing(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("encoder died")

    monkeypatch.setattr(av.VideoFrame, "from_ndarray", fail)
    with pytest.raises(RuntimeError):
        write_video(tmp_path / "clip.mp4", ramp_video(3, 16, 16), fps=30)
    assert listing(tmp_path) == []


def make_bad_files(folder: Path, good_video: Path) -> dict[str, Path]:
    """Files that read_video must reject, keyed by the expected message start."""
    text = folder / "notes.mp4"
    text.write_text("this is not a video\n" * 20)
    audio = folder / "sound.wav"
    with av.open(str(audio), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 800), np.int16), format="s16", layout="mono"
        )
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    empty = folder / "empty.y4m"  # a valid header with a video stream but no frames
    empty.write_bytes(b"YUV4MPEG2 W32 H32 F30:1 Ip A1:1 C420jpeg\n")
    corrupt = folder / "corrupt.mp4"  # container intact, compressed frames overwritten
    data = bytearray(good_video.read_bytes())
    data[100:-2000] = np.random.default_rng(0).bytes(len(data) - 2100)
    corrupt.write_bytes(bytes(data))
    return {
        "file not found": folder / "missing.mp4",
        "not a readable video file": text,
        "no video stream in file": audio,
        "video has no frames": empty,
        "corrupt video stream": corrupt,
    }


def test_read_video_user_errors_name_problem_and_file(tmp_path):
    good = tmp_path / "good.mp4"
    write_video(good, torch.rand(3, 9, 32, 32) * 2 - 1, fps=30)  # noise: large frames
    for problem, path in make_bad_files(tmp_path, good).items():
        with pytest.raises(UserInputError) as caught:
            read_video(path)
        assert str(caught.value) == f"{problem}: {path}"
    with pytest.raises(UserInputError, match=r"start frame 9 is beyond the end \(9 frames\)"):
        read_video(good, start=9)


def test_read_image_user_errors(tmp_path):
    write_image(tmp_path / "ok.png", torch.zeros(3, 16, 16))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes((tmp_path / "ok.png").read_bytes()[:60])
    text = tmp_path / "text.png"
    text.write_text("hello")
    cases = {
        "file not found": tmp_path / "missing.png",
        "not an image file": text,
        "corrupt image file": truncated,
    }
    for problem, path in cases.items():
        with pytest.raises(UserInputError) as caught:
            read_image(path)
        assert str(caught.value) == f"{problem}: {path}"


def test_write_rejects_wrong_extension(tmp_path):
    with pytest.raises(UserInputError, match="must end in .mp4"):
        write_video(tmp_path / "clip.png", ramp_video(2, 8, 8), fps=30)
    with pytest.raises(UserInputError, match="image extension"):
        write_image(tmp_path / "img.mp4", torch.zeros(3, 8, 8))
    assert listing(tmp_path) == []


# ---------------------------------------------------------------------------- read as meant
def test_16_bit_greyscale_png_keeps_its_tones(tmp_path):
    ramp = np.linspace(0, 65535, 64, dtype=np.float64).round().astype(np.uint16)
    Image.fromarray(np.tile(ramp, (8, 1))).save(tmp_path / "g16.png")
    x = read_image(tmp_path / "g16.png")
    assert x.shape == (3, 8, 64)
    expected = torch.from_numpy(ramp / 65535.0).float() * 2 - 1
    assert torch.allclose(x[0, 0], expected, atol=1e-6)
    assert torch.equal(x[0], x[1]) and torch.equal(x[0], x[2])
    assert (x > 0.99).float().mean() < 0.05  # not read as (nearly) all white


@pytest.mark.parametrize("mode", ["L", "LA", "P", "1", "I"])
def test_greyscale_and_palette_images_read_as_grey_rgb(tmp_path, mode):
    grey = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (8, 1))
    img = Image.fromarray(grey, "L")
    if mode == "I":  # 32-bit integers holding 16-bit values, as Pillow opens some PNGs
        img = Image.fromarray(grey.astype(np.int32) * 257, "I")
    elif mode != "L":
        img = img.convert(mode)
    name = "g.tif" if mode == "I" else "g.png"  # PNG cannot hold 32-bit integers
    img.save(tmp_path / name)
    x = read_image(tmp_path / name)
    assert x.shape == (3, 8, 64) and torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    if mode in ("L", "LA", "I"):
        assert torch.allclose(x[0, 0], torch.from_numpy(grey[0] / 255.0).float() * 2 - 1, atol=1e-5)


def test_decompression_bomb_is_a_user_error(tmp_path):
    from test_cli_errors import bomb_png

    bomb_png(tmp_path / "bomb.png")
    with pytest.raises(UserInputError, match="image too large"):
        read_image(tmp_path / "bomb.png")


def _gop_video(path: Path, frames: int, gop: int) -> torch.Tensor:
    """A clip with a keyframe every ``gop`` frames (B-frames on), returned as written."""
    video = torch.rand(3, frames, 16, 24) * 2 - 1
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 24, 16, "yuv420p"
        stream.options = {"g": str(gop), "keyint_min": str(gop), "bf": "2", "sc_threshold": "0"}
        for rgb in cvvae.io._to_uint8(video):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode(None))
    return video


def test_start_frame_seeks_to_a_keyframe_and_gives_the_frames_of_a_full_decode(
    tmp_path, monkeypatch
):
    path = tmp_path / "gop.mp4"
    _gop_video(path, 40, gop=8)
    full, _ = read_video(path)
    decoded = []
    real = cvvae.io._from_uint8
    monkeypatch.setattr(cvvae.io, "_from_uint8", lambda rgb: decoded.append(1) or real(rgb))
    for start, count, stride in [(1, 3, 1), (8, 4, 2), (13, 5, 3), (30, None, 1), (39, 2, 1)]:
        x, _ = read_video(path, start, count, stride)
        end = None if count is None else start + count * stride
        assert torch.equal(x, full[:, start:end:stride]), (start, count, stride)
    assert cvvae.io._seek_plan(path, 30) is not None  # the timestamps allowed seeking


def test_start_frame_seek_saves_decoding(tmp_path, monkeypatch):
    path = tmp_path / "gop.mp4"
    _gop_video(path, 40, gop=8)
    calls = []
    real = av.VideoFrame.to_ndarray
    monkeypatch.setattr(
        av.VideoFrame, "to_ndarray", lambda f, **k: calls.append(f.pts) or real(f, **k)
    )
    read_video(path, 33, 2)
    assert len(calls) == 2  # only the frames kept are converted


def test_start_frame_seek_on_real_clips(video_paths):
    for path in video_paths[:2]:
        full, _ = read_video(path, 0, 60, 1, (18, 32))
        for start in (1, 29, 45):
            x, _ = read_video(path, start, 5, 2, (18, 32))
            assert torch.equal(x, full[:, start : start + 10 : 2]), (path.name, start)


def test_truncated_video_is_read_to_its_end_with_a_warning(tmp_path, caplog):
    path = tmp_path / "whole.mp4"
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        stream.options = {"g": "5", "crf": "0"}
        for rgb in cvvae.io._to_uint8(torch.rand(3, 30, 64, 64) * 2 - 1):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode(None))
    cut = tmp_path / "cut.mp4"
    data = path.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    video, info = read_video(cut)
    assert info.total_frames == 30 and 0 < video.shape[1] < 30
    assert f"ends after {video.shape[1]} of the 30 frames" in caplog.text or (
        "breaks off" in caplog.text
    )
    assert str(cut) in caplog.text


# ---------------------------------------------------------------------------- writes
def test_same_file_and_check_not_input(tmp_path):
    source = tmp_path / "a.png"
    source.write_bytes(b"x")
    (tmp_path / "link.png").symlink_to(source)
    os.link(source, tmp_path / "hard.png")
    for other in ("a.png", "link.png", "hard.png"):
        assert same_file(source, tmp_path / other)
        with pytest.raises(UserInputError, match="the output is the input file"):
            check_not_input(tmp_path / other, source)
    assert not same_file(source, tmp_path / "new.png")
    check_not_input(tmp_path / "new.png", source)


def test_atomic_path_refuses_a_folder_and_renames_errors_to_the_output(tmp_path):
    (tmp_path / "out.png").mkdir()
    with pytest.raises(UserInputError, match="the output is a folder"):
        with atomic_path(tmp_path / "out.png"):
            pass
    long = tmp_path / ("y" * 300 + ".png")
    with pytest.raises(OSError) as error:
        with atomic_path(long) as tmp:
            tmp.write_bytes(b"x")
    assert error.value.filename == str(long) and list(tmp_path.glob(".*partial*")) == []


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_atomic_writes_get_the_umask_mode(tmp_path, umask):
    from safetensors.torch import save_file

    old = os.umask(umask)
    try:
        with atomic_path(tmp_path / "z.safetensors") as tmp:
            save_file({"x": torch.zeros(1)}, str(tmp))
        write_image(tmp_path / "i.png", torch.zeros(3, 4, 4))
    finally:
        os.umask(old)
    for name in ("z.safetensors", "i.png"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_list_rows_are_checked(tmp_path):
    (tmp_path / "a.csv").write_text("caption,path\nx\n")
    with pytest.raises(UserInputError, match="CSV video list row 2 has no path"):
        list_videos([str(tmp_path / "a.csv")])
    (tmp_path / "b.jsonl").write_text('{"path": "ok.mp4"}\n\n{"path": 5}\n')
    with pytest.raises(UserInputError, match="line 3: 'path' must be a non-empty string, got 5"):
        list_videos([str(tmp_path / "b.jsonl")])
    (tmp_path / "c.csv").write_bytes(b"path\n\xff.mp4\n")
    with pytest.raises(UserInputError, match="not UTF-8"):
        list_videos([str(tmp_path / "c.csv")])

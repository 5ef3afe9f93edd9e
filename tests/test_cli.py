"""The cvvae command line: round trips, printed metrics, and one-line errors with no output."""

import logging
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from cvvae import CVVAE
from cvvae.cli import main
from cvvae.io import read_image, read_video, write_image, write_video

REAL_CLIP = "data/videos/pexels_4896510_1280x720_30fps.mp4"  # 29.97 fps
CLIP_ARGS = ["--frames", "9", "--height", "64", "--width", "96"]


@pytest.fixture(scope="module")
def model_dir(shared_dir) -> Path:
    return shared_dir / "reference" / "cvvae_sd21_tiny"


@pytest.fixture(scope="module")
def small_clip(tmp_path_factory, shared_dir) -> Path:
    """9 frames of a real clip at 64x96, 30000/1001 fps."""
    video, info = read_video(shared_dir / REAL_CLIP, num_frames=9, size=(64, 96))
    path = tmp_path_factory.mktemp("clip") / "small.mp4"
    write_video(path, video, info.rate)
    return path


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_encode_decode_round_trip_restores_frames_size_and_fps(
    tmp_path, capsys, shared_dir, model_dir
):
    latents = tmp_path / "clip.safetensors"
    code, out, err = run(
        capsys, "encode", shared_dir / REAL_CLIP, latents, "--model", model_dir, *CLIP_ARGS
    )
    assert code == 0, err
    assert "wrote" in out
    with safe_open(str(latents), framework="pt") as f:
        meta, z = f.metadata(), f.get_tensor("latents")
    assert z.shape == (4, 3, 8, 12) and z.dtype == torch.float32
    assert meta["frames"] == "9" and (meta["height"], meta["width"]) == ("64", "96")
    assert meta["fps"] == "30000/1001" and meta["latents_scaled"] == "false"
    assert meta["latent_channels"] == "4" and float(meta["scaling_factor"]) == 0.18215
    assert meta["model"] == str(model_dir) and meta["posterior"] == "mean"

    decoded = tmp_path / "decoded.mp4"
    code, _, err = run(capsys, "decode", latents, decoded, "--model", model_dir)
    assert code == 0, err
    video, info = read_video(decoded)
    assert video.shape == (3, 9, 64, 96)
    assert info.rate == Fraction(30000, 1001)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.safetensors", "decoded.mp4"]


def test_encode_mean_is_the_model_posterior_mean(tmp_path, capsys, small_clip, model_dir):
    latents = tmp_path / "z.safetensors"
    assert run(capsys, "encode", small_clip, latents, "--model", model_dir)[0] == 0
    with safe_open(str(latents), framework="pt") as f:
        z = f.get_tensor("latents")
    model = CVVAE.from_pretrained(model_dir)
    with torch.no_grad():
        expected = model.encode(read_video(small_clip)[0][None]).latent_dist.mean[0]
    torch.testing.assert_close(z, expected)


def test_odd_frame_count_and_size_round_trip(tmp_path, capsys, small_clip, model_dir):
    latents, decoded = tmp_path / "z.safetensors", tmp_path / "odd.mp4"
    clip = ["--frames", "6", "--start", "1", "--height", "45", "--width", "61"]
    assert run(capsys, "encode", small_clip, latents, "--model", model_dir, *clip)[0] == 0
    assert run(capsys, "decode", latents, decoded, "--model", model_dir)[0] == 0
    assert read_video(decoded)[0].shape == (3, 6, 45, 61)


def test_stride_keeps_playback_speed(tmp_path, capsys, small_clip, model_dir):
    latents = tmp_path / "z.safetensors"
    assert run(capsys, "encode", small_clip, latents, "--model", model_dir, "--stride", "2")[0] == 0
    with safe_open(str(latents), framework="pt") as f:
        meta = f.metadata()
    assert meta["frames"] == "5" and Fraction(meta["fps"]) == Fraction(15000, 1001)


def test_encode_sample_is_seeded(tmp_path, capsys, small_clip, model_dir):
    def encode(name, *extra):
        path = tmp_path / name
        assert run(capsys, "encode", small_clip, path, "--model", model_dir, *extra)[0] == 0
        with safe_open(str(path), framework="pt") as f:
            return f.get_tensor("latents"), f.metadata()

    mean, _ = encode("mean.safetensors")
    a, meta = encode("a.safetensors", "--sample", "--seed", "1")
    b, _ = encode("b.safetensors", "--sample", "--seed", "1")
    c, _ = encode("c.safetensors", "--sample", "--seed", "2")
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c) and not torch.equal(a, mean)
    assert meta["posterior"] == "sample" and meta["seed"] == "1"


def test_reconstruct_video_prints_metrics(tmp_path, capsys, small_clip, model_dir):
    out_path = tmp_path / "recon.mp4"
    code, out, err = run(capsys, "reconstruct", small_clip, out_path, "--model", model_dir)
    assert code == 0, err
    assert "PSNR" in out and "SSIM" in out and "dB" in out
    video, info = read_video(out_path)
    assert video.shape == (3, 9, 64, 96) and info.rate == Fraction(30000, 1001)


def test_reconstruct_image(tmp_path, capsys, small_clip, model_dir):
    image = tmp_path / "frame.png"
    write_image(image, read_video(small_clip, num_frames=1)[0][:, 0])
    out_path = tmp_path / "recon.jpg"
    code, out, err = run(
        capsys,
        "reconstruct",
        image,
        out_path,
        "--model",
        model_dir,
        "--height",
        "40",
        "--width",
        "48",
    )
    assert code == 0, err
    assert "image 48x40" in out and "SSIM" in out
    assert read_image(out_path).shape == (3, 40, 48)


def test_info_reports_parameter_counts(capsys, model_dir):
    code, out, _ = run(capsys, "info", model_dir)
    assert code == 0
    model = CVVAE.from_pretrained(model_dir)
    enc = sum(p.numel() for p in model.encoder.parameters())
    dec = sum(p.numel() for p in model.decoder.parameters())
    assert f"encoder {enc:,}, decoder {dec:,}, total {enc + dec:,}" in out
    assert "latent channels: 4" in out and "4x time, 8x8 space" in out
    assert '"block_out_channels"' in out


def test_help_explains_every_command(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["--help"])
    assert caught.value.code == 0
    text = capsys.readouterr().out
    for command in ("reconstruct", "encode", "decode", "info"):
        assert command in text
    for command, options in {
        "reconstruct": [
            "--model",
            "--height",
            "--width",
            "--frames",
            "--start",
            "--stride",
            "--device",
            "--dtype",
        ],
        "encode": ["--sample", "--seed", "NOT multiplied by the scaling factor"],
        "decode": ["restoring the original frame count"],
    }.items():
        with pytest.raises(SystemExit):
            main([command, "--help"])
        help_text = " ".join(capsys.readouterr().out.split())
        for option in options:
            assert option in help_text, (command, option)


# ---------------------------------------------------------------------------- user errors
def bad_inputs(folder: Path, small_clip: Path, model_dir: Path, sd3_dir: Path, capsys) -> dict:
    """name -> (argv, the file the message must name, the output that must not appear)."""
    out = folder / "out.mp4"
    text = folder / "notes.mp4"
    text.write_text("not a video\n" * 10)
    empty = folder / "empty.y4m"
    empty.write_bytes(b"YUV4MPEG2 W32 H32 F30:1 Ip A1:1 C420jpeg\n")
    noisy = folder / "noisy.mp4"
    write_video(noisy, torch.rand(3, 9, 32, 32) * 2 - 1, fps=30)
    corrupt = folder / "corrupt.mp4"
    data = bytearray(noisy.read_bytes())
    data[100:-2000] = np.random.default_rng(0).bytes(len(data) - 2100)
    corrupt.write_bytes(bytes(data))
    sd3_latents = folder / "sd3.safetensors"
    assert main(["encode", str(small_clip), str(sd3_latents), "--model", str(sd3_dir)]) == 0
    plain = folder / "plain.safetensors"
    save_file({"latents": torch.zeros(4, 3, 8, 12)}, str(plain))
    garbage = folder / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01not safetensors")
    empty_model = folder / "empty_model"
    empty_model.mkdir()
    audio = folder / "sound.wav"
    with av.open(str(audio), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 800), np.int16), format="s16", layout="mono"
        )
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    capsys.readouterr()
    model = ["--model", model_dir]
    recon = lambda src, *extra: ["reconstruct", src, out, *model, *extra]  # noqa: E731
    return {
        "missing file": (recon(folder / "missing.mp4"), folder / "missing.mp4", out),
        "not a video": (recon(text), text, out),
        "no video stream": (recon(audio), audio, out),
        "zero frames": (recon(empty), empty, out),
        "corrupt stream": (recon(corrupt), corrupt, out),
        "start beyond end": (recon(small_clip, "--start", "50"), small_clip, out),
        "video to image output": (
            ["reconstruct", small_clip, folder / "o.png", *model],
            folder / "o.png",
            folder / "o.png",
        ),
        "missing model folder": (
            ["reconstruct", small_clip, out, "--model", folder / "nope"],
            folder / "nope",
            out,
        ),
        "unreadable model folder": (
            ["reconstruct", small_clip, out, "--model", empty_model],
            empty_model,
            out,
        ),
        "encode to wrong suffix": (
            ["encode", small_clip, folder / "z.pt", *model],
            folder / "z.pt",
            folder / "z.pt",
        ),
        "encode missing file": (
            ["encode", folder / "gone.mp4", folder / "z.safetensors", *model],
            folder / "gone.mp4",
            folder / "z.safetensors",
        ),
        "channel mismatch": (["decode", sd3_latents, out, *model], sd3_latents, out),
        "not cvvae latents": (["decode", plain, out, *model], plain, out),
        "not safetensors": (["decode", garbage, out, *model], garbage, out),
        "missing output folder": (
            ["reconstruct", small_clip, folder / "no" / "o.mp4", *model],
            folder / "no" / "o.mp4",
            folder / "no",
        ),
    }


def test_every_bad_input_is_one_line_exit_2_and_no_output(
    tmp_path, capsys, small_clip, model_dir, shared_dir
):
    cases = bad_inputs(
        tmp_path, small_clip, model_dir, shared_dir / "reference" / "cvvae_sd3_tiny", capsys
    )
    before = sorted(p.name for p in tmp_path.iterdir())
    for name, (argv, named_file, output) in cases.items():
        code, out, err = run(capsys, *argv)
        assert code == 2, (name, err)
        assert err.startswith("cvvae: error: ") and err.count("\n") == 1, (name, err)
        assert err.rstrip("\n").endswith(f": {named_file}"), (name, err)
        assert not output.exists(), name
        assert sorted(p.name for p in tmp_path.iterdir()) == before, name  # no temp files left
    assert "expects 4" in run(capsys, *cases["channel mismatch"][0])[2]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["reconstruct", "a.mp4", "b.mp4", "--model", "m", "--frames", "0"],
            "argument --frames: must be >= 1",
        ),
        (
            ["encode", "a.mp4", "b.safetensors", "--model", "m", "--height", "64"],
            "--height and --width",
        ),
        (["decode", "a.safetensors"], "the following arguments are required: OUT"),
        (
            ["reconstruct", "a.mp4", "b.mp4", "--model", "m", "--dtype", "int8"],
            "invalid choice: 'int8'",
        ),
        ([], "the following arguments are required: COMMAND"),
    ],
)
def test_bad_arguments_are_one_line(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    Path("a.mp4").write_bytes(b"")
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert err.startswith("cvvae: error: ") and err.count("\n") == 1 and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4"]


def test_real_process_exit_code_and_stderr(tmp_path, small_clip, model_dir):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(small_clip.read_bytes()[: small_clip.stat().st_size // 2])
    out = tmp_path / "out.mp4"
    argv = [
        sys.executable,
        "-m",
        "cvvae.cli",
        "reconstruct",
        str(bad),
        str(out),
        "--model",
        str(model_dir),
    ]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr == f"cvvae: error: not a readable video file: {bad}\n"
    assert result.stdout == "" and not out.exists()


def test_reconstruct_without_model_uses_the_bundled_model_at_its_scale(
    tmp_path, capsys, caplog, monkeypatch
):
    from cvvae.cli import common
    from cvvae.io import read_video

    bundled = common.default_model_path()
    assert bundled is not None and (bundled / "config.json").is_file()
    clip = Path(common.__file__).resolve().parents[1] / "assets" / "clip.mp4"
    _, info = read_video(clip, num_frames=1)
    source = tmp_path / "large.mp4"  # the clip at twice its size: the bundled model shrinks it
    frames, _ = read_video(clip, num_frames=9, size=(2 * info.height, 2 * info.width))
    write_video(source, frames, info.rate)
    with caplog.at_level(logging.INFO, logger="cvvae"):
        code, out, _ = run(capsys, "reconstruct", str(source), str(tmp_path / "r.mp4"))
    assert code == 0 and str(bundled) in out and "PSNR" in out
    assert "trained on frames with a 128-pixel short side" in caplog.text
    written, _ = read_video(tmp_path / "r.mp4")
    scale = common.BUNDLED_SHORT_SIDE / min(info.height, info.width)
    assert written.shape[-2:] == (round(info.height * scale), round(info.width * scale))
    psnr_db = float(out.split("PSNR ")[1].split(" dB")[0])
    assert psnr_db > 22  # a trained model at the scale it knows, not noise
    # an explicit size wins
    code, _, _ = run(
        capsys,
        "reconstruct",
        str(source),
        str(tmp_path / "e.mp4"),
        "--height",
        "64",
        "--width",
        "64",
    )
    assert code == 0 and read_video(tmp_path / "e.mp4")[0].shape[-2:] == (64, 64)
    monkeypatch.setattr(common, "default_model_path", lambda: None)
    code, _, err = run(capsys, "reconstruct", str(source), str(tmp_path / "s.mp4"))
    assert code == 2 and "no --model given and no bundled model installed" in err

"""``cvvae evaluate`` at toy size: the JSON, the Markdown table, the plots, one-line errors."""

import json
from pathlib import Path

import pytest
import torch
from builders import tiny_image_vae
from PIL import Image
from test_evaluation_fvd import save_i3d, small_i3d

from cvvae import inflate_from_image_vae
from cvvae.cli import main
from cvvae.io import write_image, write_video
from cvvae.training.lpips import LPIPS, save_lpips_weights


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A tiny image VAE, its inflation, a 12-frame 32x32 clip (a square moving right), an image."""
    root = tmp_path_factory.mktemp("eval")
    image_vae = tiny_image_vae()
    image_vae.save_pretrained(root / "image_vae")
    inflate_from_image_vae(image_vae).save_pretrained(root / "inflated")
    video = torch.full((3, 12, 32, 32), -0.5)
    for t in range(12):
        video[:, t, 8:20, t : t + 12] = 0.8
    write_video(root / "clip.mp4", video, 24)
    (root / "images").mkdir()
    write_image(root / "images" / "still.png", video[:, 3])
    (root / "list.txt").write_text("# clips\nclip.mp4\n\n")
    return {
        "root": root,
        "image_vae": root / "image_vae",
        "inflated": root / "inflated",
        "clip": root / "clip.mp4",
        "images": root / "images",
        "list": root / "list.txt",
    }


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


TOY = ["--frames", "5", "--height", "32", "--width", "32"]


def run_with_baselines(capsys, files, out, *argv) -> tuple[int, str, str]:
    """``cvvae evaluate`` of the inflated model as ``m`` beside the image VAE's baselines."""
    model = ["--model", f"m={files['inflated']}", "--image-vae", files["image_vae"]]
    return run(capsys, "evaluate", *model, "--baselines", *argv, "--out", out)


def test_evaluate_writes_json_table_and_plots(tmp_path, capsys, files):
    out = tmp_path / "report"
    code, stdout, err = run_with_baselines(
        capsys,
        files,
        out,
        *["--video-list", files["list"], "--images", files["images"], "--segments", "3"],
        *TOY,
    )
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == [
        "grid.png",
        "psnr_per_frame.png",
        "results.json",
        "results.md",
    ]
    assert f"wrote {out / 'results.json'}" in stdout

    data = json.loads((out / "results.json").read_text())
    p = data["protocol"]
    assert (p["frames"], p["height"], p["width"], p["stride"], p["segments"]) == (5, 32, 32, 1, 3)
    assert p["uniform_sampling_keyframes"] == [0, 4] and p["posterior"] == "mean"
    assert p["models"]["m"].startswith(str(files["inflated"])) and "sha256" in p["models"]["m"]
    assert "sha256" in p["image_vae"] and p["lpips"] is None
    clips = data["videos"]["clips"]
    # 12 frames hold two complete 5-frame segments; the third would run past the end
    assert [c["source_frames"] for c in clips] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert clips[0]["source"] == str(files["clip"]) and clips[0]["fps"] == pytest.approx(24)
    names = ["m", "image-vae-per-frame", "uniform-repeat", "uniform-linear"]
    assert list(clips[0]["methods"]) == names
    frames = clips[0]["methods"]["m"]["per_frame"]
    assert [len(frames[k]) for k in ("psnr", "ssim")] == [5, 5] and frames["lpips"] is None
    assert clips[0]["methods"]["m"]["clip"]["psnr"] == pytest.approx(sum(frames["psnr"]) / 5)
    summary = data["videos"]["summary"]
    assert {n: summary["methods"][n]["latent_frames"] for n in names} == {
        "m": 2,
        "image-vae-per-frame": 5,
        "uniform-repeat": 2,
        "uniform-linear": 2,
    }
    assert len(summary["methods"]["m"]["psnr_per_frame"]) == 5
    compat = summary["compatibility"]["m"]
    assert set(compat) == {"first_frame_latent_error", "first", "slice", "mean"}
    assert compat["slice"]["image_vae_psnr"] - compat["slice"]["psnr"] == pytest.approx(
        compat["slice"]["psnr_gap"]
    )
    # the model is the inflated image VAE: image mode reproduces it
    images = data["images"]
    assert images["items"][0]["source"] == str(files["images"] / "still.png")
    assert images["summary"]["latent_error"]["m"] < 1e-4
    assert images["summary"]["methods"]["m"]["psnr"] == pytest.approx(
        images["summary"]["methods"]["image-vae"]["psnr"], abs=1e-3
    )

    table = (out / "results.md").read_text()
    assert "| `uniform-linear` | 2 |" in table and "| `m` | slice |" in table
    assert "Uniform sampling keeps clip frames [0, 4]" in table
    for png in ("grid.png", "psnr_per_frame.png"):
        with Image.open(out / png) as image:
            assert image.format == "PNG" and min(image.size) > 100


def test_evaluate_images_only_without_image_vae(tmp_path, capsys, files):
    out = tmp_path / "images_only"
    code, stdout, err = run(
        capsys,
        "evaluate",
        "--model",
        files["inflated"],
        "--images",
        files["images"],
        "--out",
        out,
        "--height",
        "32",
        "--width",
        "32",
    )
    assert code == 0, err
    data = json.loads((out / "results.json").read_text())
    assert data["videos"] is None
    assert list(data["images"]["summary"]["methods"]) == ["inflated"]
    assert data["images"]["summary"]["latent_error"] == {}
    assert sorted(p.name for p in out.iterdir()) == ["grid.png", "results.json", "results.md"]


def test_lpips_weights_add_the_lpips_metric(tmp_path, capsys, files):
    lpips = tmp_path / "lpips.safetensors"
    torch.manual_seed(0)
    save_lpips_weights(LPIPS().state_dict(), lpips)
    out = tmp_path / "with_lpips"
    code, _, err = run_with_baselines(
        capsys,
        files,
        out,
        *["--images", files["images"], "--lpips-weights", lpips, "--height", "32", "--width", "32"],
    )
    assert code == 0, err
    data = json.loads((out / "results.json").read_text())
    assert (
        data["protocol"]["lpips"].startswith(str(lpips)) and "sha256" in data["protocol"]["lpips"]
    )
    methods = data["images"]["summary"]["methods"]
    assert methods["m"]["lpips"] == pytest.approx(methods["image-vae"]["lpips"], abs=1e-4)
    assert "| `m` |" in (out / "results.md").read_text()


def test_i3d_weights_add_fvd_over_the_clips(tmp_path, capsys, files):
    """A small random I3D of the real interface: FVD per method in the JSON and the table."""
    i3d = tmp_path / "i3d.safetensors"
    save_i3d(small_i3d(), i3d)
    out = tmp_path / "with_fvd"
    code, _, err = run_with_baselines(
        capsys,
        files,
        out,
        *["--videos", files["clip"], "--segments", "2", "--i3d-weights", i3d],
        *["--grid-frames", "1", "3"],
        *TOY,
    )
    assert code == 0, err
    data = json.loads((out / "results.json").read_text())
    protocol = data["protocol"]
    assert protocol["i3d"].startswith(str(i3d)) and "sha256" in protocol["i3d"]
    assert "I3D logits" in protocol["fvd_features"]
    methods = data["videos"]["summary"]["methods"]
    assert all(m["fvd"] >= 0 for m in methods.values())
    # uniform-repeat holds frames still: further from the moving clip than the video VAE
    assert methods["m"]["fvd"] < methods["uniform-repeat"]["fvd"]
    table = (out / "results.md").read_text()
    assert "| FVD |" in table and "I3D weights (FVD):" in table

    # one clip has no covariance: FVD is n/a, not an error
    code, _, err = run(
        capsys,
        "evaluate",
        "--model",
        f"m={files['inflated']}",
        "--videos",
        files["clip"],
        "--i3d-weights",
        i3d,
        "--out",
        tmp_path / "one_clip",
        *TOY,
    )
    assert code == 0, err
    data = json.loads((tmp_path / "one_clip" / "results.json").read_text())
    assert data["videos"]["summary"]["methods"]["m"]["fvd"] is None


def test_reserved_names_cover_every_name_the_report_uses():
    from cvvae.cli.evaluate import RESERVED_NAMES
    from cvvae.evaluation.baselines import BASELINE_NAMES
    from cvvae.evaluation.runner import IMAGE_VAE, INPUT

    assert set(RESERVED_NAMES) == {*BASELINE_NAMES, IMAGE_VAE, INPUT}


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--frames", "8"], "frames must be 1 + 4k"),
        (["--baselines"], "--baselines needs --image-vae"),
        (["--start", "100"], "beyond the end"),
        (["--frames", "13", "--height", "32", "--width", "32"], "fewer than 13 frames"),
        (["--grid-frames", "0", "5", "--frames", "5"], "--grid-frames 5"),
        (["--model", "image-vae-per-frame=x"], "reserved"),
        (["--model", "input=x"], "reserved"),
        (["--i3d-weights", "missing.safetensors"], "I3D weights not found"),
    ],
)
def test_user_errors_are_one_line_and_write_nothing(tmp_path, capsys, files, extra, message):
    out = tmp_path / "out"
    argv = ["evaluate", "--videos", files["clip"], "--out", out, *extra]
    if "--model" not in extra:
        argv += ["--model", files["inflated"]]
    code, stdout, err = run(capsys, *argv)
    assert code == 2
    assert err.startswith("cvvae: error:") and message in err and err.count("\n") == 1
    assert not out.exists()


def test_image_vae_with_other_latent_channels_is_refused(tmp_path, capsys, files):
    tiny_image_vae(latent_channels=8).save_pretrained(tmp_path / "vae8")
    code, _, err = run(
        capsys,
        "evaluate",
        "--model",
        files["inflated"],
        "--image-vae",
        tmp_path / "vae8",
        "--videos",
        files["clip"],
        "--out",
        tmp_path / "out",
        *TOY,
    )
    assert code == 2 and "does not fit the image VAE" in err and "channels differ" in err
    assert not (tmp_path / "out").exists()


def test_nothing_to_evaluate(tmp_path, capsys, files):
    code, _, err = run(capsys, "evaluate", "--model", files["inflated"], "--out", tmp_path / "o")
    assert code == 2 and "nothing to evaluate" in err

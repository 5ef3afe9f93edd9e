"""`cvvae inflate` from the command line."""

from builders import tiny_image_vae

from cvvae import CVVAE
from cvvae.cli import main


def test_inflate_writes_a_loadable_model(tmp_path):
    tiny_image_vae().save_pretrained(tmp_path / "image_vae")
    assert (
        main(["inflate", "--image-vae", str(tmp_path / "image_vae"), str(tmp_path / "video_vae")])
        == 0
    )
    model = CVVAE.from_pretrained(tmp_path / "video_vae")
    assert model.config.latent_channels == 4
    assert model.config.use_post_quant_conv


def test_inflate_errors_exit_2_and_write_nothing(tmp_path, capsys):
    out = tmp_path / "video_vae"
    assert main(["inflate", "--image-vae", str(tmp_path / "missing"), str(out)]) == 2
    assert "missing" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{}")
    assert main(["inflate", "--image-vae", str(tmp_path / "bad"), str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cvvae: error:") and "bad" in err and "\n" not in err
    assert not out.exists() and not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_memory_budget_runs_in_chunks_and_says_so(tmp_path, capsys, caplog, video_paths):
    out = tmp_path / "recon.mp4"
    argv = [
        "reconstruct",
        str(video_paths[0]),
        str(out),
        "--frames",
        "13",
        "--height",
        "32",
        "--width",
        "48",
        "--memory-budget",
        "0.001",
    ]
    with caplog.at_level("INFO", logger="cvvae"):
        assert main(argv) == 0
    lines = [r.getMessage() for r in caplog.records if "memory budget" in r.getMessage()]
    assert [line.split("-> ")[1].split(":")[0] for line in lines] == ["encode", "decode"]
    assert "PSNR" in capsys.readouterr().out and out.is_file()
    assert main(argv[:-2] + ["--memory-budget", "0"]) == 2
    assert "must be > 0" in capsys.readouterr().err

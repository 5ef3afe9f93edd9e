"""What the command line shows while it works: help without torch, defaults that say something,
frame bars that move inside encode and decode (chunks and tiles), logs routed around bars."""

import io
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tqdm import tqdm

from cvvae import CVVAE, InferencePlan
from cvvae.cli import build_parser, main, progress
from cvvae.cli.codec import Clip, decode_clip, encode_clip

SRC = Path(__file__).resolve().parents[1] / "src"


def test_help_loads_neither_torch_nor_diffusers():
    code = (
        "import sys\n"
        "from cvvae.cli import build_parser\n"
        "p = build_parser(); p.format_help()\n"
        "print(sorted(m for m in ('torch', 'diffusers', 'av', 'matplotlib') if m in sys.modules))\n"
    )
    env = {"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_help_names_only_meaningful_defaults():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, command in sub.choices.items():
        text = command.format_help()
        assert "(default: None)" not in text and "(default: False)" not in text, name
    evaluate = sub.choices["evaluate"].format_help()
    assert "(default: 17)" in evaluate  # --frames keeps its default
    words = " ".join(sub.choices["reconstruct"].format_help().split())
    assert "a budget for the model's encode and decode calls" in words
    assert "Not a limit for the whole command" in words


def test_info_defaults_to_the_bundled_model(capsys):
    from cvvae.cli.common import default_model_path

    bundled = default_model_path()
    if bundled is None:
        pytest.skip("no bundled model installed (src/cvvae/assets/model)")
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"model: {bundled}\n") and "latent channels:" in out


@pytest.fixture
def bars(monkeypatch) -> list[tqdm]:
    """Every bar the progress module opens, enabled and writing to a buffer."""
    opened = []

    def bar(**options):
        options = {k: v for k, v in options.items() if k not in ("disable", "file")}
        opened.append(tqdm(disable=False, file=io.StringIO(), **options))
        return opened[-1]

    monkeypatch.setattr(progress, "_bar", bar)
    return opened


def tiny_model() -> CVVAE:
    torch.manual_seed(0)
    return CVVAE(block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=4).eval()


@pytest.mark.parametrize(
    "tiling",
    [
        None,  # one full pass: the bar fills once
        InferencePlan(encode_frames=4, decode_latents=1),  # time chunks
        InferencePlan(encode_frames=4, decode_latents=1, tile_height=64, tile_width=64),  # 4 tiles
    ],
)
def test_frame_bars_reach_the_clip_length_in_steps(bars, tiling):
    model = tiny_model()
    if tiling is not None:
        model.enable_tiling(plan=tiling)
    clip = Clip(torch.rand(3, 9, 128, 128) * 2 - 1, rate=24)
    positions = []

    def track(bar):
        original = bar.update

        def update(n=1):
            original(n)
            positions.append(bar.n)

        bar.update = update

    with progress.stages(2) as stage:
        with stage("encoding", progress.frame_counter(model, "encode", 9)):
            track(bars[-1])
            z = encode_clip(model, clip, torch.device("cpu"), sample=False, seed=0)
        encoded = positions[:]
        positions.clear()
        with stage("decoding", progress.frame_counter(model, "decode", 9)):
            track(bars[-1])
            decode_clip(model, z, 9, 128, 128, "cpu")
    assert encoded[-1] == pytest.approx(9) and positions[-1] == pytest.approx(9)
    assert all(b >= a - 1e-9 for a, b in zip(encoded, encoded[1:], strict=False))
    assert all(b >= a - 1e-9 for a, b in zip(positions, positions[1:], strict=False))
    if tiling is None:
        assert len(encoded) == 1 and len(positions) == 1
    else:
        assert encoded == [5, 9]  # chunks of 1 + 4 and 4 frames: latent frames 2, then 1
        assert len(set(positions)) >= 3
    if tiling is not None and tiling.tile_height:
        # 3 decoder chunks of 4 tiles: the bar moves within each chunk
        assert len(set(positions) - {0.0}) > 6
    assert not model.decoder.conv_out._forward_hooks  # hooks are removed afterwards


def test_log_lines_are_routed_around_the_bars(bars):
    logger = logging.getLogger("cvvae")
    before = list(logger.handlers)
    with progress.stages(1) as stage, stage("working"):
        assert any("Tqdm" in type(h).__name__ for h in logger.handlers)
    assert logger.handlers == before
    assert bars[0].n == 1


# ---------------------------------------------------------------------------- training presets
def test_training_presets_are_addressable_by_name_and_by_path(tmp_path, monkeypatch):
    from cvvae.cli.train import preset_names, presets_folder, resolve_config
    from cvvae.training import load_config

    assert preset_names() == ["sd21", "sd3", "tiny"]
    assert resolve_config("tiny") == presets_folder() / "tiny.yaml"
    assert load_config(resolve_config("tiny"), ["max_steps=3"]).max_steps == 3
    # paths stay paths, also when missing (the loader names the file) or named like a preset
    assert resolve_config("configs/tiny.yaml") == Path("configs/tiny.yaml")
    assert resolve_config("mine.yaml") == Path("mine.yaml")
    monkeypatch.chdir(tmp_path)
    Path("tiny").write_text("max_steps: 2\n")
    assert resolve_config("tiny") == Path("tiny")
    # the repository's configs/ folder is the packaged one
    repo_configs = SRC.parent / "configs"
    assert repo_configs.resolve() == presets_folder().resolve()


def test_unknown_preset_is_one_line_naming_the_presets(capsys):
    assert main(["train", "tinyy"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no preset named 'tinyy'" in err and "tiny" in err


def test_presets_are_package_data():
    text = (SRC.parent / "pyproject.toml").read_text()
    assert '"configs/*.yaml"' in text


def test_info_without_model_or_bundled_model_is_one_line(capsys, monkeypatch):
    from cvvae.cli import codec

    monkeypatch.setattr(codec, "default_model_path", lambda: None)
    assert main(["info"]) == 2
    assert (
        capsys.readouterr().err == "cvvae: error: no MODEL given and no bundled model installed\n"
    )

"""The reproduction script end to end at toy size (--quick) on two synthetic clips."""

import json
import math
from fractions import Fraction

import pytest
import torch
from builders import load_benchmark

from cvvae.io import write_video


def _moving_clip(frames: int, phase: float) -> torch.Tensor:
    """A (3, T, 72, 128) clip of drifting colour bands in [-1, 1]."""
    t = torch.arange(frames).view(frames, 1, 1)
    y = torch.linspace(0, 1, 72).view(1, 72, 1)
    x = torch.linspace(0, 1, 128).view(1, 1, 128)
    bands = [torch.sin(2 * math.pi * (3 * x + 2 * y * k + 0.05 * t) + phase) for k in range(3)]
    return torch.stack(bands) * 0.8


@pytest.mark.slow  # ~25 s alone, over a minute on the shared 2-core machine
def test_quick_reproduction_writes_sane_outputs(tmp_path):
    videos = []
    for i, frames in enumerate((60, 64)):
        path = tmp_path / f"clip{i}.mp4"
        write_video(path, _moving_clip(frames, phase=i), Fraction(30))
        videos.append(path)
    out = tmp_path / "out"
    threads = torch.get_num_threads()
    try:
        code = load_benchmark("reproduce").main(
            ["--quick", "--out", str(out), "--videos", *map(str, videos)]
        )
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    data = json.loads((out / "reproduction.json").read_text())
    assert (out / "reproduction.png").stat().st_size > 1000
    report = (out / "reproduction.md").read_text()
    assert "| dec-random |" in report and "## The paper's claims at this scale" in report
    # 70% / 30% split, held-out segments only from the held-out frames
    assert data["clips"][0]["train_frames"] == [0, 41]
    assert data["clips"][0]["held_out_frames"] == [42, 59]
    for seg in data["eval"]["segments"]:
        clip = next(c for c in data["clips"] if c["source"] == seg["source"])
        assert (
            clip["held_out_frames"][0]
            <= seg["frames"][0]
            <= seg["frames"][1]
            <= clip["held_out_frames"][1]
        )
    methods = data["summary"]["methods"]
    expected = {
        "image-vae-per-frame",
        "uniform-repeat",
        "uniform-linear",
        "noreg-random-init",
        "dec-random",
    }
    assert expected <= set(methods)
    assert all(math.isfinite(m["psnr"]) and 0 < m["psnr"] < 100 for m in methods.values())
    assert methods["dec-random"]["latent_frames"] == methods["uniform-linear"]["latent_frames"] == 5
    assert data["best"] in data["summary"]["compatibility"]
    assert set(data["timings_s"]) >= {"data", "image-vae", "cv-vae", "evaluate", "total"}
    assert (out / "best" / "config.json").is_file()

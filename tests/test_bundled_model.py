"""The bundled model's recipe (benchmarks/bundled_model.py) on a small synthetic data folder:
the held-out split, held-out segments, and the image VAE loop's exact resume."""

import json
import math
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import pytest
import torch
import yaml
from builders import load_benchmark

from cvvae.io import write_image, write_video
from cvvae.training import load_config


def _clip(frames: int, phase: float) -> torch.Tensor:
    """A (3, T, 48, 64) clip of drifting colour bands in [-1, 1]."""
    t = torch.arange(frames).view(frames, 1, 1)
    y = torch.linspace(0, 1, 48).view(1, 48, 1)
    x = torch.linspace(0, 1, 64).view(1, 1, 64)
    bands = [torch.sin(2 * math.pi * (2 * x + y * k + 0.05 * t) + phase) for k in range(3)]
    return torch.stack(bands) * 0.8


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    """The script as a module, pointed at a shared folder of 10 photos and two clips."""
    shared = tmp_path_factory.mktemp("shared")
    (shared / "data" / "images").mkdir(parents=True)
    (shared / "data" / "videos").mkdir()
    for i in range(10):
        write_image(shared / "data" / "images" / f"photo{i}.jpg", _clip(1, i)[:, 0])
    write_video(shared / "data" / "videos" / "moving.mp4", _clip(40, 0.0), Fraction(10))
    write_video(shared / "data" / "videos" / "still.mp4", _clip(20, 1.0), Fraction(10))
    module = load_benchmark("bundled_model")
    module.SHARED = shared
    module.MOVING_CLIPS = {"moving.mp4": 2}
    module.PIECE_FRAMES = 24
    return module


def test_split_holds_out_every_fifth_photo_and_each_clips_tail(recipe):
    info = recipe.split(recipe.SHARED)
    assert info["held_out_photos"] == ["photo2.jpg", "photo7.jpg"]
    assert not set(info["held_out_photos"]) & set(info["train_photos"])
    assert len(info["train_photos"]) == 8
    # 70% cut, a gap of GAP frames before the held-out tail
    assert info["clips"]["moving.mp4"] == {"frames": 40, "train": [0, 20], "held_out": [28, 40]}
    assert info["clips"]["still.mp4"] == {"frames": 20, "train": [0, 6], "held_out": [14, 20]}


def test_held_out_segments_lie_inside_the_held_out_frames(recipe):
    info = {"clips": {"a": {"held_out": [100, 200]}}}
    for stride in (1, 2, 4):
        segments = recipe.held_out_segments(info, ["a"], stride)
        assert segments, stride
        last_end = 0
        for _, first in segments:
            end = first + stride * (recipe.EVAL_FRAMES - 1)
            assert 100 <= first and end < 200 and first > last_end - 1
            last_end = end
    # one more segment would not fit
    _, first = recipe.held_out_segments(info, ["a"], 4)[-1]
    assert first + 4 * recipe.EVAL_FRAMES + 4 * (recipe.EVAL_FRAMES - 1) >= 200


def test_prepare_data_and_image_vae_resume_exactly(recipe, tmp_path):
    out = tmp_path / "run"
    recipe.prepare_data(out)
    data = out / "data"
    rows = (data / "train_videos.csv").read_text().split()
    assert rows[0] == "path" and len(rows) > 1
    assert all(r.startswith("videos/moving.mp4_part") for r in rows[1:])  # moving clips only
    # the other list adds each piece of the still clip once
    every = (data / "train_videos_all.csv").read_text().split()
    still = [r for r in every if r.startswith("videos/still.mp4_part")]
    assert still and len(set(still)) == len(still)
    assert sorted(every) == sorted(rows + still)
    assert (
        sorted(p.name for p in (data / "photos").iterdir())
        == json.loads((data / "split.json").read_text())["train_photos"]
    )
    settings = recipe.ImageVAESettings(
        channels=(8, 8, 8, 8),
        norm_groups=4,
        steps=4,
        batch=2,
        crop=32,
        warmup=1,
        scale_range=(32.0, 64.0),
        checkpoint_every=2,
    )
    # interrupted after 2 steps (a checkpoint), then resumed to 4 ...
    assert recipe.train_image_vae(out, settings, stop_after=2) is None
    recipe.train_image_vae(out, settings)
    resumed = torch.load(out / "image_vae_ckpt" / "state.pt", weights_only=True)["vae"]
    # ... equals 4 steps in one go
    other = tmp_path / "other"
    other.mkdir()
    (other / "data").symlink_to(data)
    recipe.train_image_vae(other, settings)
    straight = torch.load(other / "image_vae_ckpt" / "state.pt", weights_only=True)["vae"]
    for name, value in straight.items():
        assert torch.equal(value, resumed[name]), name
    assert (out / "image_vae" / "config.json").is_file()
    # a fine-tuning phase starts from that model, turns hues, keeps its latent scale
    tuned = replace(settings, init_from="image_vae", hue_rotation=1.0, seed=1)
    turned = recipe.CropSampler(data, tuned).batch(0)
    assert not torch.equal(
        turned, recipe.CropSampler(data, replace(tuned, hue_rotation=0.0)).batch(0)
    )
    recipe.train_image_vae(out, tuned, name="image_vae_colour")
    start, end = (
        json.loads((out / n / "config.json").read_text()) for n in ("image_vae", "image_vae_colour")
    )
    assert end["scaling_factor"] == start["scaling_factor"]
    start_weights = torch.load(out / "image_vae_ckpt" / "state.pt", weights_only=True)["vae"]
    tuned_weights = torch.load(out / "image_vae_colour_ckpt" / "state.pt", weights_only=True)["vae"]
    assert all(torch.isfinite(v).all() for v in tuned_weights.values())
    assert any(not torch.equal(v, tuned_weights[k]) for k, v in start_weights.items())


def test_ablation_table_pairs_segments(recipe):
    """Each variant's difference to the recipe is the mean of per-segment differences, with the
    standard error of those differences as its noise."""
    gaps = {m: {"psnr_gap": 0.5} for m in ("slice", "mean", "first")}
    names = [*recipe.ABLATIONS, recipe.SEED_VARIANT[0]]
    compat = {name: gaps | {"first_frame_latent_error": 0.25} for name in names}
    per_segment = {name: [20.0, 22.0, 24.0] for name in names}
    per_segment["no-reg"] = [21.0, 22.0, 26.0]  # differences 1, 0, 2: mean 1, s.e. 1/sqrt(3)
    table = recipe.ablation_table(
        {"per_segment_psnr": per_segment, "summary": {"compatibility": compat}}
    )
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines()[2:]}
    assert set(rows) == set(names)
    assert "| 23.00 | +1.00 +- 0.58 |" in rows["no-reg"]
    assert "| 22.00 | +0.00 +- 0.00 |" in rows["decoder-random"]
    assert "0.50 / 0.50 / 0.50 | 0.250 |" in rows["no-reg"]


def test_bundle_writes_the_pair_in_float16_and_replaces_the_old(recipe, tmp_path):
    """The bundled pair is stored in float16, loads as float32 equal to the trained weights up to
    float16 rounding, carries every phase's config and replaces what the folder held."""
    from diffusers import AutoencoderKL
    from safetensors.torch import load_file

    from cvvae import CVVAE
    from cvvae.models.inflation import inflate_from_image_vae

    out, target = tmp_path / "run", tmp_path / "assets"
    image_vae = recipe.make_image_vae(recipe.ImageVAESettings(channels=(8, 8, 8, 8), norm_groups=4))
    image_vae.save_pretrained(out / recipe.FINAL_IMAGE_VAE)
    model = inflate_from_image_vae(image_vae)
    for phase in recipe.CVVAE_PHASES:
        model.save_pretrained(out / phase / "model")
        (out / phase / "model" / "train_config.yaml").write_text(f"phase: {phase}\n")
    (target / "model").mkdir(parents=True)
    (target / "model" / "stale.txt").write_text("old")
    recipe.bundle(out, target)
    assert sorted(p.name for p in target.iterdir()) == ["image_vae", "model"]
    assert not (target / "model" / "stale.txt").exists()
    *earlier, last = recipe.CVVAE_PHASES
    assert (target / "model" / "train_config.yaml").read_text() == f"phase: {last}\n"
    for number, phase in enumerate(earlier, start=1):
        config = target / "model" / f"train_config_phase{number}.yaml"
        assert config.read_text() == f"phase: {phase}\n"
    for folder in ("image_vae", "model"):
        weights = load_file(target / folder / "diffusion_pytorch_model.safetensors")
        assert {v.dtype for v in weights.values()} == {torch.float16}
        assert "_name_or_path" not in json.loads((target / folder / "config.json").read_text())
    loaded = CVVAE.from_pretrained(target / "model")
    assert next(loaded.parameters()).dtype == torch.float32
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value.half().float()), name
    reloaded = AutoencoderKL.from_pretrained(target / "image_vae")
    for name, value in image_vae.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name].float(), value.half().float()), name


def test_each_training_phase_starts_from_the_model_of_the_phase_before(recipe, tmp_path):
    """The first phase inflates the image VAE; each later one loads the previous phase's model,
    writes its own folder and keeps the recipe's decoder regularization, with the psi, its weight
    and the video list its row names (the paper's random, weight 1 and the moving clips unless it
    says otherwise), in a config the trainer accepts."""
    names = list(recipe.CVVAE_PHASES)
    first = recipe.phase_config(tmp_path, names[0])
    assert "init_from" not in first["model"]
    assert first == recipe.cvvae_config(tmp_path, recipe.CVVAE_PHASES[names[0]].steps)
    for before, name in zip(names[:-1], names[1:], strict=True):
        config, phase = recipe.phase_config(tmp_path, name, steps=100), recipe.CVVAE_PHASES[name]
        assert config["model"]["init_from"] == str(tmp_path / before / "model")
        assert config["output_dir"] == str(tmp_path / name)
        assert config["max_steps"] == 100 and config["loss"]["gan_start"] == 84
        assert config["loss"]["psi"] == phase.psi
        assert config["loss"]["psi_slice_offset"] == phase.psi_slice_offset
        assert config["loss"]["psi_slice_share"] == phase.psi_slice_share
        assert config["loss"]["decoder_reg_weight"] == phase.decoder_reg_weight
        assert config["model"].get("freeze_encoder", False) == phase.freeze_encoder
        assert phase.decoder_reg_weight > 0 or phase.freeze_encoder  # latents held either way
        assert phase.videos in recipe.VIDEO_LISTS
        assert config["data"]["videos"] == [str(tmp_path / "data" / phase.videos)]
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        assert load_config(path).loss.psi == phase.psi  # passes the trainer's validation


def test_image_vae_phases_chain_and_the_last_cvvae_phase_learns_the_bundled_image_vae(recipe):
    """Each image VAE phase after the first fine-tunes the one before; every CV-VAE phase names an
    image VAE phase, and the last one the final image VAE, the one bundled beside it."""
    names = list(recipe.IMAGE_VAE_PHASES)
    assert recipe.IMAGE_VAE_PHASES[names[0]].init_from is None
    for before, name in zip(names[:-1], names[1:], strict=True):
        assert recipe.IMAGE_VAE_PHASES[name].init_from == before
    out = Path("/runs")
    for name, phase in recipe.CVVAE_PHASES.items():
        config = recipe.phase_config(out, name)
        assert config["model"]["image_vae"] == str(out / phase.image_vae)
        assert phase.image_vae in names
        assert config["data"].get("hue_rotation", 0.0) == phase.hue_rotation
    last = recipe.phase_config(out, recipe.FINAL_PHASE)
    assert last["model"]["image_vae"] == str(out / recipe.FINAL_IMAGE_VAE)


def test_psi_spread_is_infinite_on_a_still_clip_and_falls_with_motion(recipe):
    """The slice and mean targets of a latent frame coincide on a still clip, and drift apart
    as the clip moves faster."""
    still = _clip(1, 0.0).expand(3, 17, 48, 64)
    slow = _clip(17, 0.0)
    fast = torch.stack([_clip(1, 0.4 * i)[:, 0] for i in range(17)], dim=1)
    assert recipe.psi_spread_psnr(still) == math.inf
    assert math.isfinite(recipe.psi_spread_psnr(slow))
    assert recipe.psi_spread_psnr(fast) < recipe.psi_spread_psnr(slow)


def test_midpoint_of_a_still_clip_is_the_image_vaes_own_round_trip(recipe):
    """On a still clip the frame halfway between the slice and mean targets is the target itself,
    so its image-VAE round trip scores what the image VAE's own does (a gap of 0); on a moving
    clip the two targets differ, and so do the scores against them."""
    from cvvae.evaluation.codecs import image_reconstruct

    vae = recipe.make_image_vae(recipe.ImageVAESettings(channels=(8, 8, 8, 8), norm_groups=4))
    # values on a 1/128 grid: the mean of four equal frames is exactly the frame
    still = ((_clip(1, 0.0) * 128).round() / 128).expand(3, 17, 48, 64)
    own = float(recipe.psnr(still[:, :5], image_reconstruct(vae, still[:, :5])).mean())
    assert recipe.midpoint_psnr(still, vae) == {"slice": own, "mean": own}
    moving = torch.stack([_clip(1, 0.4 * i)[:, 0] for i in range(17)], dim=1)
    scores = recipe.midpoint_psnr(moving, vae)
    assert scores["slice"] != scores["mean"]

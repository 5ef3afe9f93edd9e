"""Training config: YAML + overrides, validation errors, save/load round trip, presets."""

import re
from pathlib import Path

import pytest

from cvvae.errors import UserInputError
from cvvae.training.config import TrainConfig, load_config, save_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_overrides_apply_with_yaml_types():
    c = load_config(
        CONFIGS / "tiny.yaml",
        [
            "data.batch_size=3",
            "loss.psi=mean",
            "optim.lr=2e-4",
            "data.video_shapes=[[17, 64]]",
            "model.gradient_checkpointing=true",
        ],
    )
    assert c.data.batch_size == 3 and c.loss.psi == "mean" and c.optim.lr == 2e-4
    assert c.data.video_shapes == [[17, 64]] and c.model.gradient_checkpointing is True


def test_int_widens_to_float():
    c = load_config(CONFIGS / "tiny.yaml", ["optim.lr=1"])
    assert isinstance(c.optim.lr, float)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.batchsize=2", "unknown config key: data.batchsize"),
        ("data.batch_size=two", "data.batch_size: expected int"),
        ("loss.psi=middle", "loss.psi must be one of"),
        ("data.video_shapes=[[8, 32]]", "frames = 1 + 4k"),
        ("data.video_shapes=[[9, 30]]", "multiple of 8"),
        ("data.image_ratio=0.5", "needs data.images"),
        ("data.frame_stride=[3, 1]", "frame_stride"),
        ("mixed_precision=fp8", "mixed_precision"),
        ("model.image_vae=/some/vae", "exactly one of image_vae"),
        ("batch_size", "key=value"),
    ],
)
def test_invalid_configs_name_the_key(override, message):
    with pytest.raises(UserInputError, match=re.escape(message)):
        load_config(CONFIGS / "tiny.yaml", [override])


def test_missing_file_is_user_error(tmp_path):
    with pytest.raises(UserInputError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_save_load_round_trip(tmp_path):
    c = load_config(CONFIGS / "tiny.yaml", ["seed=7", "loss.encoder_reg_weight=0.5"])
    save_config(c, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == c


@pytest.mark.parametrize("name", ["tiny", "sd21", "sd3"])
def test_presets_validate(name):
    assert isinstance(load_config(CONFIGS / f"{name}.yaml"), TrainConfig)

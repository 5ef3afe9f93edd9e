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
        ("loss.psi_slice_share=1.5", "loss.psi_slice_share must be in [0, 1]"),
        ("model.freeze_encoder=true", "model.freeze_encoder needs model.init_from"),
        ("data.video_shapes=[[8, 32]]", "frames = 1 + 4k"),
        ("data.video_shapes=[[9, 30]]", "multiple of 8"),
        ("data.image_ratio=0.5", "needs data.images"),
        ("data.frame_stride=[3, 1]", "frame_stride"),
        ("data.hue_rotation=1.5", "data.hue_rotation must be in [0, 1]"),
        ("mixed_precision=fp8", "mixed_precision"),
        ("model.image_vae=/some/vae", "exactly one of image_vae"),
        ("batch_size", "key=value"),
        ("optim.lr=.inf", "optim.lr must be a finite number, got inf"),
        ("optim.disc_lr=.nan", "optim.disc_lr must be a finite number, got nan"),
        ("loss.kl_weight=-.inf", "loss.kl_weight must be a finite number"),
        ("data.resize_range=[1.0, .inf]", "data.resize_range must be a finite number"),
        ("optim.betas=[2, 3]", "optim.betas must be two values in [0, 1), got [2.0, 3.0]"),
        ("optim.eps=-1", "optim.eps must be > 0, got -1.0"),
        ("optim.weight_decay=-1", "optim.weight_decay must be >= 0, got -1.0"),
        ("seed=-1", "seed must be in [0, 4294967295], got -1"),
        (f"seed={2**70}", f"got {2**70}"),
        ("loss.gan_start=-5", "loss.gan_start must be >= 0"),
        ("log_with=tensorbored", "log_with must be one of"),
        ("data.batch_size=[", "the value is not valid YAML (line 1, column 2)"),
    ],
)
def test_invalid_configs_name_the_key(override, message):
    with pytest.raises(UserInputError, match=re.escape(message)):
        load_config(CONFIGS / "tiny.yaml", [override])


def test_freeze_encoder_refuses_a_decoder_regularization_it_cannot_train():
    with pytest.raises(UserInputError, match=re.escape("set loss.decoder_reg_weight=0")):
        load_config(CONFIGS / "tiny.yaml", ["model.freeze_encoder=true", "model.init_from=/m"])
    config = load_config(
        CONFIGS / "tiny.yaml",
        ["model.freeze_encoder=true", "model.init_from=/m", "loss.decoder_reg_weight=0"],
    )
    assert config.model.freeze_encoder


def test_errors_name_the_file():
    with pytest.raises(
        UserInputError, match=re.escape(f"optim.lr must be > 0, got 0.0: {CONFIGS}")
    ):
        load_config(CONFIGS / "tiny.yaml", ["optim.lr=0"])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"seed: [1,\n", "config is not valid YAML (line 2, column 1)"),
        (b"seed: 1\nname: caf\xe9\n", "config is not UTF-8 text (byte 17)"),
        (b"- 1\n- 2\n", "config must be a YAML mapping"),
        (b"optim: 3\n", "config section optim. must be a mapping"),
    ],
)
def test_unreadable_config_files_are_one_line(tmp_path, content, message):
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    with pytest.raises(UserInputError, match=re.escape(message)) as error:
        load_config(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


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

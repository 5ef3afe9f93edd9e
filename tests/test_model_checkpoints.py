"""Save/load round trips and strict loading errors."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from cvvae import CVVAE, UserInputError

TINY = dict(
    block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=4, latent_channels=4
)


def _plain(config):
    return json.loads(json.dumps({k: v for k, v in config.items() if not k.startswith("_")}))


@pytest.mark.parametrize("layout,padding", [("ldm", "zeros"), ("diffusers", "replicate")])
def test_save_load_round_trip_is_bit_identical(tmp_path, layout, padding):
    model = CVVAE(**TINY, state_dict_layout=layout, padding_mode=padding)
    model.save_pretrained(tmp_path / "m")
    loaded = CVVAE.from_pretrained(tmp_path / "m")
    assert _plain(loaded.config) == _plain(model.config)
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    x = torch.rand(1, 3, 5, 16, 24) * 2 - 1
    with torch.no_grad():
        assert torch.equal(model(x).sample, loaded(x).sample)


def test_half_precision_weights_load_as_float32_unless_asked(tmp_path):
    """As diffusers' AutoencoderKL: stored dtype is not the model's dtype (the bundled model
    ships float16 weights)."""
    model = CVVAE(**TINY)
    model.save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "diffusion_pytorch_model.safetensors"
    save_file({k: v.half() for k, v in load_file(str(weights)).items()}, str(weights))
    loaded = CVVAE.from_pretrained(tmp_path / "m")
    assert loaded.dtype == torch.float32
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, model.state_dict()[name].half().float()), name
    assert CVVAE.from_pretrained(tmp_path / "m", torch_dtype=torch.bfloat16).dtype == torch.bfloat16


def test_released_folder_resaves_and_reloads(tmp_path, reference_dir):
    model = CVVAE.from_pretrained(reference_dir / "cvvae_sd3_tiny")
    model.save_pretrained(tmp_path / "m")
    saved = load_file(tmp_path / "m" / "diffusion_pytorch_model.safetensors")
    released = load_file(reference_dir / "cvvae_sd3_tiny" / "diffusion_pytorch_model.safetensors")
    assert saved.keys() == released.keys()
    assert all(torch.equal(saved[k], released[k]) for k in saved)
    assert json.loads((tmp_path / "m" / "config.json").read_text())["_class_name"] == "CVVAE"


def _copy_with(tmp_path, reference_dir, edit):
    folder = tmp_path / "broken"
    shutil.copytree(reference_dir / "cvvae_sd21_tiny", folder)
    weights = folder / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    edit(tensors)
    save_file(tensors, weights)
    return folder


def test_removed_key_is_named(tmp_path, reference_dir):
    folder = _copy_with(tmp_path, reference_dir, lambda t: t.pop("decoder.mid.attn_1.q_t.bias"))
    with pytest.raises(UserInputError, match=r"missing keys \['decoder.mid.attn_1.q_t.bias'\]"):
        CVVAE.from_pretrained(folder)


def test_renamed_key_is_named(tmp_path, reference_dir):
    def rename(t):
        t["encoder.conv_in.wieght"] = t.pop("encoder.conv_in.weight")

    folder = _copy_with(tmp_path, reference_dir, rename)
    with pytest.raises(UserInputError) as error:
        CVVAE.from_pretrained(folder)
    assert "encoder.conv_in.weight" in str(error.value)
    assert "unexpected keys ['encoder.conv_in.wieght']" in str(error.value)
    assert str(folder) in str(error.value)


def test_misshaped_key_is_named(tmp_path, reference_dir):
    def reshape(t):
        t["decoder.conv_out.bias"] = torch.zeros(4)

    folder = _copy_with(tmp_path, reference_dir, reshape)
    with pytest.raises(
        UserInputError, match=r"decoder.conv_out.bias has shape \[4\], expected \[3\]"
    ):
        CVVAE.from_pretrained(folder)


def test_unreadable_folders(tmp_path):
    with pytest.raises(UserInputError, match="no such model folder"):
        CVVAE.from_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserInputError, match="no config.json"):
        CVVAE.from_pretrained(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    (bad / "diffusion_pytorch_model.safetensors").write_bytes(b"junk")
    with pytest.raises(UserInputError, match="unreadable model config"):
        CVVAE.from_pretrained(bad)
    (bad / "config.json").write_text(json.dumps({"_class_name": "CVVAE", **TINY}))
    with pytest.raises(UserInputError, match="unreadable model weights"):
        CVVAE.from_pretrained(bad)

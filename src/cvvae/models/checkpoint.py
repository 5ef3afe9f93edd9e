"""Checkpoint formats: released configs -> our config, and state-dict name layouts.

Our modules carry LDM-style names (``encoder.down.0.block.0.conv1``). A checkpoint is stored in
one of two layouts:

- ``"ldm"`` (released SD 2.1 flavour): our names; attention q/k/v/proj_out are 1x1 convs there.
- ``"diffusers"`` (released SD3 flavour): ``down_blocks.i.resnets.j``, ``mid_block.resnets.0``,
  ``attentions.0.to_q``, ``conv_shortcut`` (a 2D 1x1 conv), ``conv_norm_out``, and
  ``up_blocks`` numbered from the lowest resolution.

Loading is strict: missing, unexpected or mis-shaped keys raise an error naming them.
Configs are checked field by field (:func:`validate_model_config`, :func:`check_model_folder`)
before a model is built, so a bad value is one error naming the key, the value and the file.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from ..errors import UserInputError

LAYOUTS = ("ldm", "diffusers")

# Released-config values that our architecture implements; anything else is refused.
_SD21_REQUIRED = {
    "use_3d_conv": True,
    "half_3d": True,
    "causal_encoder": True,
    "causal_decoder": False,
    "double_z": True,
    "attn_resolutions": [],
    "time_n_compress": 4,
    "spatial_n_compress": 8,
}
_SD3_REQUIRED = {
    "half_3d": True,
    "causal_encoder": True,
    "causal_decoder": False,
    "double_z": True,
    "act_fn": "silu",
    "time_n_compress": 4,
    "spatial_n_compress": 8,
}
_SPATIAL_ATTENTION = ("vanilla", "vanilla-xformers")

# Latent normalisation of the SD3 image VAE, whose latent space the SD3 flavour shares.
SD3_SCALING_FACTOR = 1.5305
SD3_SHIFT_FACTOR = 0.0609


def _check_required(config: Mapping, required: Mapping, source: str) -> None:
    for key, value in required.items():
        if key in config and config[key] != value:
            raise UserInputError(
                f"unsupported {key}={config[key]!r} (expected {value!r}) in {source}"
            )


def _bad(key: str, value: object, expected: str, source: str) -> UserInputError:
    return UserInputError(f"config value {key}={value!r} is not {expected}: {source}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _positive_int(config: Mapping, key: str, source: str) -> None:
    if key in config and not (_is_int(config[key]) and config[key] >= 1):
        raise _bad(key, config[key], "a positive integer", source)


def validate_model_config(config: Mapping, source: str) -> None:
    """Check the fields of one of our model configs that are present (absent ones take the
    constructor's defaults). Raises :class:`UserInputError` naming the key, value and file."""
    for key in ("in_channels", "out_channels", "latent_channels", "layers_per_block"):
        _positive_int(config, key, source)
    _positive_int(config, "norm_num_groups", source)
    if "block_out_channels" in config:
        channels = config["block_out_channels"]
        if not (
            isinstance(channels, list | tuple)
            and len(channels) == 4
            and all(_is_int(c) and c >= 1 for c in channels)
        ):
            raise _bad("block_out_channels", channels, "4 positive integers", source)
        groups = config.get("norm_num_groups", 32)
        if any(c % groups for c in channels):
            raise UserInputError(
                f"config value block_out_channels={list(channels)} is not divisible by "
                f"norm_num_groups={groups}: {source}"
            )
    for key in ("norm_eps", "scaling_factor"):
        if key in config and not (_is_number(config[key]) and config[key] > 0):
            raise _bad(key, config[key], "a finite number > 0", source)
    if "dropout" in config and not (_is_number(config["dropout"]) and 0 <= config["dropout"] < 1):
        raise _bad("dropout", config["dropout"], "a number in [0, 1)", source)
    shift = config.get("shift_factor")
    if shift is not None and not _is_number(shift):
        raise _bad("shift_factor", shift, "a finite number or null", source)
    for key in ("mid_attention", "decoder_temporal_attention", "use_post_quant_conv"):
        if key in config and not isinstance(config[key], bool):
            raise _bad(key, config[key], "true or false", source)
    if config.get("padding_mode", "zeros") not in ("zeros", "replicate"):
        raise _bad("padding_mode", config["padding_mode"], "'zeros' or 'replicate'", source)
    if config.get("state_dict_layout", "ldm") not in LAYOUTS:
        raise _bad("state_dict_layout", config["state_dict_layout"], f"one of {LAYOUTS}", source)


def check_model_folder(folder: str | Path) -> None:
    """Check a model folder's ``config.json`` before building anything: a JSON object whose
    fields (released or ours) are valid. Raises :class:`UserInputError` naming the file."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise UserInputError(f"model folder has no config.json: {folder}")
    try:
        raw = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError) as error:
        raise UserInputError(f"unreadable model config ({error}): {path}") from None
    if not isinstance(raw, dict):
        raise UserInputError(f"model config must be a JSON object, got {raw!r:.40}: {path}")
    if raw.get("_class_name") in ("CVVAEModel", "CVVAESD3Model"):
        config_from_released(raw, str(path))
    else:
        validate_model_config(raw, str(path))


def config_from_released(config: Mapping, source: str) -> dict:
    """Translate a released ``config.json`` (``CVVAEModel`` / ``CVVAESD3Model``) to our config.

    Runtime settings of the released code (tile sizes, frame chunking) are not model config
    here and are dropped. Raises :class:`UserInputError` naming a bad field.
    """
    ours = _translate_released(config, source)
    validate_model_config(ours, source)
    return ours


def _translate_released(config: Mapping, source: str) -> dict:
    class_name = config.get("_class_name")
    if class_name == "CVVAEModel":
        return _translate_sd21(config, source)
    if class_name == "CVVAESD3Model":
        return _translate_sd3(config, source)
    raise UserInputError(f"unknown model class {class_name!r} in {source}")


def _translate_sd21(config: Mapping, source: str) -> dict:
    """Our config from a released ``CVVAEModel`` (SD 2.1 flavour) config."""
    _check_required(config, _SD21_REQUIRED, source)
    for key in ("ch", "z_channels", "num_res_blocks", "in_channels", "out_ch"):
        _positive_int(config, key, source)
    mult = config.get("ch_mult", [1, 2, 4, 4])
    if not (isinstance(mult, list) and all(_is_int(m) and m >= 1 for m in mult)):
        raise _bad("ch_mult", mult, "a list of positive integers", source)
    enc_attn = config.get("encoder_attn_type", "vanilla-xformers")
    dec_attn = config.get("decoder_attn_type", "spatial-temporal-xformer")
    if enc_attn not in (*_SPATIAL_ATTENTION, "none"):
        raise UserInputError(f"unsupported encoder_attn_type={enc_attn!r} in {source}")
    if dec_attn not in (*_SPATIAL_ATTENTION, "spatial-temporal-xformer", "none"):
        raise UserInputError(f"unsupported decoder_attn_type={dec_attn!r} in {source}")
    if (enc_attn == "none") != (dec_attn == "none"):
        raise UserInputError(
            f"encoder and decoder must both have or both lack attention in {source}"
        )
    ch = config.get("ch", 128)
    return {
        "in_channels": config.get("in_channels", 3),
        "out_channels": config.get("out_ch", 3),
        "latent_channels": config.get("z_channels", 4),
        "block_out_channels": [ch * m for m in config.get("ch_mult", [1, 2, 4, 4])],
        "layers_per_block": config.get("num_res_blocks", 2),
        "norm_num_groups": 32,
        "norm_eps": 1e-5,
        "padding_mode": "zeros",
        "mid_attention": enc_attn != "none",
        "decoder_temporal_attention": dec_attn == "spatial-temporal-xformer",
        "dropout": config.get("dropout", 0.0),
        "scaling_factor": config.get("scaling_factor", 0.18215),
        "shift_factor": None,
        "state_dict_layout": "ldm",
    }


def _translate_sd3(config: Mapping, source: str) -> dict:
    """Our config from a released ``CVVAESD3Model`` (SD3 flavour) config."""
    _check_required(config, _SD3_REQUIRED, source)
    channels = config.get("block_out_channels", [128, 256, 512, 512])
    if not isinstance(channels, list):
        raise _bad("block_out_channels", channels, "a list of 4 positive integers", source)
    for kind in ("down_block_types", "up_block_types"):
        names = config.get(kind, [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise _bad(kind, names, "a list of block names", source)
        names = set(names)
        if names - {"DownEncoderBlock3D", "UpDecoderBlock3D"}:
            raise UserInputError(f"unsupported {kind}={sorted(names)} in {source}")
    return {
        "in_channels": config.get("in_channels", 3),
        "out_channels": config.get("in_channels", 3),
        "latent_channels": config.get("out_channels", 16),
        "block_out_channels": list(config.get("block_out_channels", [128, 256, 512, 512])),
        "layers_per_block": config.get("layers_per_block", 2),
        "norm_num_groups": config.get("norm_num_groups", 32),
        "norm_eps": 1e-6,
        "padding_mode": "replicate",
        "mid_attention": config.get("mid_block_add_attention", True),
        "decoder_temporal_attention": False,
        "dropout": 0.0,
        "scaling_factor": SD3_SCALING_FACTOR,
        "shift_factor": SD3_SHIFT_FACTOR,
        "state_dict_layout": "diffusers",
    }


_ATTN_RENAMES = {
    "norm": "group_norm",
    "q": "to_q",
    "k": "to_k",
    "v": "to_v",
    "proj_out": "to_out.0",
}


def _diffusers_name(name: str, num_levels: int) -> str:
    def up_index(match: re.Match) -> str:
        return f"decoder.up_blocks.{num_levels - 1 - int(match.group(1))}."

    name = re.sub(r"^encoder\.down\.(\d+)\.block\.", r"encoder.down_blocks.\1.resnets.", name)
    name = re.sub(
        r"^encoder\.down\.(\d+)\.downsample\.", r"encoder.down_blocks.\1.downsamplers.0.", name
    )
    name = re.sub(r"^decoder\.up\.(\d+)\.block\.", lambda m: up_index(m) + "resnets.", name)
    name = re.sub(r"^decoder\.up\.(\d+)\.upsample\.", lambda m: up_index(m) + "upsamplers.0.", name)
    name = re.sub(r"\.mid\.block_1\.", ".mid_block.resnets.0.", name)
    name = re.sub(r"\.mid\.block_2\.", ".mid_block.resnets.1.", name)
    name = re.sub(
        r"\.mid\.attn_1\.(norm|q|k|v|proj_out)\.",
        lambda m: f".mid_block.attentions.0.{_ATTN_RENAMES[m.group(1)]}.",
        name,
    )
    name = re.sub(r"\.mid\.attn_1\.", ".mid_block.attentions.0.", name)
    name = name.replace(".nin_shortcut.", ".conv_shortcut.")
    return re.sub(r"^(encoder|decoder)\.norm_out\.", r"\1.conv_norm_out.", name)


def layout_name(name: str, layout: str, num_levels: int) -> str:
    """The checkpoint key of our parameter ``name`` in ``layout``."""
    return name if layout == "ldm" else _diffusers_name(name, num_levels)


def layout_shape(name: str, shape: torch.Size, layout: str) -> tuple[int, ...]:
    """The checkpoint shape of our parameter ``name`` in ``layout``."""
    if layout == "ldm" and re.search(r"\.attn_1\.(q|k|v|proj_out)\.weight$", name):
        return (*shape, 1, 1)
    if layout == "diffusers" and (
        name.endswith(".nin_shortcut.weight") or name == "post_quant_conv.weight"
    ):
        return tuple(shape[:-1])
    return tuple(shape)


def to_layout(state_dict: Mapping[str, torch.Tensor], layout: str, num_levels: int) -> dict:
    """Our state dict -> checkpoint tensors in ``layout`` (contiguous, ready to save)."""
    return {
        layout_name(k, layout, num_levels): v.reshape(layout_shape(k, v.shape, layout)).contiguous()
        for k, v in state_dict.items()
    }


def from_layout(
    checkpoint: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    layout: str,
    num_levels: int,
    source: str,
) -> dict:
    """Checkpoint tensors in ``layout`` -> our names and shapes, strictly.

    ``expected`` is our model's state dict (tensors may live on the meta device). Raises
    :class:`UserInputError` naming every missing, unexpected or mis-shaped key.
    """
    by_layout = {layout_name(k, layout, num_levels): k for k in expected}
    missing = sorted(set(by_layout) - set(checkpoint))
    unexpected = sorted(set(checkpoint) - set(by_layout))
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    converted = {}
    for key, ours in by_layout.items():
        if key not in checkpoint:
            continue
        tensor = checkpoint[key]
        if not tensor.is_floating_point():
            problems.append(f"key {key} has dtype {tensor.dtype}, expected a floating point type")
            continue
        want = layout_shape(ours, expected[ours].shape, layout)
        if tuple(tensor.shape) != want:
            problems.append(f"key {key} has shape {list(tensor.shape)}, expected {list(want)}")
            continue
        converted[ours] = tensor.reshape(expected[ours].shape)
    if problems:
        raise UserInputError(f"checkpoint does not fit the model ({'; '.join(problems)}): {source}")
    return converted

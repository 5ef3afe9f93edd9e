"""What ``CVVAE.from_pretrained`` / ``save_pretrained`` do with diffusers' loading and saving
arguments, and where a model folder is (local, or a Hub snapshot).

Every argument diffusers' ``ModelMixin.from_pretrained`` takes is either honoured or, when set to
something this model cannot do, refused with a ``ValueError`` that names it; ``None`` / ``False``
(what diffusers pipelines pass for arguments the caller did not set) is always accepted.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..errors import UserInputError
from .checkpoint import config_from_released, from_layout

logger = logging.getLogger("cvvae")

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
CONFIG_NAME = "config.json"

# passed on to huggingface_hub.snapshot_download when the model comes from the Hub
HUB_ARGUMENTS = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision")
# accepted and needing nothing: weights always load on the meta device then assigned (low memory)
NO_OP_ARGUMENTS = ("low_cpu_mem_usage", "disable_mmap", "provider", "sess_options")
# diffusers arguments this model cannot honour (refused unless None / False)
UNSUPPORTED_ARGUMENTS = {
    "max_memory": "multi-device placement",
    "offload_folder": "weight offloading",
    "offload_state_dict": "weight offloading",
    "quantization_config": "quantization",
    "dduf_entries": "DDUF archives",
    "keep_in_fp32_modules": "per-module dtypes",
    "use_flashpack": "flashpack weights",
    "from_flax": "Flax weights",
    "mirror": "download mirrors",
    "provider_options": "ONNX runtimes",
    "use_keras_mixed_precision": "Keras weights",
}


def weights_name(variant: str | None) -> str:
    """``diffusion_pytorch_model[.variant].safetensors``, as diffusers names variants."""
    if variant is None:
        return WEIGHTS_NAME
    stem, ext = WEIGHTS_NAME.rsplit(".", 1)
    return f"{stem}.{variant}.{ext}"


def split_load_arguments(kwargs: dict) -> tuple[dict, dict]:
    """``(hub, local)`` arguments of a ``from_pretrained`` call: ``hub`` for the snapshot
    download, ``local`` with ``variant``, ``torch_dtype``, ``device_map`` and
    ``output_loading_info``. Refuses what cannot be honoured, naming it."""
    hub, local = {}, {}
    for name, value in kwargs.items():
        if name in HUB_ARGUMENTS:
            hub[name] = value
        elif name in ("variant", "torch_dtype", "device_map", "output_loading_info"):
            local[name] = value
        elif name == "use_safetensors":
            if value is False:
                raise ValueError("use_safetensors=False: CVVAE reads safetensors weights only")
        elif name in NO_OP_ARGUMENTS:
            continue
        elif name in UNSUPPORTED_ARGUMENTS:
            if value not in (None, False):
                raise ValueError(
                    f"CVVAE.from_pretrained does not support {name} "
                    f"({UNSUPPORTED_ARGUMENTS[name]}); got {value!r}"
                )
        else:
            raise ValueError(f"CVVAE.from_pretrained got an unknown argument {name!r}")
    return hub, local


def placement(device_map) -> torch.device | None:
    """The one device a ``device_map`` names: a device, its string or index, or
    ``{"": device}``; ``None`` for none. Splitting the model over devices is refused."""
    if device_map is None:
        return None
    if isinstance(device_map, dict):
        if set(device_map) != {""}:
            raise ValueError(
                f"CVVAE.from_pretrained places the whole model on one device; got device_map "
                f"{device_map!r} (use a device, or {{'': device}})"
            )
        device_map = device_map[""]
    if device_map in ("auto", "balanced", "balanced_low_0", "sequential"):
        raise ValueError(
            f"CVVAE.from_pretrained places the whole model on one device; got device_map "
            f"{device_map!r} (use a device such as 'cuda')"
        )
    try:
        return torch.device(device_map)
    except (RuntimeError, TypeError):
        raise ValueError(f"device_map must name one device, got {device_map!r}") from None


def resolve_folder(name: str, subfolder: str | None, hub: dict) -> Path:
    """The model folder for ``name`` (+ ``subfolder``): a local folder when ``name`` exists on
    disk; otherwise a Hub repo ``owner/repo`` fetched with the ``hub`` arguments. A name that
    cannot be a repo id is a missing local folder; when the Hub fetch fails the error says the
    name was not found locally either, so a mistyped path is not mistaken for a Hub problem."""
    local = Path(name)
    if local.exists():
        folder = local / subfolder if subfolder else local
        if not folder.is_dir():
            raise UserInputError(f"not a model folder: {folder}")
        return folder
    if local.is_absolute() or name.startswith((".", "~")) or name.count("/") != 1:
        raise UserInputError(f"no such model folder: {name}")
    logger.info("no local folder %r; fetching it from the Hugging Face Hub", name)
    try:
        from huggingface_hub import snapshot_download

        pattern = f"{subfolder}/*" if subfolder else "*"
        root = Path(snapshot_download(name, allow_patterns=[pattern], **hub))
    except Exception as error:
        raise UserInputError(
            f"no local folder {name!r}, and fetching Hub repo {name!r} failed "
            f"({type(error).__name__}); check the path, or the repo id and network: {name}"
        ) from None
    return root / subfolder if subfolder else root


def check_save_arguments(
    safe_serialization: bool, save_function, push_to_hub: bool, kwargs: dict
) -> None:
    """Refuse ``save_pretrained`` arguments this model cannot honour, naming them."""
    if not safe_serialization:
        raise ValueError("safe_serialization=False: CVVAE saves safetensors weights only")
    if save_function is not None:
        raise ValueError("CVVAE.save_pretrained does not take a save_function")
    if push_to_hub:
        raise ValueError(
            "CVVAE.save_pretrained does not push to the Hub; save locally, then upload the folder "
            "with huggingface_hub.upload_folder"
        )
    for name, value in kwargs.items():
        if name in ("max_shard_size",):  # one file, always: the model is small
            continue
        if name in ("use_flashpack",) and not value:
            continue
        raise ValueError(f"CVVAE.save_pretrained got an unsupported argument {name!r}={value!r}")


def load_model(cls: type, config_path: Path, weights_path: Path):
    """The model of ``config_path`` with the weights of ``weights_path`` (strict)."""
    try:
        raw = json.loads(config_path.read_text())
    except (OSError, ValueError) as error:
        raise UserInputError(f"unreadable model config ({error}): {config_path}") from None
    if not isinstance(raw, dict):
        raise UserInputError(f"model config is not a JSON object: {config_path}")
    config = _our_config(cls, raw, str(config_path))
    with torch.device("meta"):
        model = cls(**config)
    try:
        checkpoint = load_file(weights_path)
    except Exception as error:  # safetensors raises several types for corrupt files
        raise UserInputError(f"unreadable model weights ({error}): {weights_path}") from None
    tensors = from_layout(
        checkpoint,
        model.state_dict(),
        model.config.state_dict_layout,
        len(model.config.block_out_channels),
        str(weights_path),
    )
    model.load_state_dict(tensors, strict=True, assign=True)
    return model


def _our_config(cls: type, raw: dict, source: str) -> dict:
    if raw.get("_class_name") in ("CVVAEModel", "CVVAESD3Model"):
        return config_from_released(raw, source)
    if raw.get("_class_name") != cls.__name__:
        raise UserInputError(f"unknown model class {raw.get('_class_name')!r} in {source}")
    config = {k: v for k, v in raw.items() if not k.startswith("_")}
    unknown = set(config) - (set(cls._get_init_keys(cls)) - {"self"})
    if unknown:
        raise UserInputError(f"unknown config keys {sorted(unknown)} in {source}")
    return config

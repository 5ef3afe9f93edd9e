"""Crash-safe training checkpoints in a format that cannot run code.

A checkpoint is a folder ``<root>/step-<8 digits>`` holding ``state.safetensors`` (everything
shared by all processes: models, optimizers, schedulers, the fp16 loss scaler, step, data
position), ``rng-<rank>.safetensors`` (each process's RNG states), ``config.yaml`` and, written
last, ``manifest.json`` listing every file with its size. It is written under ``*.tmp`` and
renamed when complete; a folder without a manifest, with a wrong file size, or still named
``*.tmp`` is incomplete and ignored, so the previous checkpoint is used.

Nothing is unpickled: a state (nested dicts, lists, tuples, numbers, strings, tensors, NumPy
arrays) is stored as its tensors in a safetensors file plus a JSON description of the nesting in
the file's metadata (:func:`save_state` / :func:`load_state`). Checkpoints of older versions
(``state.pt``, ``rng-<rank>.pt``) are still read, with ``torch.load(weights_only=True)``, which
refuses anything but tensors and plain containers (and the NumPy arrays of an RNG state).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from cvvae.errors import UserInputError
from cvvae.training.config import TrainConfig, save_config

MANIFEST = "manifest.json"
STATE = "state.safetensors"
LEGACY_STATE = "state.pt"
STATE_FORMAT = "cvvae-train-state"
_NAME = re.compile(r"^step-(\d{8})$")


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def begin_checkpoint(root: str | Path, step: int) -> Path:
    """Create (emptying any leftover) the temporary folder ``<root>/step-N.tmp`` and return it."""
    tmp = Path(root) / f"{checkpoint_name(step)}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def write_rank_state(tmp: Path, rank: int, state: dict) -> None:
    """Write one process's private state (its RNG states) into the temporary folder."""
    save_state(state, tmp / f"rng-{rank}.safetensors")


def finish_checkpoint(tmp: Path, state: dict, config: TrainConfig, keep: int) -> Path:
    """Write the shared state, config and manifest, rename to the final name, keep the last
    ``keep`` complete checkpoints. Returns the final folder."""
    save_state(state, tmp / STATE)
    save_config(config, tmp / "config.yaml")
    files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.name != MANIFEST}
    with open(tmp / MANIFEST, "w") as f:
        json.dump({"files": files}, f)
        f.flush()
        os.fsync(f.fileno())
    final = tmp.with_name(tmp.name.removesuffix(".tmp"))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(final.parent)[:-keep]:
        shutil.rmtree(old)
    return final


def is_complete(path: Path) -> bool:
    """True when the manifest exists and every listed file has its recorded size."""
    try:
        files = json.loads((path / MANIFEST).read_text())["files"]
        has_state = STATE in files or LEGACY_STATE in files
        return has_state and all((path / n).stat().st_size == s for n, s in files.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _NAME.match(p.name) and is_complete(p)]
    return sorted(found, key=lambda p: p.name)


def find_latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete checkpoint under ``root``, or None."""
    found = list_checkpoints(root)
    return found[-1] if found else None


def load_checkpoint(path: Path, rank: int) -> tuple[dict, dict | None]:
    """``(shared state, this rank's state or None if it has none)``, tensors on the CPU.

    Raises :class:`UserInputError` naming the file if a state file is damaged or not in a
    format that this module writes (nothing in it is executed)."""
    path = Path(path)
    if (path / STATE).is_file():
        state = load_state(path / STATE)
        rank_file = path / f"rng-{rank}.safetensors"
        return state, load_state(rank_file) if rank_file.is_file() else None
    state = _load_legacy(path / LEGACY_STATE)
    rank_file = path / f"rng-{rank}.pt"
    return state, _load_legacy(rank_file) if rank_file.is_file() else None


def _load_legacy(path: Path) -> dict:
    """A ``torch.save`` file of an older version, read without running code from it."""
    core = getattr(np, "_core", None) or np.core  # NumPy 2 renamed np.core
    allowed = [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    try:
        with torch.serialization.safe_globals(allowed):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # the unpickler raises many types for refused or damaged files
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserInputError(
            f"refused to load checkpoint file (only tensors and plain values are read; {first}): "
            f"{path}"
        ) from None
    if not isinstance(state, dict):
        raise UserInputError(f"not a training checkpoint state: {path}")
    return state


# ---------------------------------------------------------------------------- code-free states
def save_state(state: dict, path: Path) -> None:
    """Write ``state`` (nested dicts, lists, tuples, None, bools, ints, floats, strings, tensors
    and NumPy arrays) as a safetensors file: tensors as tensors, the nesting as JSON metadata."""
    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(state, tensors, set())
    metadata = {"format": STATE_FORMAT, "tree": json.dumps(tree)}
    save_file(tensors, str(path), metadata=metadata)


def load_state(path: Path) -> dict:
    """Inverse of :func:`save_state`; raises :class:`UserInputError` for anything else."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != STATE_FORMAT:
                raise UserInputError(f"not a cvvae training state file: {path}")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        state = _decode(json.loads(metadata["tree"]), tensors)
    except UserInputError:
        raise
    except Exception:  # safetensors and json raise several types for damaged files
        raise UserInputError(f"damaged training state file: {path}") from None
    if not isinstance(state, dict):
        raise UserInputError(f"not a cvvae training state file: {path}")
    return state


def _encode(value, tensors: dict[str, torch.Tensor], storages: set[int]):
    if isinstance(value, torch.Tensor):
        key = str(len(tensors))
        t = value.detach().cpu()
        # safetensors refuses tensors sharing memory or views of a larger storage
        ptr = t.untyped_storage().data_ptr()
        if ptr in storages or t.untyped_storage().nbytes() != t.nbytes or not t.is_contiguous():
            t = t.clone(memory_format=torch.contiguous_format)
        storages.add(t.untyped_storage().data_ptr())
        tensors[key] = t
        return {"__tensor__": key}
    if isinstance(value, np.ndarray):
        key = str(len(tensors))
        tensors[key] = torch.from_numpy(np.array(value, copy=True))
        return {"__ndarray__": key}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: _encode(v, tensors, storages) for k, v in value.items()}
        return {
            "__items__": [
                [_encode(k, tensors, storages), _encode(v, tensors, storages)]
                for k, v in value.items()
            ]
        }
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, tensors, storages) for v in value]}
    if isinstance(value, list):
        return [_encode(v, tensors, storages) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"cannot store a {type(value).__name__} in a training state")


def _decode(node, tensors: dict[str, torch.Tensor]):
    if isinstance(node, list):
        return [_decode(v, tensors) for v in node]
    if not isinstance(node, dict):
        return node
    if "__tensor__" in node:
        return tensors[node["__tensor__"]]
    if "__ndarray__" in node:
        return tensors[node["__ndarray__"]].numpy()
    if "__tuple__" in node:
        return tuple(_decode(v, tensors) for v in node["__tuple__"])
    if "__items__" in node:
        return {_hashable(_decode(k, tensors)): _decode(v, tensors) for k, v in node["__items__"]}
    return {k: _decode(v, tensors) for k, v in node.items()}


def _hashable(key):
    return tuple(key) if isinstance(key, list) else key


# Settings that may change between a run and its resumption.
_RUN_LENGTH_KEYS = {
    "output_dir",
    "resume",
    "max_steps",
    "checkpoint_every",
    "keep_checkpoints",
    "log_every",
    "image_log_every",
    "num_val_clips",
    "max_nonfinite",
    "log_with",
    "data.num_workers",
}


def config_differences(path: Path, config: TrainConfig) -> list[str]:
    """Keys whose values differ between the checkpoint's ``config.yaml`` and ``config``
    (``key=old->new``), leaving out settings a resumed run may change. Empty if unreadable."""
    from cvvae.training.config import config_to_dict, load_config

    try:
        old = _flat(config_to_dict(load_config(Path(path) / "config.yaml")))
    except UserInputError:
        return []
    new = _flat(config_to_dict(config))
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return [f"{k}={old.get(k)!r}->{new.get(k)!r}" for k in keys if k not in _RUN_LENGTH_KEYS]


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key != "image_vae_init":
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def capture_rng() -> dict:
    """This process's Python, NumPy, torch (and CUDA, if present) RNG states."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    """Inverse of :func:`capture_rng`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

"""Crash-safe training checkpoints: written under a temporary name, renamed when complete.

A checkpoint is a folder ``<root>/step-<8 digits>`` holding ``state.pt`` (everything shared by
all processes: models, optimizers, schedulers, step, data position), ``rng-<rank>.pt`` (each
process's RNG states), ``config.yaml`` and, written last, ``manifest.json`` listing every file
with its size. A folder without a manifest, with a wrong file size, or still named ``*.tmp`` is
incomplete and ignored, so the previous checkpoint is used.
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

from cvvae.training.config import TrainConfig, save_config

MANIFEST = "manifest.json"
STATE = "state.pt"
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
    torch.save(state, tmp / f"rng-{rank}.pt")


def finish_checkpoint(tmp: Path, state: dict, config: TrainConfig, keep: int) -> Path:
    """Write the shared state, config and manifest, rename to the final name, keep the last
    ``keep`` complete checkpoints. Returns the final folder."""
    torch.save(state, tmp / STATE)
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
        return STATE in files and all((path / n).stat().st_size == s for n, s in files.items())
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
    """``(shared state, this rank's state or None if it has none)``, tensors on the CPU."""
    state = torch.load(path / STATE, map_location="cpu", weights_only=False)
    rank_file = path / f"rng-{rank}.pt"
    rank_state = torch.load(rank_file, weights_only=False) if rank_file.exists() else None
    return state, rank_state


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

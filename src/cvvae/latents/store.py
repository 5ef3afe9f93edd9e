"""The on-disk latent dataset: settings, per-rank shards and per-rank manifests.

Layout of an output folder::

    dataset.json                          settings (model, clip protocol, posterior, scaling)
    manifest/rank-00001.jsonl             one JSON row per clip, appended and fsynced per clip
    shards/rank-00001-00003.safetensors   float32 unscaled latents, one tensor per clip key

A shard is rewritten (temporary name, fsync, rename) each time a clip joins it, and a clip's
manifest row is appended only after that rename; so a killed process loses at most the clip it
was on, and every row points at a complete file. Each rank writes only its own files.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from cvvae.errors import UserInputError
from cvvae.io import atomic_path
from cvvae.latents.encode_dataset import merge_rows

SETTINGS_NAME = "dataset.json"
SHARD_FORMAT = "cvvae-latent-shard"


def manifest_path(root: Path, rank: int) -> Path:
    return root / "manifest" / f"rank-{rank:05d}.jsonl"


def write_settings(root: Path, settings: dict) -> None:
    """Record ``settings`` in ``root/dataset.json``; if it exists they must be the same (a rerun
    with other settings would mix incompatible latents). Raises UserInputError otherwise."""
    path = root / SETTINGS_NAME
    if path.is_file():
        old = read_settings(root)
        changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if changed:
            raise UserInputError(
                f"the output folder was encoded with other settings ({', '.join(changed)}); "
                f"use a new folder: {root}"
            )
        return
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(settings, indent=2) + "\n")


def read_settings(root: Path) -> dict:
    path = Path(root) / SETTINGS_NAME
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        raise UserInputError(
            f"not a latent dataset folder (no readable {SETTINGS_NAME}): {root}"
        ) from None


def read_manifest(root: str | os.PathLike) -> list[dict]:
    """Every manifest row of every rank. A last line cut short by a crash is ignored."""
    rows = []
    for path in sorted((Path(root) / "manifest").glob("rank-*.jsonl")):
        with open(path, "rb") as f:
            for line in f:
                if line.endswith(b"\n"):
                    rows.append(json.loads(line))
    return rows


def merged_manifest(root: str | os.PathLike) -> dict[str, dict]:
    """The manifest view: one row per clip key (see :func:`merge_rows`)."""
    return merge_rows(read_manifest(root))


class ManifestWriter:
    """Appends rows to one rank's manifest, each written and fsynced before returning."""

    def __init__(self, root: Path, rank: int):
        self.path = manifest_path(root, rank)
        self.path.parent.mkdir(exist_ok=True)
        self._drop_partial_line()

    def _drop_partial_line(self) -> None:
        """Cut a last line left unfinished by a killed run, so new rows start on a fresh line."""
        if not self.path.is_file():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(self.path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)

    def append(self, row: dict) -> None:
        with open(self.path, "ab") as f:
            f.write((json.dumps(row) + "\n").encode())
            f.flush()
            os.fsync(f.fileno())


class ShardWriter:
    """Collects one rank's latents into shards of at most ``clips_per_shard`` clips.

    Each run starts a new shard after the rank's existing ones, and removes temporary files a
    killed run of this rank left behind.
    """

    def __init__(self, root: Path, rank: int, clips_per_shard: int):
        self.folder = root / "shards"
        self.folder.mkdir(exist_ok=True)
        self.prefix = f"rank-{rank:05d}-"
        self.clips_per_shard = clips_per_shard
        for stale in self.folder.glob(f".{self.prefix}*.partial.safetensors"):
            stale.unlink(missing_ok=True)
        pattern = re.compile(re.escape(self.prefix) + r"(\d+)\.safetensors")
        numbers = [int(m[1]) for p in self.folder.iterdir() if (m := pattern.fullmatch(p.name))]
        self.number = max(numbers, default=-1) + 1
        self.tensors: dict[str, torch.Tensor] = {}

    def add(self, name: str, latents: torch.Tensor) -> str:
        """Store ``latents`` as tensor ``name``; returns the shard's file name once it is on disk."""
        if len(self.tensors) == self.clips_per_shard:
            self.number, self.tensors = self.number + 1, {}
        self.tensors[name] = latents.contiguous()
        shard = f"{self.prefix}{self.number:05d}.safetensors"
        with atomic_path(self.folder / shard) as tmp:
            save_file(self.tensors, str(tmp), metadata={"format": SHARD_FORMAT})
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        return shard

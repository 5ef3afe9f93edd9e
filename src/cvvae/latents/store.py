"""The on-disk latent dataset: settings, per-rank shards and per-rank manifests.

Layout of an output folder::

    dataset.json                          settings (model, clip protocol, posterior, scaling)
    manifest/rank-00001.jsonl             one JSON row per clip, appended and fsynced per clip
    shards/rank-00001-00003.safetensors   float32 unscaled latents, one tensor per clip key
    locks/rank-00001.lock                 held while a process writes rank 1's files

A shard is rewritten (temporary name, fsync, rename) each time a clip joins it, and a clip's
manifest row is appended only after that rename; so a killed process loses at most the clip it
was on, and every row points at a complete file. Each rank writes only its own files, and a
lock file keeps a second process from writing the same rank's files at the same time. A
manifest line that cannot be read is skipped with a warning, so its clip is encoded again.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from cvvae.errors import UserInputError
from cvvae.io import atomic_path
from cvvae.latents.encode_dataset import DONE, FAILED, merge_rows

SETTINGS_NAME = "dataset.json"
SHARD_FORMAT = "cvvae-latent-shard"

logger = logging.getLogger(__name__)


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
        settings = json.loads(path.read_text())
    except (OSError, ValueError):
        raise UserInputError(
            f"not a latent dataset folder (no readable {SETTINGS_NAME}): {root}"
        ) from None
    if not isinstance(settings, dict):
        raise UserInputError(
            f"not a latent dataset folder ({SETTINGS_NAME} is not an object): {root}"
        )
    return settings


def read_manifest(root: str | os.PathLike) -> list[dict]:
    """Every manifest row of every rank. A last line cut short by a crash is ignored; a line
    that is not a valid row is skipped with a warning (its clip counts as not yet encoded)."""
    rows = []
    for path in sorted((Path(root) / "manifest").glob("rank-*.jsonl")):
        with open(path, "rb") as f:
            for number, line in enumerate(f, 1):
                if not line.endswith(b"\n"):
                    continue
                row = _row(line)
                if row is None:
                    logger.warning(
                        "skipping unreadable manifest line %d (its clip will be encoded again): %s",
                        number,
                        path,
                    )
                    continue
                rows.append(row)
    return rows


def _row(line: bytes) -> dict | None:
    """A manifest row with the fields the readers use, or None."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    if not (
        isinstance(row, dict)
        and isinstance(row.get("key"), str)
        and row.get("status") in (DONE, FAILED)
        and isinstance(row.get("index"), int)
        and isinstance(row.get("time"), int | float)
    ):
        return None
    if row["status"] == DONE and not (
        isinstance(row.get("shard"), str)
        and isinstance(row.get("tensor"), str)
        and isinstance(row.get("latent_shape"), list)
        and isinstance(row.get("frames"), int)
    ):
        return None
    return row


def merged_manifest(root: str | os.PathLike) -> dict[str, dict]:
    """The manifest view: one row per clip key (see :func:`merge_rows`)."""
    return merge_rows(read_manifest(root))


class RankLock:
    """``with RankLock(root, rank):`` holds ``root/locks/rank-<rank>.lock`` (it records the
    process id and host), so that two processes never write one rank's files at once.

    A lock left by a process of this host that no longer runs (killed) is taken over; one held
    by a running process, or by another host, raises :class:`UserInputError`.
    """

    def __init__(self, root: Path, rank: int):
        self.path = Path(root) / "locks" / f"rank-{rank:05d}.lock"
        self.held = False

    def __enter__(self) -> RankLock:
        self.path.parent.mkdir(exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                owner = self._owner()
                if owner is None and self._age() < 10:
                    owner = {"pid": "?", "host": "?"}  # being written by a starting process
                if owner is not None and not self._is_stale(owner, me["host"]):
                    raise UserInputError(
                        f"another encode-dataset run (process {owner.get('pid')} on "
                        f"{owner.get('host')}) is writing this folder; wait for it, or delete "
                        f"{self.path} if it is gone: {self.path.parent.parent}"
                    ) from None
                logger.warning("removing a stale lock of a stopped run: %s", self.path)
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise UserInputError(f"cannot take the lock file: {self.path}")

    def __exit__(self, *exc) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def _owner(self) -> dict | None:
        """The lock's recorded owner; None if unreadable (a lock cut short: stale)."""
        try:
            owner = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return owner if isinstance(owner, dict) else None

    def _age(self) -> float:
        try:
            return time.time() - self.path.stat().st_mtime
        except OSError:
            return 0.0

    @staticmethod
    def _is_stale(owner: dict, host: str) -> bool:
        pid = owner.get("pid")
        if owner.get("host") != host or not isinstance(pid, int) or pid == os.getpid():
            return False  # another host's process cannot be checked; this one runs
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False
        return False


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

"""Read an encoded latent dataset back for diffusion training."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

from safetensors import safe_open
from torch.utils.data import Dataset

from cvvae.latents.encode_dataset import DONE, FAILED
from cvvae.latents.store import merged_manifest, read_settings


class LatentDataset(Dataset):
    """The encoded clips of a ``cvvae encode-dataset`` folder, in list order, random access.

    ``scaled=False`` returns the latents as stored, exactly what ``cvvae encode`` writes (raw
    posterior mean or sample); ``scaled=True`` returns ``(z - shift_factor) * scaling_factor``,
    the normalised latents a diffusion model is trained on (factors from ``dataset.json``).

    Item ``i`` is a dict: ``latents`` float32 ``(C, t, h, w)`` (``(C, h, w)`` for an image),
    ``key``, ``source``, ``index`` (position in the input list), ``frames``, ``fps`` (float, 0.0
    for an image), ``height`` and ``width`` of the clip as encoded. Only the manifest (small
    JSON lines) is read in ``__init__``; shards are opened per item, inside DataLoader workers.
    Failed clips are not items; they are listed in :attr:`failed`.
    """

    def __init__(self, root: str | os.PathLike, scaled: bool):
        self.root = Path(root)
        self.settings = read_settings(self.root)
        self.scaled = scaled
        self.scaling = self.settings["scaling_factor"]
        self.shift = self.settings["shift_factor"] or 0.0
        rows = merged_manifest(self.root).values()
        self.rows = sorted((r for r in rows if r["status"] == DONE), key=lambda r: r["index"])
        self.failed = sorted((r for r in rows if r["status"] == FAILED), key=lambda r: r["index"])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        row = self.rows[i]
        with safe_open(str(self.root / "shards" / row["shard"]), framework="pt") as f:
            z = f.get_tensor(row["tensor"])
        if self.scaled:
            z = (z - self.shift) * self.scaling
        return {
            "latents": z,
            "key": row["key"],
            "source": row["source"],
            "index": row["index"],
            "frames": row["frames"],
            "fps": float(Fraction(row["fps"])) if row["fps"] else 0.0,
            "height": row["height"],
            "width": row["width"],
        }

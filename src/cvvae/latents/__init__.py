"""Pre-encoded latent datasets: encoding logic, on-disk shards and manifests, the reader."""

from cvvae.latents.dataset import LatentDataset
from cvvae.latents.encode_dataset import ClipSource, clip_sources, merge_rows, rank_share
from cvvae.latents.store import merged_manifest, read_manifest, read_settings

__all__ = [
    "ClipSource",
    "LatentDataset",
    "clip_sources",
    "merge_rows",
    "merged_manifest",
    "rank_share",
    "read_manifest",
    "read_settings",
]

"""``cvvae encode-dataset``: a list of videos into latent shards and a manifest, on one or many
processes (``torchrun``), resumable."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from cvvae.cli.codec import add_clip_options, clip_size, encode_clip, read_clip, seed_type
from cvvae.cli.common import (
    Formatter,
    add_model_options,
    load_model,
    model_folder,
    positive,
    resolve_device,
    torch_dtype,
)
from cvvae.errors import UserInputError

if TYPE_CHECKING:
    import torch

    from cvvae.latents.encode_dataset import ClipSource
    from cvvae.latents.store import ShardWriter
    from cvvae.models import CVVAE

DATASET_FORMAT = "cvvae-latent-dataset"


def _world() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from the torchrun environment; one process without it."""
    try:
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise UserInputError("RANK, WORLD_SIZE and LOCAL_RANK must be integers") from None
    if not 0 <= rank < world:
        raise UserInputError(f"RANK must be in [0, WORLD_SIZE), got RANK={rank} WORLD_SIZE={world}")
    return rank, world, local


def _sources(path: Path) -> list[ClipSource]:
    from cvvae.io import list_videos
    from cvvae.latents.encode_dataset import clip_sources

    base = path if path.is_dir() else path.parent
    try:
        return clip_sources(list_videos([str(path)]), base)
    except ValueError as error:
        raise UserInputError(f"{error}: {path}") from None


def _settings(folder: Path, model: CVVAE, args: argparse.Namespace) -> dict:
    """What every latent of the dataset depends on; a rerun must use the same."""
    return {
        "format": DATASET_FORMAT,
        "model": str(folder),
        "dtype": args.dtype,
        "latent_channels": model.config.latent_channels,
        "scaling_factor": float(model.config.scaling_factor),
        "shift_factor": model.config.shift_factor,
        "latents_scaled": False,
        "posterior": "sample" if args.sample else "mean",
        "seed": args.seed if args.sample else None,
        "height": args.height,
        "width": args.width,
        "frames": args.frames,
        "start": args.start,
        "stride": args.stride,
    }


def _encode_source(
    source: ClipSource,
    args: argparse.Namespace,
    model: CVVAE,
    device: torch.device,
    shards: ShardWriter,
    rank: int,
) -> dict:
    """Read, encode and store one clip; its manifest row (failed with the reason if the clip
    cannot be read, however its decoder fails, or encodes to non-finite values)."""
    import torch

    from cvvae.latents.encode_dataset import clip_seed, done_row, failed_row, short_clip_reason

    try:
        clip = read_clip(source.path, args)
    except Exception as error:  # any decoder failure is this clip's, not the run's
        return failed_row(source, rank, _reason(error))
    reason = None if clip.is_image else short_clip_reason(clip.pixels.shape[1], args.frames)
    if reason:
        return failed_row(source, rank, reason)
    seed = clip_seed(args.seed, source.index) if args.sample else None
    try:
        z = encode_clip(model, clip, device, args.sample, seed or 0)
    except (torch.OutOfMemoryError, MemoryError):
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return failed_row(source, rank, f"out of memory encoding {tuple(clip.pixels.shape)}")
    except FloatingPointError as error:
        return failed_row(source, rank, str(error))
    shard = shards.add(source.key, z)
    fps = None if clip.is_image else str(clip.rate)
    return done_row(source, rank, tuple(clip.pixels.shape), fps, z, shard, seed)


def _reason(error: BaseException) -> str:
    import av

    if isinstance(error, UserInputError | av.FFmpegError | OSError):
        return str(error) or type(error).__name__
    return f"{type(error).__name__}: {error}"


def cmd_encode_dataset(args: argparse.Namespace) -> None:
    """Encode this rank's share of LIST into OUT; skip clips the manifest already has.

    Everything is checked (list, model, options, OUT) before OUT is created."""
    import torch

    from cvvae.latents.store import RankLock, write_settings

    rank, world, local_rank = _world()
    folder, device = model_folder(args), resolve_device(args.device)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
    clip_size(args)
    if args.output.exists() and not args.output.is_dir():
        raise UserInputError(f"the output must be a folder, but it is a file: {args.output}")
    if not args.output.parent.is_dir():
        raise UserInputError(f"output folder's parent does not exist: {args.output}")
    sources = _sources(args.list)
    model = load_model(folder, device, torch_dtype(args.dtype), args.memory_budget)
    settings = _settings(folder, model, args)
    args.output.mkdir(exist_ok=True)
    with RankLock(args.output, rank):
        write_settings(args.output, settings)
        _encode_share(args, sources, model, device, rank, world, local_rank)


def _encode_share(args, sources, model, device, rank: int, world: int, local_rank: int) -> None:
    """Encode the clips of this rank's share that the manifest lacks, with a bar and a summary."""
    from cvvae.latents.encode_dataset import DONE, Summary, pending, rank_share
    from cvvae.latents.store import ManifestWriter, ShardWriter, merged_manifest

    share = rank_share(len(sources), rank, world)
    todo = pending(sources, share, merged_manifest(args.output), args.retry_failed)
    summary = Summary(skipped=len(share) - len(todo))
    manifest = ManifestWriter(args.output, rank)
    shards = ShardWriter(args.output, rank, args.clips_per_shard)
    started = time.perf_counter()
    with (
        logging_redirect_tqdm([logging.getLogger("cvvae")]),
        tqdm(
            total=len(todo),
            desc=f"rank {rank}",
            unit="clip",
            position=local_rank,
            disable=None,
            file=sys.stderr,
        ) as bar,
    ):
        for source in todo:
            row = _encode_source(source, args, model, device, shards, rank)
            manifest.append(row)
            summary.add(row)
            bar.update()
    summary.seconds = time.perf_counter() - started
    print(f"rank {rank}/{world}: {summary.line()}")
    rows = merged_manifest(args.output)
    listed = [rows[s.key] for s in sources if s.key in rows]
    done = sum(r["status"] == DONE for r in listed)
    print(
        f"rank {rank}/{world}: manifest now has {done} of {len(sources)} clips done, "
        f"{len(listed) - done} failed, {len(sources) - len(listed)} not yet encoded: {args.output}"
    )


DESCRIPTION = """\
Encode every video of LIST into OUT: float32 latents in safetensors shards plus a manifest with
one JSON row per clip (source, frames, fps, size, latent shape, shard and tensor name, status,
error). Latents are raw (unscaled), exactly what 'cvvae encode' writes for the same clip and
options; the scaling factor is recorded in OUT/dataset.json.

LIST is a folder (searched recursively for videos), a .csv with a 'path' column or a .jsonl file
with one {"path": ...} per line; relative paths are relative to the list file. Each clip is read
with the clip options; with --frames, a video too short for it becomes a failed row, so every
latent has the same shape (leave --frames out to encode whole videos).

Under torchrun (RANK, WORLD_SIZE, LOCAL_RANK set) each process encodes every WORLD_SIZE-th clip
and writes its own shards and manifest; on several machines OUT must be a shared folder.
Rerunning the same command skips clips the manifest has (done or failed) and encodes the rest;
a killed process loses at most the clip it was on. Unreadable clips become failed rows with the
reason. Read OUT back with cvvae.latents.LatentDataset.
"""

EXAMPLES = """\
examples:
  cvvae encode-dataset videos/ latents/ --model vae3d --frames 17 --height 256 --width 256
  torchrun --nproc_per_node 8 -m cvvae.cli encode-dataset list.csv latents/ --model vae3d --frames 97
"""


def register(sub) -> None:
    """Add encode-dataset to the subcommand set ``sub``."""
    p = sub.add_parser(
        "encode-dataset",
        formatter_class=Formatter,
        help="encode a list of videos into latent shards + manifest (torchrun for many)",
        description=DESCRIPTION,
        epilog=EXAMPLES,
    )
    p.add_argument("list", type=Path, metavar="LIST", help="folder, .csv or .jsonl list of videos")
    p.add_argument("output", type=Path, metavar="OUT", help="output folder (created if missing)")
    add_model_options(p)
    p.add_argument(
        "--sample", action="store_true", help="sample the posterior instead of taking its mean"
    )
    p.add_argument(
        "--seed",
        type=seed_type,
        default=0,
        help="with --sample, clip i of LIST uses seed SEED + i (its manifest row records it)",
    )
    p.add_argument(
        "--clips-per-shard",
        type=positive,
        default=16,
        help="clips per shard file; a shard is rewritten as each clip joins it, so large values "
        "cost write time",
    )
    p.add_argument(
        "--retry-failed", action="store_true", help="encode again the clips recorded as failed"
    )
    add_clip_options(p)
    p.set_defaults(run=cmd_encode_dataset)

"""How spatial tiles should estimate the clip-wide GroupNorm statistics: alternatives measured.

Tiled inference (cvvae.inference.streaming.run_trunk_tiled) runs a statistics pass before the
tiles with halos run under frozen statistics. This script keeps that main pass fixed and swaps the
statistics pass, on a real clip, reporting for each alternative: encoder and decoder time against
the full pass (statistics pass + main pass, one run each), the statistics pass's peak tensor
memory as a share of the full pass's, max and mean |latent - full-pass latent|, and PSNR of the
tiled decode against the full-pass decode of the same latents.

Alternatives:
- ``own, tile by tile`` (the library's default, ``tile_order="sequential"``): each tile's own
  region without halo, one tile after the other, normalised with the statistics pooled so far;
- ``own, every 2nd tile``: the same on half the tiles;
- ``own, lockstep`` (``tile_order="lockstep"``): all tiles advance one time chunk at a time, so
  every chunk after the first is normalised with statistics of the whole frame (holds every
  tile's conv caches at once);
- ``halo/2, own counted, lockstep`` and ``... tile by tile``: tiles with half-width halos whose
  statistics count only their own region (no zero-padded tile borders in the statistics);
- ``whole frame``: the untiled chunked pass (no tiles; the memory tiles exist to avoid);
- ``half resolution``: the whole frame at half size (area-downsampled input);
- ``exact``: the clip's own statistics (the untiled trunk on the whole clip in one call): what
  tiles give when the estimate is perfect, so it separates the estimate's error from the tiling's.

``--model`` takes a model folder or a benchmark spec (``sd21_tiny``, ``sd21_full``, ...; see
bench_inference.load_model), ``--video synthetic`` the benchmark's synthetic clip.

    python benchmarks/tile_statistics.py --out docs/bench/cpu-360p-tile-statistics.json
    python benchmarks/tile_statistics.py --size 17x720x1280 --tile 640 --only "own, tile by tile" "own, lockstep"
    python benchmarks/tile_statistics.py --model sd21_full --video synthetic --only exact "own, tile by tile"
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from cvvae.inference import streaming
from cvvae.inference.memory import PeakMemory
from cvvae.inference.tiling import Tile, decoder_halo, encoder_halo, tile_grid
from cvvae.io import read_video

sys.path.insert(0, str(Path(__file__).parent))
from bench_inference import load_model, synthetic_clip  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


class OwnRegionState(streaming.StreamState):
    """Chunked execution over one tile with a halo whose statistics count only the tile's own
    region (at each layer's resolution)."""

    def __init__(self, tile: Tile, stats_mode: str = "running", **kwargs):
        super().__init__(stats_mode, **kwargs)
        self.tile = tile

    def group_norm(self, norm, x):
        if x.shape[2] == 0:
            return x
        height = self.tile.padded[0].stop - self.tile.padded[0].start
        rows, cols = (self.tile.crop(axis, x.shape[3], height) for axis in (0, 1))
        return self._normalise(norm, x, self._count(norm, x[..., rows, cols]))


class Trunk:
    """One network's trunk on one clip: how to cut chunks and tiles, and its output length."""

    def __init__(self, trunk: Callable, x: torch.Tensor, split: Callable, out_frames: int, max_latents: int,
                 tile: int, halo: int, align: int, scale: tuple[int, int]):
        self.trunk, self.x, self.split, self.out_frames, self.max_latents = trunk, x, split, out_frames, max_latents
        self.tiles = tile_grid(x.shape[3], x.shape[4], tile, halo, align)
        self.tile, self.halo, self.align, self.scale = tile, halo, align, scale

    def main_pass(self, stats: dict) -> torch.Tensor:
        return streaming.run_trunk_tiled(self.trunk, self.x, self.split, self.out_frames, self.max_latents,
                                         self.tiles, self.scale, frozen=stats)

    def halo_tiles(self, fraction: float) -> list[Tile]:
        """The same tiles with ``fraction`` of the trunk's halo (rounded down to ``align``)."""
        halo = int(self.halo * fraction) // self.align * self.align
        return tile_grid(self.x.shape[3], self.x.shape[4], self.tile, halo, self.align)


def tiles_pass(t: Trunk, every: int = 1, lockstep: bool = False, halo: float | None = None) -> dict:
    """Statistics over tiles (every ``every``-th): their own regions (``halo`` None: the
    library's :func:`cvvae.inference.streaming.tile_statistics`), or halos of ``halo`` x the
    trunk's reach counting their own regions only."""
    order = "lockstep" if lockstep else "sequential"
    if halo is None:
        return streaming.tile_statistics(t.trunk, t.x, t.split, t.out_frames, t.max_latents, t.tiles[::every], order)
    totals: dict = {}
    calls = [
        streaming.chunk_calls(t.trunk, t.split(t.x[..., tile.padded[0], tile.padded[1]]),
                              OwnRegionState(tile, max_latents=t.max_latents, totals=totals), t.out_frames)
        for tile in t.halo_tiles(halo)[::every]
    ]
    streaming.drain(calls, order)
    return streaming.StreamState("running", totals=totals).clip_stats()


def whole_pass(t: Trunk, scale: float = 1.0, one_call: bool = False) -> dict:
    """Statistics of the untiled chunked pass, on the input resized by ``scale``; with
    ``one_call`` the whole clip goes through in one call (the clip's exact statistics)."""
    x = t.x
    if scale != 1.0:
        x = F.interpolate(x.flatten(1, 2), scale_factor=scale, mode="area").unflatten(1, x.shape[1:3])
        x = x[..., : x.shape[3] // t.align * t.align, : x.shape[4] // t.align * t.align]
    chunks, cap = ([x], t.out_frames) if one_call else (t.split(x), t.max_latents)
    state = streaming.StreamState("running", max_latents=cap)
    streaming.drain([streaming.chunk_calls(t.trunk, chunks, state, t.out_frames)], "sequential")
    return state.clip_stats()


ALTERNATIVES = {
    "own, tile by tile": tiles_pass,
    "own, every 2nd tile": functools.partial(tiles_pass, every=2),
    "own, lockstep": functools.partial(tiles_pass, lockstep=True),
    "halo/2, own counted, tile by tile": functools.partial(tiles_pass, halo=0.5),
    "halo/2, own counted, lockstep": functools.partial(tiles_pass, halo=0.5, lockstep=True),
    "whole frame": whole_pass,
    "half resolution": functools.partial(whole_pass, scale=0.5),
    "exact": functools.partial(whole_pass, one_call=True),
}


def timed(fn: Callable, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def peak(fn: Callable, *args) -> int:
    with PeakMemory() as meter:
        fn(*args)
    return meter.peak_bytes


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(4 / (a.clamp(-1, 1) - b.clamp(-1, 1)).square().mean()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "src/cvvae/assets/model"), help="a folder or sd21_full etc.")
    parser.add_argument("--video", default=str(ROOT.parent / "shared/data/videos/pexels_4896510_1280x720_30fps.mp4"),
                        help="a video file, or 'synthetic'")
    parser.add_argument("--size", default="17x360x640", help="TxHxW read from the video")
    parser.add_argument("--tile", type=int, default=320, help="tile size in video pixels")
    parser.add_argument("--chunks", nargs=2, type=int, default=[4, 1], metavar=("FRAMES", "LATENTS"))
    parser.add_argument("--only", nargs="+", choices=list(ALTERNATIVES), default=list(ALTERNATIVES),
                        metavar="NAME", help="run only these alternatives (names as listed above)")
    parser.add_argument("--out", type=Path, default=Path("tile-statistics.json"))
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    frames, height, width = (int(v) for v in args.size.split("x"))
    model = load_model(args.model, ROOT.parent / "shared" / "reference").eval()
    if args.video == "synthetic":
        x = synthetic_clip(frames, height, width)
    else:
        x = read_video(args.video, num_frames=frames, size=(height, width))[0][None]
    enc, dec = model.encoder, model.decoder
    full_m, enc_full_s = timed(enc, x)
    h = dec.head(full_m[:, : model.config.latent_channels])
    full_x, dec_full_s = timed(dec.trunk, h)
    enc_full_peak, dec_full_peak = peak(enc.trunk, x), peak(dec.trunk, h)
    blocks = len(enc.down[0].block)
    encoder = Trunk(enc.trunk, x, functools.partial(streaming.split_encoder_input, chunk_frames=args.chunks[0]),
                    full_m.shape[2], args.chunks[0] // 4 + 1, args.tile, encoder_halo(blocks), 8, (1, 8))
    decoder = Trunk(dec.trunk, h, functools.partial(streaming.split_time, chunk_frames=args.chunks[1]),
                    full_x.shape[2], args.chunks[1], args.tile // 8, decoder_halo(blocks), 1, (8, 1))
    results = {"model": args.model, "video": args.video, "size": args.size, "tile": args.tile, "chunks": args.chunks,
               "tiles": len(encoder.tiles), "command": " ".join(sys.argv), "rows": []}
    print(f"{'statistics pass':34} {'enc x':>6} {'stat mem':>8} {'lat max':>8} {'lat mean':>8} "
          f"{'dec x':>6} {'stat mem':>8} {'PSNR':>6}")
    for name in args.only:
        estimate = ALTERNATIVES[name]
        stats, enc_stats_s = timed(estimate, encoder)
        m, enc_main_s = timed(lambda s: enc.head(encoder.main_pass(s)), stats)
        stats, dec_stats_s = timed(estimate, decoder)
        y, dec_main_s = timed(decoder.main_pass, stats)
        row = dict(
            statistics=name,
            encode_ratio=(enc_stats_s + enc_main_s) / enc_full_s,
            encode_stats_peak_share=peak(estimate, encoder) / enc_full_peak,
            latent_max_err=(m - full_m).abs().max().item(),
            latent_mean_err=(m - full_m).abs().mean().item(),
            decode_ratio=(dec_stats_s + dec_main_s) / dec_full_s,
            decode_stats_peak_share=peak(estimate, decoder) / dec_full_peak,
            decoded_psnr=psnr(y, full_x),
        )
        results["rows"].append(row)
        print(f"{name:34} {row['encode_ratio']:6.2f} {row['encode_stats_peak_share']:8.2f} "
              f"{row['latent_max_err']:8.4f} {row['latent_mean_err']:8.4f} {row['decode_ratio']:6.2f} "
              f"{row['decode_stats_peak_share']:8.2f} {row['decoded_psnr']:6.1f}", flush=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

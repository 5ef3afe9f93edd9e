"""Each direction on its own: what the chunk size (with or without tiles) costs and buys.

For one model and clip size, the full pass of each direction, then the chunked pass for each
chunk size: median time, peak memory (both also as ratios to the full pass of the same run) and
the deviation from the full pass of that direction alone: max |moment error| for the encoder
(latent means and log-variances, as in bench_inference.py),
PSNR of the decoder's output for the full pass's latents (bench_inference.py reports the
round trip instead, where the encoder's error carries into the decoded video). Statistics:
running (the default plan). Prints a table and writes JSON.

    python benchmarks/bench_chunks.py --model sd21_tiny --size 17x720x1280 --tile 360 \\
        --encode-chunks 4 8 16 --decode-chunks 1 2 4
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_inference import Meter, load_model, psnr, synthetic_clip  # noqa: E402

from cvvae import InferencePlan  # noqa: E402
from cvvae.io import atomic_path  # noqa: E402


def sweep(
    model,
    x: torch.Tensor,
    meter: Meter,
    direction: str,
    chunks: list[int],
    tile: int | None,
    tile_levels: int,
) -> list[dict]:
    """Rows for ``direction``: the full pass, then one per chunk size (encoder: video frames,
    decoder: latent frames)."""
    c = model.config.latent_channels
    model.disable_tiling()
    z = None if direction == "encode" else model.encode(x).latent_dist.parameters[:, :c]

    def run():
        return (
            model.encode(x).latent_dist.parameters
            if direction == "encode"
            else model.decode(z).sample
        )

    full, full_s, full_peak = meter(run)
    rows = [
        dict(
            direction=direction,
            chunk=None,
            time_s=full_s,
            peak=full_peak,
            time_ratio=1.0,
            peak_ratio=1.0,
            latent_max_err=0.0 if direction == "encode" else None,
            decoded_psnr=None if direction == "encode" else float("inf"),
        )
    ]
    for chunk in chunks:
        if direction == "encode":
            model.enable_tiling(plan=InferencePlan(chunk, 1, tile, tile, tile_levels))
        else:
            model.enable_tiling(plan=InferencePlan(16, chunk, tile, tile, tile_levels))
        out, seconds, peak = meter(run)
        rows.append(
            dict(
                direction=direction,
                chunk=chunk,
                time_s=seconds,
                peak=peak,
                time_ratio=seconds / full_s,
                peak_ratio=peak / full_peak,
                latent_max_err=float((out - full).abs().max()) if direction == "encode" else None,
                decoded_psnr=psnr(out, full) if direction == "decode" else None,
            )
        )
    model.disable_tiling()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default="sd21_tiny", help="sd21_tiny, sd3_tiny, sd21_full, sd3_full or a folder"
    )
    parser.add_argument("--size", default="17x360x640", help="TxHxW")
    parser.add_argument("--tile", type=int, default=0, help="tile size in pixels (0: whole frames)")
    parser.add_argument("--tile-levels", type=int, default=2)
    parser.add_argument(
        "--encode-chunks", type=int, nargs="*", default=[4, 8, 16], help="video frames per chunk"
    )
    parser.add_argument(
        "--decode-chunks", type=int, nargs="*", default=[1, 2, 4], help="latent frames per chunk"
    )
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "reference"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmark-chunks.json"))
    args = parser.parse_args()

    torch.set_grad_enabled(False)
    t, h, w = (int(v) for v in args.size.split("x"))
    model = load_model(args.model, args.shared).eval()
    x = synthetic_clip(t, h, w)
    meter = Meter(torch.device("cpu"), args.repeats)
    tile = args.tile or None
    results = {
        "model": args.model,
        "size": args.size,
        "tile": tile,
        "tile_levels": args.tile_levels,
        "torch": torch.__version__,
        "repeats": args.repeats,
        "command": " ".join(sys.argv),
        "rows": [],
    }
    print(
        f"{'direction':9} {'chunk':>5} {'time s':>8} {'x full':>7} {'peak MiB':>9} {'of full':>7} {'deviation':>10}"
    )
    for direction, chunks in (("encode", args.encode_chunks), ("decode", args.decode_chunks)):
        if not chunks:
            continue
        for row in sweep(model, x, meter, direction, chunks, tile, args.tile_levels):
            results["rows"].append(row)
            deviation = (
                f"{row['latent_max_err']:.3f} lat"
                if direction == "encode"
                else f"{row['decoded_psnr']:.1f} dB"
            )
            print(
                f"{direction:9} {row['chunk'] or 'full':>5} {row['time_s']:8.2f} {row['time_ratio']:6.2f}x "
                f"{row['peak'] / 2**20:9.0f} {row['peak_ratio']:7.0%} {deviation:>10}",
                flush=True,
            )
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

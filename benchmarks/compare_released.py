"""Full pass on the CPU: the released CV-VAE code against cvvae, same weights, same input.

The released implementation is not part of this project: check out github.com/AILab-CVC/CV-VAE
anywhere and pass the folder that holds its ``models/`` package with ``--released``. It needs
``einops``; its ``xformers`` attention (no CPU build exists) is replaced here, in this process
only, by PyTorch's ``scaled_dot_product_attention``. Both models run with chunking and tiling
off; their latents are checked to agree before timing. Encode and decode of the two are
interleaved, so that load from other processes hits both alike, and the median of all runs but
the first is reported.

    python benchmarks/compare_released.py --released /path/to/CV-VAE --out docs/bench/cpu-vs-released.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F

from cvvae import CVVAE

FLAVOURS = {"sd21": "CVVAEModel", "sd3": "CVVAESD3Model"}


def install_attention_shim() -> None:
    """Make ``xformers.ops.memory_efficient_attention`` importable, computed with SDPA."""
    ops = types.ModuleType("xformers.ops")
    ops.memory_efficient_attention = lambda q, k, v, attn_bias=None, op=None: (
        F.scaled_dot_product_attention(q, k, v)
    )
    package = types.ModuleType("xformers")
    package.ops, package.__version__ = ops, "0.0.0"
    sys.modules.setdefault("xformers", package)
    sys.modules.setdefault("xformers.ops", ops)


def time_both(released, ours, x: torch.Tensor, z: torch.Tensor, repeats: int) -> dict:
    """Median seconds of encode and decode for both models, runs interleaved."""
    times = {f"{who}_{what}": [] for who in ("released", "ours") for what in ("encode", "decode")}
    for _ in range(repeats):
        for who, model in (("released", released), ("ours", ours)):
            start = time.perf_counter()
            model.encode(x)
            times[f"{who}_encode"].append(time.perf_counter() - start)
            start = time.perf_counter()
            model.decode(z)
            times[f"{who}_decode"].append(time.perf_counter() - start)
    medians = {k: statistics.median(v[1:] if len(v) > 1 else v) for k, v in times.items()}
    for what in ("encode", "decode"):
        medians[f"{what}_ratio_ours_over_released"] = (
            medians[f"ours_{what}"] / medians[f"released_{what}"]
        )
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--released", type=Path, required=True, help="folder holding the released models/ package"
    )
    parser.add_argument(
        "--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "reference"
    )
    parser.add_argument("--size", default="33x256x256", help="TxHxW")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    install_attention_shim()
    sys.path.insert(0, str(args.released))
    import models.modeling_vae as released_module  # the released code, from --released

    torch.set_grad_enabled(False)
    torch.manual_seed(0)
    frames, height, width = (int(v) for v in args.size.split("x"))
    x = torch.rand(1, 3, frames, height, width) * 2 - 1
    results = {}
    for flavour, class_name in FLAVOURS.items():
        folder = args.shared / f"cvvae_{flavour}_tiny"
        released = getattr(released_module, class_name).from_pretrained(folder).eval()
        released.encode_n_frames_a_time = released.decode_n_frames_a_time = None
        released.pixel_tile_size = released.latent_tile_size = None
        ours = CVVAE.from_pretrained(folder).eval()
        z = ours.encode(x).latent_dist.mean
        gap = (released.encode(x).latent_dist.mean - z).abs().max().item()
        if gap > 1e-4:
            raise SystemExit(
                f"{flavour}: the two implementations disagree (max latent error {gap:.2e})"
            )
        results[flavour] = time_both(released, ours, x, z, args.repeats)
        r = results[flavour]
        print(
            f"{flavour}: encode {r['released_encode']:.2f} s released, {r['ours_encode']:.2f} s ours "
            f"(x{r['encode_ratio_ours_over_released']:.2f}); decode {r['released_decode']:.2f} s released, "
            f"{r['ours_decode']:.2f} s ours (x{r['decode_ratio_ours_over_released']:.2f})",
            flush=True,
        )
    if args.out:
        report = {
            "input": f"1x3x{args.size}",
            "threads": torch.get_num_threads(),
            "results": results,
        }
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

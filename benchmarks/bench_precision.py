"""float16 / bfloat16 against float32: finite outputs and their error, per reference case.

For each reference folder (tiny released-architecture models with the reference clips) and
for the full-size SD 2.1 architecture (random weights) on a synthetic clip, runs encode and
decode in each dtype (full pass, and chunked two-pass streaming) and reports whether outputs
are finite and their max abs / PSNR error against float32. A non-finite output raises
cvvae's NonFiniteError naming the first layer; that is recorded as the result.

    python benchmarks/bench_precision.py --device cuda --out docs/bench-precision.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))
from bench_inference import load_model, psnr, synthetic_clip  # noqa: E402

from cvvae import InferencePlan  # noqa: E402
from cvvae.inference.precision import NonFiniteError  # noqa: E402

DTYPES = ("float16", "bfloat16")


@torch.no_grad()
def run(model, x, chunked: bool):
    if chunked:
        model.enable_tiling(plan=InferencePlan(8, 2, encode_stats="two_pass"))
    else:
        model.disable_tiling()
    z = model.encode(x).latent_dist.mean
    return z, model.decode(z).sample


def compare(name: str, model, x, device, rows: list) -> None:
    base = torch.nn.Module.to(model, device, torch.float32)
    for chunked in (False, True):
        ref_z, ref_y = run(base, x.to(device), chunked)
        for dtype in DTYPES:
            m = torch.nn.Module.to(model, device, getattr(torch, dtype))
            row = dict(case=name, dtype=dtype, chunked=chunked)
            try:
                z, y = run(m, x.to(device, getattr(torch, dtype)), chunked)
                row.update(
                    finite=True,
                    latent_max_err=(z.float() - ref_z).abs().max().item(),
                    decoded_max_err=(y.float() - ref_y).abs().max().item(),
                    decoded_psnr=psnr(y, ref_y),
                )
            except NonFiniteError as error:
                row.update(finite=False, error=str(error))
            rows.append(row)
            print(row, flush=True)
        torch.nn.Module.to(model, device, torch.float32)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument(
        "--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "reference"
    )
    parser.add_argument(
        "--full-size", default="17x256x256", help="TxHxW of the full-size architecture case"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmark-precision.json"))
    args = parser.parse_args()
    device = torch.device(args.device)
    rows: list = []
    for flavour in ("sd21_tiny", "sd3_tiny"):
        model = load_model(flavour, args.shared).eval()
        ref = load_file(args.shared / f"cvvae_{flavour}" / "reference_io.safetensors")
        for case in ("video17", "video33"):
            compare(f"{flavour}/{case}", model, ref[f"{case}.input"], device, rows)
    t, h, w = (int(v) for v in args.full_size.split("x"))
    for flavour in ("sd21_full", "sd3_full"):
        compare(
            f"{flavour}/synthetic{args.full_size}",
            load_model(flavour, args.shared).eval(),
            synthetic_clip(t, h, w),
            device,
            rows,
        )
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    args.out.write_text(
        json.dumps({"device": device_name, "torch": torch.__version__, "rows": rows}, indent=1)
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

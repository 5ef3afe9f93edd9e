"""Time, peak memory and deviation from the full pass of encode/decode, per inference mode.

Modes: ``full`` (one pass, exact), ``reference`` (the released code's 576-px tiles and 16-frame
windows, see reference_tiling.py), and chunked streaming with 16-frame encoder chunks and
4-latent decoder chunks (the reference's window sizes; ``--chunks`` changes them): ``ours`` (the
default plan: running statistics in both directions), ``ours-two_pass-encoder`` (two passes for
the encoder) and ``ours-two_pass`` (two passes for both; see cvvae.inference.norms); with
``--compile`` also ``full-compiled`` (the full pass under ``torch.compile``, compiled in the warm-up);
``--tile`` / ``--tile-levels`` add tiled variants of our modes, ``--budget`` the plans that memory
budgets pick, ``--default`` the plan of ``enable_tiling()`` with no arguments.

With ``--device meta`` nothing is computed: the peak tensor bytes of every mode are counted at any
size in seconds (no times, no deviations), which is how the 720p peaks of full-size models are
checked without a GPU. Peak memory is ``torch.cuda.max_memory_allocated`` on a GPU, and on the CPU the most tensor bytes
alive at once (cvvae.inference.memory.PeakMemory: deterministic, unlike process RSS, which the
allocator and other processes blur), counted in a run of its own (see Meter). Times are medians
over ``--repeats`` runs after a warm-up.
Deviation: max |latent - full-pass latent|, and PSNR of each mode's decoded video against the
full pass decoding the full-pass latents.

    python benchmarks/bench_inference.py --quick            # a few minutes on the 2-core CPU
    python benchmarks/bench_inference.py --device cuda --out docs/bench-h100.json
    python benchmarks/bench_inference.py --device meta --models sd21_full --sizes 17x720x1280 --chunks 4 1 --tile 320
    python benchmarks/bench_inference.py --device meta --models sd21_full --sizes 17x720x1280 --ours --budget 4 8
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from reference_tiling import reference_decode, reference_encode  # noqa: E402

from cvvae import CVVAE, InferencePlan  # noqa: E402
from cvvae.inference.memory import PeakMemory  # noqa: E402
from cvvae.io import atomic_path  # noqa: E402
from cvvae.models.checkpoint import config_from_released  # noqa: E402

QUICK_SIZES = [(17, 256, 256), (33, 256, 256), (9, 720, 1280)]
FULL_SIZES = [
    (17, 256, 256),
    (33, 256, 256),
    (65, 256, 256),
    (129, 256, 256),
    (17, 720, 1280),
    (33, 720, 1280),
]
# our modes: (encoder statistics, decoder statistics); "ours" is the default plan
STATS = {
    "ours": ("running", "running"),
    "ours-two_pass-encoder": ("two_pass", "running"),
    "ours-two_pass": ("two_pass", "two_pass"),
}


def load_model(spec: str, shared: Path) -> CVVAE:
    """``sd21_tiny``/``sd3_tiny`` (reference weights), ``sd21_full``/``sd3_full`` (released
    architecture, random weights: speed and memory only), or a model folder."""
    if spec.endswith("_tiny"):
        return CVVAE.from_pretrained(shared / f"cvvae_{spec}")
    if spec.endswith("_full"):
        layouts = json.loads((shared / "released_state_dict_layouts.json").read_text())
        class_name = "CVVAEModel" if spec.startswith("sd21") else "CVVAESD3Model"
        torch.manual_seed(0)
        return CVVAE(
            **config_from_released(
                {"_class_name": class_name, **layouts[f"cvvae_{spec}"]["config"]}, spec
            )
        )
    return CVVAE.from_pretrained(spec)


def synthetic_clip(frames: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A smooth moving pattern with texture, ``(1, 3, T, H, W)`` in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(frames).view(frames, 1, 1).float()
    y = torch.linspace(0, 1, height).view(1, height, 1)
    x = torch.linspace(0, 1, width).view(1, 1, width)
    channels = []
    for c in range(3):
        fx, fy, v = (torch.rand(3, generator=g) * torch.tensor([12.0, 8.0, 0.05])).tolist()
        channels.append(torch.sin(2 * math.pi * (fx * (x + v * t) + fy * y) + c))
    video = (
        torch.stack(channels) * 0.7 + 0.2 * torch.rand(3, frames, height, width, generator=g) - 0.1
    )
    return video.clamp(-1, 1).unsqueeze(0)


class Meter:
    """Median time and peak memory of a callable on ``device`` (on ``meta`` the peak only: the
    time is None).

    The timed runs always follow a warm-up, even for one repeat: oneDNN / cuDNN set up each new
    shape once, and without it the first mode to meet a shape pays for every later one. Off the
    GPU that warm-up is the run that counts the peak under :class:`PeakMemory`, kept out of the
    timed runs: the meter sees every op in Python, which would slow the modes with many small
    ops (tiles) most.
    """

    def __init__(self, device: torch.device, repeats: int):
        self.device, self.repeats = device, repeats

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def __call__(self, fn):
        cuda = self.device.type == "cuda"
        if cuda:
            out, peak = fn(), 0
        else:
            with PeakMemory() as meter:
                out = fn()
            peak = meter.peak_bytes
        times = []
        for _ in range(0 if self.device.type == "meta" else self.repeats):
            out = None
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            self._sync()
            start = time.perf_counter()
            out = fn()
            self._sync()
            times.append(time.perf_counter() - start)
            if cuda:
                peak = max(peak, torch.cuda.max_memory_allocated() - base)
        return out, statistics.median(times) if times else None, peak


def psnr(a: torch.Tensor, b: torch.Tensor) -> float | None:
    if a.device.type == "meta":
        return None
    mse = (a.float() - b.float()).pow(2).mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(4 / mse)


@contextlib.contextmanager
def compiled_networks(model: CVVAE):
    """``model`` with its encoder and decoder replaced by ``torch.compile`` wrappers (the full pass
    runs compiled; chunked modes call the networks' parts and stay eager)."""
    encoder, decoder = model.encoder, model.decoder
    model.encoder, model.decoder = torch.compile(encoder), torch.compile(decoder)
    try:
        yield
    finally:
        model.encoder, model.decoder = encoder, decoder


def our_variants(
    ours: list[str], tiles: list[int], levels: list[int], orders: list[str]
) -> dict[str, tuple[str, int | None, int, str]]:
    """Mode label -> (statistics plan, tile size or None, tiled levels, tile order) for every
    combination; a tile of 0 means whole frames (labels get ``-tileN``, ``-LN`` for more than
    one level count, and ``-sequential``)."""
    variants = {}
    for name in ours:
        for tile in tiles or [0]:
            for n in levels if tile else levels[:1]:
                for order in orders if tile else orders[:1]:
                    label = (
                        name
                        + (f"-tile{tile}" if tile else "")
                        + (f"-L{n}" if tile and len(levels) > 1 else "")
                        + ("-sequential" if tile and order == "sequential" else "")
                    )
                    variants[label] = (name, tile or None, n, order)
    return variants


def run_modes(
    model: CVVAE,
    x: torch.Tensor,
    meter: Meter,
    chunks: tuple[int, int],
    with_reference: bool,
    ours: dict[str, tuple[str, int | None, int, str]],
    compile_full: bool = False,
    budgets: list[float] = (),
    default: bool = False,
) -> list[dict]:
    """Rows of time, peak and deviation: the full pass, then ``full-compiled`` and ``reference`` if
    asked, then each of ``ours`` (see :func:`our_variants`), then the plan of each memory budget
    (GiB; modes ``budgetN``), then ``default`` (``enable_tiling()``) if asked."""
    c = model.config.latent_channels
    rows = []
    model.disable_tiling()
    full_m, enc_t, enc_mem = meter(lambda: model.encode(x).latent_dist.parameters)
    full_z = full_m[:, :c]
    full_x, dec_t, dec_mem = meter(lambda: model.decode(full_z).sample)
    rows.append(
        dict(
            mode="full",
            encode_s=enc_t,
            decode_s=dec_t,
            encode_peak=enc_mem,
            decode_peak=dec_mem,
            latent_max_err=0.0,
            decoded_psnr=float("inf"),
        )
    )
    modes = {}
    if compile_full:
        modes["full-compiled"] = (
            lambda: model.encode(x).latent_dist.parameters,
            lambda z: model.decode(z).sample,
        )
    if with_reference:
        modes["reference"] = (
            lambda: reference_encode(model, x),
            lambda z: reference_decode(model, z),
        )
    for label, (name, tile, levels, order) in ours.items():
        enc_stats, dec_stats = STATS[name]
        plan = InferencePlan(
            *chunks,
            tile_height=tile,
            tile_width=tile,
            tile_levels=levels,
            tile_order=order,
            encode_stats=enc_stats,
            decode_stats=dec_stats,
        )

        def enc(plan=plan):
            model.enable_tiling(plan=plan)
            return model.encode(x).latent_dist.parameters

        def dec(z, plan=plan):
            model.enable_tiling(plan=plan)
            return model.decode(z).sample

        modes[label] = (enc, dec)
    for gib in budgets:

        def enc(gib=gib):
            model.set_memory_budget(gib)
            return model.encode(x).latent_dist.parameters

        def dec(z, gib=gib):
            model.set_memory_budget(gib)
            return model.decode(z).sample

        modes[f"budget{gib:g}"] = (enc, dec)
    if default:

        def enc():
            model.enable_tiling()
            return model.encode(x).latent_dist.parameters

        def dec(z):
            model.enable_tiling()
            return model.decode(z).sample

        modes["default"] = (enc, dec)
    for name, (enc, dec) in modes.items():
        try:
            with compiled_networks(model) if name == "full-compiled" else contextlib.nullcontext():
                m, enc_t, enc_mem = meter(enc)
                y, dec_t, dec_mem = meter(functools.partial(dec, m[:, :c]))
        except torch.OutOfMemoryError:
            rows.append(dict(mode=name, error="out of memory"))
            torch.cuda.empty_cache()
            continue
        err = None if m.device.type == "meta" else (m - full_m).abs().max().item()
        rows.append(
            dict(
                mode=name,
                encode_s=enc_t,
                decode_s=dec_t,
                encode_peak=enc_mem,
                decode_peak=dec_mem,
                latent_max_err=err,
                decoded_psnr=psnr(y, full_x),
            )
        )
        del m, y
    model.disable_tiling()
    return rows


def count_fused_attention_on_meta() -> None:
    """On ``meta`` PyTorch lowers ``scaled_dot_product_attention`` to its math path, which
    materialises the ``L x L`` score matrix that fused GPU and CPU kernels never allocate; route it
    to the fused (flash) kernel's meta function so the meter counts what real runs allocate."""
    math_path = F.scaled_dot_product_attention

    def fused(q, k, v, *args, **kwargs):
        if q.device.type != "meta" or args or kwargs:
            return math_path(q, k, v, *args, **kwargs)
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v)[0]

    F.scaled_dot_product_attention = fused


def fmt(value: float | None, width: int, digits: int) -> str:
    """``value`` right-aligned in ``width`` columns, or ``-`` when not measured."""
    return f"{'-':>{width}}" if value is None else f"{value:{width}.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="small grid, one repeat (CPU: minutes)"
    )
    parser.add_argument(
        "--models",
        nargs="+",
        default=["sd21_tiny"],
        help="sd21_tiny, sd3_tiny, sd21_full, sd3_full or a folder",
    )
    parser.add_argument("--sizes", nargs="*", default=None, help="TxHxW, e.g. 33x256x256")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument(
        "--channels-last", action="store_true", help="channels-last 3D memory format"
    )
    parser.add_argument(
        "--chunks",
        nargs=2,
        type=int,
        default=[16, 4],
        metavar=("FRAMES", "LATENTS"),
        help="our chunk sizes: video frames per encoder chunk, latents per decoder chunk "
        "(default: the reference's window sizes)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time the full pass under torch.compile (mode full-compiled; compiles in the warm-up)",
    )
    parser.add_argument(
        "--no-reference", action="store_true", help="skip the released-tiling baseline"
    )
    parser.add_argument(
        "--ours",
        nargs="*",
        default=list(STATS),
        choices=list(STATS),
        help="which of our modes to run",
    )
    parser.add_argument(
        "--tile",
        type=int,
        nargs="+",
        default=[0],
        help="our spatial tile sizes in pixels, one mode each (0: whole frames, the default)",
    )
    parser.add_argument(
        "--tile-levels",
        type=int,
        nargs="+",
        default=[2],
        help="how many full-resolution levels the tiles cut (InferencePlan), one mode each",
    )
    parser.add_argument(
        "--tile-order",
        nargs="+",
        default=["lockstep"],
        choices=["lockstep", "sequential"],
        help="tiles advancing together or one at a time (InferencePlan), one mode each",
    )
    parser.add_argument(
        "--default",
        action="store_true",
        help="also the plan of enable_tiling() with no arguments (mode default)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        nargs="*",
        default=[],
        help="memory budgets in GiB (CVVAE.set_memory_budget), one mode each",
    )
    parser.add_argument(
        "--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "reference"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmark-inference.json"))
    args = parser.parse_args()

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if device.type == "meta":
        count_fused_attention_on_meta()
    sizes = (
        [tuple(int(v) for v in s.split("x")) for s in args.sizes]
        if args.sizes
        else (QUICK_SIZES if args.quick else FULL_SIZES)
    )
    repeats = args.repeats or (1 if args.quick else 3)
    meter = Meter(device, repeats)
    results = {
        "chunks": args.chunks,
        "tile": args.tile,
        "tile_levels": args.tile_levels,
        "tile_order": args.tile_order,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "dtype": args.dtype,
        "repeats": repeats,
        "channels_last": args.channels_last,
        "compile": args.compile,
        "command": " ".join(sys.argv),
        "rows": [],
    }
    header = f"{'model':10} {'size':>14} {'mode':>22} {'enc s':>8} {'dec s':>8} {'enc MiB':>9} {'dec MiB':>9} {'lat err':>8} {'PSNR':>6}"
    print(header)
    torch.set_grad_enabled(False)
    for spec in args.models:
        model = torch.nn.Module.to(load_model(spec, args.shared), device, dtype).eval()
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last_3d)
        for t, h, w in sizes:
            x = synthetic_clip(t, h, w).to(device, dtype)
            if args.channels_last:
                x = x.contiguous(memory_format=torch.channels_last_3d)
            try:
                rows = run_modes(
                    model,
                    x,
                    meter,
                    tuple(args.chunks),
                    not args.no_reference,
                    our_variants(args.ours, args.tile, args.tile_levels, args.tile_order),
                    args.compile,
                    args.budget,
                    args.default,
                )
            except torch.OutOfMemoryError:
                rows = [dict(mode="full", error="out of memory")]
                torch.cuda.empty_cache()
            for row in rows:
                row.update(model=spec, frames=t, height=h, width=w)
                results["rows"].append(row)
                if "error" in row:
                    print(f"{spec:10} {t:>4}x{h}x{w:<5} {row['mode']:>22} {row['error']}")
                    continue
                print(
                    f"{spec:10} {t:>4}x{h}x{w:<5} {row['mode']:>22} {fmt(row['encode_s'], 8, 3)} "
                    f"{fmt(row['decode_s'], 8, 3)} {row['encode_peak'] / 2**20:9.1f} {row['decode_peak'] / 2**20:9.1f} "
                    f"{fmt(row['latent_max_err'], 8, 4)} {fmt(row['decoded_psnr'], 6, 1)}",
                    flush=True,
                )
            del x
            with atomic_path(args.out) as tmp:  # after each size: a run cut short keeps its rows
                tmp.write_text(json.dumps(results, indent=1))
        del model
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

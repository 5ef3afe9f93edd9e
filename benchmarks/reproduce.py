"""Small-scale reproduction of CV-VAE (arXiv 2405.20279) on the two clips in ../shared/data/videos.

Stages (each timed and printed):
  data      cut each clip's first 70% of frames (training portion) to small files under --out;
  image-vae train a tiny diffusers AutoencoderKL (8x spatial, 4 latent channels) on random crops
            of training frames with L1 + a small KL term (the project trainer trains 3D models);
  cv-vae    inflate it and train CV-VAE variants with the project's trainer (regularizations,
            psi modes, no regularization from the inflated and from a random start);
  evaluate  every variant and the image-VAE baselines on 17-frame segments of the held-out last
            30% of each clip, with cvvae.evaluation;
  report    reproduction.json, reproduction.md (table + claims), reproduction.png.

    python benchmarks/reproduce.py --out runs/repro --docs docs          # ~30 min, 2 shared CPU cores
    python benchmarks/reproduce.py --quick --out /tmp/repro --docs /tmp/repro   # seconds
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean

import torch
import yaml
from diffusers import AutoencoderKL

from cvvae import CVVAE
from cvvae.evaluation import evaluate_video, summarize_videos
from cvvae.evaluation.metrics import psnr
from cvvae.evaluation.sampling import fill_frames, keyframe_indices
from cvvae.io import read_video, write_video
from cvvae.models.inflation import config_from_image_vae
from cvvae.training import load_config, train

VIDEOS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "videos"
TRAIN_FRACTION = 0.7
EVAL_FRAMES = 17
SIZE = (72, 128)  # (H, W): 16:9 frames at 8x latent grid 9 x 16

# name -> (loss overrides, start): the paper's ablations at small scale.
VARIANTS = {
    "dec-random": ({"decoder_reg_weight": 1.0, "psi": "random"}, "inflated"),
    "dec-slice": ({"decoder_reg_weight": 1.0, "psi": "slice"}, "inflated"),
    "dec-mean": ({"decoder_reg_weight": 1.0, "psi": "mean"}, "inflated"),
    "dec-first": ({"decoder_reg_weight": 1.0, "psi": "first"}, "inflated"),
    "enc-random": ({"decoder_reg_weight": 0.0, "encoder_reg_weight": 1.0}, "inflated"),
    "dec+enc-random": ({"decoder_reg_weight": 1.0, "encoder_reg_weight": 1.0}, "inflated"),
    "noreg-inflated": ({"decoder_reg_weight": 0.0}, "inflated"),
    "noreg-random-init": ({"decoder_reg_weight": 0.0}, "random"),
}
REGULARIZED = [n for n in VARIANTS if not n.startswith("noreg")]


@dataclass
class Settings:
    """Sizes and step counts of one reproduction run."""

    image_channels: tuple[int, ...] = (16, 32, 32, 32)
    image_steps: int = 1000
    image_batch: int = 8
    crop: int = 64
    cv_steps: int = 200
    cv_batch: int = 2
    cv_frames: int = 9
    lr: float = 5e-4
    segments: int | None = None  # held-out segments per clip (None: all that fit)
    timings: dict = field(default_factory=dict)


QUICK = Settings(
    image_channels=(8, 8, 8, 8),
    image_steps=3,
    image_batch=2,
    crop=32,
    cv_steps=2,
    cv_frames=5,
    segments=1,
)


def stage(settings: Settings, name: str):
    """Context manager that times a stage, prints it and records it in ``settings.timings``."""

    class _Timer:
        def __enter__(self):
            self.start = time.perf_counter()
            print(f"[{name}] ...", flush=True)

        def __exit__(self, *exc):
            seconds = time.perf_counter() - self.start
            settings.timings[name] = seconds
            print(f"[{name}] {seconds:.1f} s", flush=True)

    return _Timer()


def split_frames(total: int) -> tuple[range, range]:
    """Training frames (first 70%) and held-out frames (the rest) of a clip with ``total``."""
    cut = int(total * TRAIN_FRACTION)
    return range(0, cut), range(cut, total)


def prepare_data(videos: list[Path], out: Path) -> tuple[list[dict], torch.Tensor]:
    """Write each clip's training frames at SIZE to ``out``; return per-clip split info and the
    training frames stacked as images ``(N, 3, H, W)``."""
    out.mkdir(parents=True, exist_ok=True)
    clips, frames = [], []
    for path in videos:
        video, info = read_video(path, size=SIZE)
        train_range, held_range = split_frames(video.shape[1])
        part = video[:, : len(train_range)]
        write_video(out / path.name, part, info.rate)
        frames.append(part.permute(1, 0, 2, 3))
        clips.append(
            {
                "source": path.name,
                "total_frames": video.shape[1],
                "train_frames": [train_range.start, train_range.stop - 1],
                "held_out_frames": [held_range.start, held_range.stop - 1],
                "fps": info.fps,
            }
        )
    return clips, torch.cat(frames)


def random_crops(frames: torch.Tensor, batch: int, crop: int, gen: torch.Generator) -> torch.Tensor:
    """``batch`` random ``crop``-square crops of random frames, randomly flipped left-right."""
    n, _, h, w = frames.shape
    out = []
    for _ in range(batch):
        i = int(torch.randint(n, (1,), generator=gen))
        y = int(torch.randint(h - crop + 1, (1,), generator=gen))
        x = int(torch.randint(w - crop + 1, (1,), generator=gen))
        patch = frames[i, :, y : y + crop, x : x + crop]
        out.append(patch.flip(-1) if torch.rand((), generator=gen) < 0.5 else patch)
    return torch.stack(out)


def make_image_vae(channels: tuple[int, ...], seed: int = 0) -> AutoencoderKL:
    """A tiny 4-level (8x spatial) AutoencoderKL with 4 latent channels, seeded."""
    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=channels,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
    )


def train_image_vae(
    frames: torch.Tensor, s: Settings, kl_weight: float
) -> tuple[AutoencoderKL, list]:
    """L1 + ``kl_weight`` * KL (per-element means), AdamW with cosine decay; returns the VAE and
    the loss every 50 steps."""
    vae = make_image_vae(s.image_channels)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * k / max(s.image_steps, 1)))
    )
    gen = torch.Generator().manual_seed(0)
    log = []
    for step in range(s.image_steps):
        x = random_crops(frames, s.image_batch, s.crop, gen)
        posterior = vae.encode(x).latent_dist
        x_hat = vae.decode(posterior.sample(gen)).sample
        l1 = (x_hat - x).abs().mean()
        kl = 0.5 * (posterior.mean**2 + posterior.var - 1.0 - posterior.logvar).mean()
        loss = l1 + kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == s.image_steps - 1:
            log.append([step, float(l1.detach())])
            print(f"  image-vae step {step} l1 {float(l1.detach()):.4f}", flush=True)
    return vae.eval(), log


@torch.no_grad()
def set_scaling_factor(vae: AutoencoderKL, frames: torch.Tensor) -> float:
    """Set ``scaling_factor`` to 1 / std of the latent means of up to 64 training frames."""
    std = float(vae.encode(frames[:: max(1, len(frames) // 64)]).latent_dist.mean.std())
    vae.register_to_config(scaling_factor=1.0 / std)
    return 1.0 / std


def base_config(out: Path, data: Path, image_vae: Path, s: Settings) -> dict:
    """The training config shared by all variants (no LPIPS weights here, no GAN)."""
    return {
        "seed": 0,
        "max_steps": s.cv_steps,
        "checkpoint_every": s.cv_steps,
        "keep_checkpoints": 1,
        "log_every": max(1, s.cv_steps // 8),
        "image_log_every": s.cv_steps,
        "num_val_clips": 0,
        "model": {"image_vae": str(image_vae)},
        "data": {
            "videos": [str(data)],
            "video_shapes": [[s.cv_frames, s.crop]],
            "image_size": s.crop,
            "frame_stride": [1, 2],
            "resize_range": [1.0, 1.1],
            "batch_size": s.cv_batch,
            "num_workers": 0,
        },
        "loss": {
            "kl_weight": 1e-5,
            "lpips_weight": 0.0,
            "gan_weight": 0.0,
            "decoder_reg_weight": 0.0,
            "encoder_reg_weight": 0.0,
        },
        "optim": {
            "lr": s.lr,
            "warmup_steps": max(1, s.cv_steps // 16),
            "min_lr_ratio": 0.1,
            "ema_decay": 0.95,
        },
    }


def save_random_init(image_vae: AutoencoderKL, folder: Path, seed: int = 0) -> Path:
    """A CV-VAE of the inflated architecture with PyTorch's default random initialisation."""
    torch.manual_seed(seed)
    CVVAE(**config_from_image_vae(image_vae)).save_pretrained(folder)
    return folder


def train_variants(out: Path, base: dict, image_vae: AutoencoderKL, s: Settings) -> dict:
    """Train every variant with ``cvvae.training.train``; returns name -> (folder, seconds)."""
    base_path = out / "base_config.yaml"
    base_path.write_text(yaml.safe_dump(base, sort_keys=False))
    random_init = save_random_init(image_vae, out / "random_init")
    trained = {}
    for name, (loss, start) in VARIANTS.items():
        overrides = [f"output_dir={out / name}", "resume=none"]
        overrides += [f"loss.{k}={v}" for k, v in loss.items()]
        if start == "random":
            overrides.append(f"model.init_from={random_init}")
        tick = time.perf_counter()
        folder = train(load_config(base_path, overrides))
        trained[name] = (folder, time.perf_counter() - tick)
        print(f"  {name}: {trained[name][1]:.1f} s -> {folder}", flush=True)
    return trained


def held_out_segments(videos: list[Path], clips: list[dict], s: Settings) -> list[dict]:
    """Consecutive non-overlapping EVAL_FRAMES-frame segments inside each clip's held-out part."""
    segments = []
    for path, clip in zip(videos, clips, strict=True):
        first, last = clip["held_out_frames"]
        count = (last - first + 1) // EVAL_FRAMES
        for k in range(count if s.segments is None else min(count, s.segments)):
            start = first + k * EVAL_FRAMES
            segments.append(
                {"path": path, "source": path.name, "frames": [start, start + EVAL_FRAMES - 1]}
            )
    return segments


def motion_psnr(clip: torch.Tensor) -> float:
    """PSNR of the in-between frames of ``clip`` ``(3, 1+4k, H, W)`` filled by linear
    interpolation of its own uncoded keyframes: what motion alone costs uniform sampling."""
    keys = keyframe_indices(clip.shape[1])
    between = torch.ones(clip.shape[1], dtype=torch.bool)
    between[keys] = False
    filled = fill_frames(clip[:, keys], "linear")
    return float(psnr(clip[:, between], filled[:, between]).mean())


def evaluate_all(segments: list[dict], models: dict, image_vae: AutoencoderKL) -> dict:
    """Evaluate every model and the baselines on every segment; summary, per-clip PSNR and
    per-clip motion PSNR (:func:`motion_psnr`)."""
    results, motion = [], []
    for seg in segments:
        clip, _ = read_video(seg["path"], start=seg["frames"][0], num_frames=EVAL_FRAMES, size=SIZE)
        results.append(evaluate_video(clip, models, image_vae, baselines=True))
        motion.append(motion_psnr(clip))
        print(f"  evaluated {seg['source']} frames {seg['frames']}", flush=True)
    per_clip = [{name: float(r.scores[name].psnr.mean()) for name in r.scores} for r in results]
    return {
        "summary": summarize_videos(results),
        "per_clip_psnr": per_clip,
        "per_clip_motion_psnr": motion,
    }


def bars(summary: dict, model: str) -> dict:
    """Issue 4's three bars for ``model``: margins in dB and whether each is met."""
    m = summary["methods"]
    uniform = max(m["uniform-repeat"]["psnr"], m["uniform-linear"]["psnr"])
    vs_uniform = m[model]["psnr"] - uniform
    vs_image = m["image-vae-per-frame"]["psnr"] - m[model]["psnr"]
    gaps = {
        mode: v["psnr_gap"]
        for mode, v in summary["compatibility"][model].items()
        if isinstance(v, dict)
    }
    return {
        "beats_uniform_db": vs_uniform,
        "beats_uniform_by_2db": vs_uniform >= 2.0,
        "below_image_vae_db": vs_image,
        "within_1_5db_of_image_vae": vs_image <= 1.5,
        "image_decoder_gap_db": gaps,
        "image_decoder_within_3db": {mode: gap <= 3.0 for mode, gap in gaps.items()},
    }


def pick_best(summary: dict) -> str:
    """Best held-out PSNR among regularized variants whose image-decoder gaps are all <= 3 dB
    (among all regularized variants if none is that compatible)."""
    comp = summary["compatibility"]
    compatible = [
        n
        for n in REGULARIZED
        if max(v["psnr_gap"] for v in comp[n].values() if isinstance(v, dict)) <= 3.0
    ]
    return max(compatible or REGULARIZED, key=lambda n: summary["methods"][n]["psnr"])


def plot(summary: dict, path: Path, best: str) -> None:
    """Bar chart of PSNR per method and per-frame PSNR curves of the key methods."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = summary["methods"]
    names = sorted(methods, key=lambda n: methods[n]["psnr"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    colors = [
        "tab:gray"
        if n in ("image-vae-per-frame", "uniform-repeat", "uniform-linear")
        else "tab:blue"
        for n in names
    ]
    left.barh(names, [methods[n]["psnr"] for n in names], color=colors)
    lo = min(methods[n]["psnr"] for n in names) - 1.0
    left.set_xlim(lo, max(methods[n]["psnr"] for n in names) + 0.5)
    left.set_xlabel("PSNR (dB), held-out segments")
    left.set_title("reconstruction (grey: image-VAE baselines)")
    for n in (best, "noreg-random-init", "image-vae-per-frame", "uniform-linear", "uniform-repeat"):
        if n in methods:
            right.plot(methods[n]["psnr_per_frame"], marker=".", label=n)
    for k in range(0, len(methods[names[0]]["psnr_per_frame"]), 4):
        right.axvline(k, color="0.85", lw=0.8, zorder=0)
    right.set_xlabel("frame in segment (grey: frames uniform sampling keeps)")
    right.set_ylabel("PSNR (dB)")
    right.legend(fontsize=8)
    right.set_title("per-frame PSNR, mean over held-out segments")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fmt(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def results_table(data: dict) -> str:
    """One row per method: latent frames, PSNR, SSIM, image-decoder compatibility."""
    summary, best = data["summary"], data["best"]
    m, comp = summary["methods"], summary["compatibility"]
    lines = [
        "| method | latent frames per 17 | PSNR | SSIM | image decoder on its latents, PSNR"
        " (gap to image VAE): slice / mean / first | first-frame latent rel. error |",
        "|---|---|---|---|---|---|",
    ]
    for name in sorted(m, key=lambda n: -m[n]["psnr"]):
        row = m[name]
        dec, err = "-", "-"
        if name in comp:
            c = comp[name]
            dec = " / ".join(
                f"{fmt(c[k]['psnr'])} ({fmt(c[k]['psnr_gap'])})" for k in ("slice", "mean", "first")
            )
            err = fmt(c["first_frame_latent_error"], 3)
        label = f"**{name}**" if name == best else name
        lines.append(
            f"| {label} | {row['latent_frames']} | {fmt(row['psnr'])} | {fmt(row['ssim'], 3)}"
            f" | {dec} | {err} |"
        )
    own = {k: comp[best][k]["image_vae_psnr"] for k in ("slice", "mean", "first")}
    lines += [
        "",
        "The image VAE's own round trip of the same psi(X) frames (the reference for the"
        " gap): " + ", ".join(f"{k} {fmt(v)} dB" for k, v in own.items()) + ".",
    ]
    return "\n".join(lines)


def order(names: list[str], m: dict) -> str:
    """Names sorted by PSNR, best first, with their PSNR."""
    ranked = sorted(names, key=lambda n: -m[n]["psnr"])
    return " > ".join(f"{n} {m[n]['psnr']:.2f}" for n in ranked)


NOISE_DB = 0.1


def spread(names: list[str], m: dict) -> float:
    """Best minus worst PSNR among ``names``."""
    values = [m[n]["psnr"] for n in names]
    return max(values) - min(values)


def per_video(data: dict, names: list[str]) -> list[str]:
    """Mean PSNR per source video of ``names`` (its segments averaged)."""
    rows = ["| video | segments | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for source in dict.fromkeys(g["source"] for g in data["eval"]["segments"]):
        idx = [i for i, g in enumerate(data["eval"]["segments"]) if g["source"] == source]
        means = [sum(data["per_clip_psnr"][i][n] for i in idx) / len(idx) for n in names]
        rows.append(f"| `{source}` | {len(idx)} | " + " | ".join(f"{v:.2f}" for v in means) + " |")
    return rows


def claims(data: dict) -> list[str]:
    """Each of the paper's claims with our numbers and a plain verdict."""
    summary, best = data["summary"], data["best"]
    m, comp = summary["methods"], summary["compatibility"]
    motion = data["per_clip_motion_psnr"]
    verdict = {True: "**holds**", False: "**does not hold**"}
    out = [
        f"One seed and {len(data['eval']['segments'])} segments: PSNR differences under about"
        f" {NOISE_DB} dB between variants are not resolved by this run and are marked so.",
        "",
    ]
    reg = ["dec-random", "enc-random", "dec+enc-random"]
    ok = m["dec-random"]["psnr"] >= max(m["enc-random"]["psnr"], m["dec+enc-random"]["psnr"])
    other = max(m["enc-random"]["psnr"], m["dec+enc-random"]["psnr"])
    resolved = abs(m["dec-random"]["psnr"] - other) >= NOISE_DB
    verdict_reg = verdict[ok] if resolved else "**not resolved**"
    gaps = {n: comp[n]["slice"]["psnr_gap"] for n in reg}
    out.append(
        f"- Decoder-based regularization is the best choice (paper, WebVid PSNR: decoder 28.0 >"
        f" both 27.6 > encoder 26.0): {verdict_reg} for reconstruction here ({order(reg, m)});"
        " image-decoder gap (slice): "
        + ", ".join(f"{n} {fmt(g)} dB" for n, g in gaps.items())
        + "."
    )
    psis = ["dec-random", "dec-mean", "dec-slice", "dec-first"]
    ranked = sorted(psis, key=lambda n: -m[n]["psnr"])
    if spread(psis, m) < NOISE_DB:
        verdict_psi = "**not resolved**"
    else:
        verdict_psi = (
            f"random best {verdict[ranked[0] == 'dec-random']}, order {verdict[ranked == psis]}"
        )
    out.append(
        f"- psi ranking (paper: random 28.4 > mean 27.9 > slice 27.7 > first 26.6): {verdict_psi}"
        f" ({order(psis, m)}; spread {spread(psis, m):.2f} dB)."
    )
    noreg = ["noreg-inflated", "noreg-random-init"]
    worst_reg = max(comp[n][k]["psnr_gap"] for n in psis for k in ("slice", "mean", "first"))
    ok = worst_reg <= 3.0
    out.append(
        f"- Compatibility (the image decoder understands the video VAE's latents): {verdict[ok]}"
        f" with decoder regularization: the largest gap over the psi variants and the three"
        f" mappings is {worst_reg:.2f} dB (bar: 3 dB); without regularization the gap (slice) is "
        + ", ".join(f"{n} {fmt(comp[n]['slice']['psnr_gap'])} dB" for n in noreg)
        + "."
    )
    uniform = max(m["uniform-repeat"]["psnr"], m["uniform-linear"]["psnr"])
    margin = m[best]["psnr"] - uniform
    out.append(
        f"- CV-VAE beats uniform frame sampling at the same latent count: {verdict[margin > 0]}"
        f" ({best} {m[best]['psnr']:.2f} dB vs the better fill {uniform:.2f} dB, {margin:+.2f} dB;"
        f" issue 4's bar of 2 dB {'met' if margin >= 2 else 'not met'}). The held-out footage"
        f" barely moves at this size and frame rate: repeating every 4th frame loses only"
        f" {m['image-vae-per-frame']['psnr'] - m['uniform-repeat']['psnr']:.2f} dB against coding"
        " every frame, and linear interpolation of the *uncoded* keyframes already reproduces the"
        f" in-between frames at {mean(motion):.1f} dB (per segment {min(motion):.1f}-"
        f"{max(motion):.1f} dB), far above any codec here (~{m['image-vae-per-frame']['psnr']:.0f}"
        " dB). Uniform sampling's error is then almost all the image VAE's own, so no codec close"
        " to that image VAE can beat it by 2 dB on this footage: the bar needs segments whose"
        " motion costs interpolation about as much as coding does (a motion PSNR near the"
        " codec's PSNR)."
    )
    gap = m["image-vae-per-frame"]["psnr"] - m[best]["psnr"]
    out.append(
        f"- CV-VAE stays close to the image VAE frame by frame (paper: 28.5 vs 28.9 dB on WebVid):"
        f" {verdict[gap <= 1.5]} by issue 4's 1.5 dB bar (image-vae-per-frame"
        f" {m['image-vae-per-frame']['psnr']:.2f} dB minus {best} = {gap:.2f} dB; CV-VAE uses"
        " 5 latent frames per 17, the image VAE 17)."
    )
    diff = m["noreg-inflated"]["psnr"] - m["noreg-random-init"]["psnr"]
    out.append(
        f"- Inflating the image VAE is a better start than random initialisation at the same"
        f" budget: {verdict[diff > 0]} (noreg-inflated {m['noreg-inflated']['psnr']:.2f} dB vs"
        f" noreg-random-init {m['noreg-random-init']['psnr']:.2f} dB)."
    )
    return out


def markdown(data: dict) -> str:
    """The whole report: setup, protocol, table, claims, issue 4's bars, timings."""
    s, t = data["settings"], data["timings_s"]
    clips = "; ".join(
        f"`{c['source']}` ({c['total_frames']} frames): training frames {c['train_frames'][0]}-"
        f"{c['train_frames'][1]}, held out {c['held_out_frames'][0]}-{c['held_out_frames'][1]}"
        for c in data["clips"]
    )
    segs = ", ".join(
        f"{Path(g['source']).stem} {g['frames'][0]}-{g['frames'][1]}"
        for g in data["eval"]["segments"]
    )
    h, w = data["eval"]["size_hw"]
    best, b = data["best"], data["bars"]
    lines = [
        "# CV-VAE at small scale: reproduction" + (" (--quick smoke run)" if data["quick"] else ""),
        "",
        "Made by `python benchmarks/reproduce.py --out runs/repro --docs docs` (one script:"
        " data, image VAE, CV-VAE variants, evaluation, this report). Numbers are for this run"
        " only: one seed, two clips, tiny models, CPU.",
        "",
        "## Setup",
        "",
        f"- Data: {clips}. Every frame is resized to cover {h}x{w} and center-cropped"
        f" (`cvvae.io.read_video`); the training portions are written to `runs/repro/train_videos`.",
        f"- Image VAE: diffusers `AutoencoderKL`, 4 levels (8x spatial), 4 latent channels,"
        f" channels {list(s['image_channels'])}, 1 ResNet block per level, 8 norm groups,"
        f" {data['image_vae']['params']:,} parameters; {s['image_steps']} AdamW steps (lr 1e-3,"
        f" cosine to 1e-4) of L1 + 1e-5 KL on batches of {s['image_batch']} random"
        f" {s['crop']}x{s['crop']} crops of training frames (random flips); latent scaling factor"
        f" {data['image_vae']['scaling_factor']:.3f} (1/std of latents). The project trainer"
        " trains 3D models only, so this loop is in the script.",
        f"- CV-VAE variants ({data['cv_params']:,} parameters, inflated from the image VAE with"
        " `cvvae.inflate_from_image_vae`, or the same architecture with PyTorch's default random"
        f" initialisation for `noreg-random-init`): `cvvae.training.train`, {s['cv_steps']} steps,"
        f" batch {s['cv_batch']} clips of {s['cv_frames']}x{s['crop']}x{s['crop']} (frame stride"
        f" 1-2, resize 1.0-1.1, random crop), L1 + 1e-5 KL, AdamW lr {s['lr']:g} (warmup, cosine"
        " to 10%), EMA 0.95 (exported), no LPIPS (no weights offline), no GAN. Regularization"
        " weight 1.0, L1 distance. `dec-*`: decoder-based with that psi; `enc-random`:"
        " encoder-based; `dec+enc-random`: both; `noreg-*`: none.",
        f"- Evaluation (`cvvae.evaluation.evaluate_video` + `summarize_videos`): {len(data['eval']['segments'])}"
        f" held-out segments of 17 consecutive frames (stride 1) at {h}x{w}: {segs}. Posterior"
        " means, outputs clamped, PSNR/SSIM per frame averaged over segments. Baselines from the"
        " same image VAE: every frame (17 latents), uniform sampling of frames 0, 4, .., 16"
        " (5 latents, like CV-VAE) filled by repetition or linear interpolation.",
        "",
        "## Results",
        "",
        results_table(data),
        "",
        "Per source video (PSNR):",
        "",
        *per_video(
            data,
            [
                data["best"],
                "dec-random",
                "noreg-random-init",
                "image-vae-per-frame",
                "uniform-linear",
                "uniform-repeat",
            ],
        ),
        "",
        "![PSNR per method and per frame](reproduction.png)",
        "",
        "## The paper's claims at this scale",
        "",
        *claims(data),
        "",
        f"## Issue 4's bars (the bundled model: `{best}`, the best held-out PSNR among regularized"
        " variants whose image-decoder gaps are all <= 3 dB)",
        "",
        "| model | beats uniform sampling (>= 2 dB) | below image VAE per frame (<= 1.5 dB) |"
        " image decoder gap (<= 3 dB) slice / mean / first |",
        "|---|---|---|---|",
    ]
    for name, bar in b.items():
        gaps = bar["image_decoder_gap_db"]
        lines.append(
            f"| {name} | {bar['beats_uniform_db']:+.2f} dB, {'met' if bar['beats_uniform_by_2db'] else 'not met'}"
            f" | {bar['below_image_vae_db']:.2f} dB, {'met' if bar['within_1_5db_of_image_vae'] else 'not met'}"
            " | "
            + " / ".join(f"{gaps[k]:.2f}" for k in ("slice", "mean", "first"))
            + (", met" if all(bar["image_decoder_within_3db"].values()) else ", not met")
            + " |"
        )
    lines += [
        "",
        "The bundled model was picked on the held-out segments themselves, so its numbers are"
        " slightly optimistic; all variants share data, steps and seed.",
        "",
        "## Time on this machine",
        "",
        "Two shared CPU cores, one torch thread (`--threads 1`, the default: with another job on"
        " the other core, two threads ran 10-30x slower per step). Compute for the whole run:",
        "",
        "| stage | seconds |",
        "|---|---|",
        *[f"| {k} | {v:.0f} |" for k, v in t.items()],
        "",
        "Per variant (training only): "
        + ", ".join(f"{n} {v['train_seconds']:.0f} s" for n, v in data["variants"].items())
        + ".",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("runs/repro"), help="work folder")
    parser.add_argument(
        "--docs",
        type=Path,
        default=None,
        help="where reproduction.{md,json,png} go (default: --out)",
    )
    parser.add_argument("--videos", type=Path, nargs="+", default=None)
    parser.add_argument("--quick", action="store_true", help="tiny sizes and steps (smoke test)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    random.seed(0)
    s = Settings() if not args.quick else QUICK
    s.timings = {}
    videos = sorted(args.videos or VIDEOS.glob("*.mp4"))
    out, docs = args.out, args.docs or args.out
    out.mkdir(parents=True, exist_ok=True)
    docs.mkdir(parents=True, exist_ok=True)
    total = time.perf_counter()

    with stage(s, "data"):
        clips, frames = prepare_data(videos, out / "train_videos")
    with stage(s, "image-vae"):
        image_vae, image_log = train_image_vae(frames, s, kl_weight=1e-5)
        scale = set_scaling_factor(image_vae, frames)
        image_vae.save_pretrained(out / "image_vae")
    with stage(s, "cv-vae"):
        base = base_config(out, out / "train_videos", out / "image_vae", s)
        trained = train_variants(out, base, image_vae, s)
    with stage(s, "evaluate"):
        models = {
            name: CVVAE.from_pretrained(folder).eval() for name, (folder, _) in trained.items()
        }
        segments = held_out_segments(videos, clips, s)
        with torch.no_grad():
            evaluation = evaluate_all(segments, models, image_vae)
    summary = evaluation["summary"]
    best = pick_best(summary)
    data = {
        "settings": {k: v for k, v in vars(s).items() if k != "timings"},
        "quick": args.quick,
        "clips": clips,
        "eval": {
            "frames": EVAL_FRAMES,
            "size_hw": list(SIZE),
            "stride": 1,
            "segments": [{"source": g["source"], "frames": g["frames"]} for g in segments],
        },
        "image_vae": {
            "scaling_factor": scale,
            "loss_log": image_log,
            "params": sum(p.numel() for p in image_vae.parameters()),
        },
        "variants": {
            n: {
                "folder": str(f),
                "train_seconds": t,
                "loss": VARIANTS[n][0],
                "start": VARIANTS[n][1],
            }
            for n, (f, t) in trained.items()
        },
        "cv_params": sum(p.numel() for p in next(iter(models.values())).parameters()),
        "summary": summary,
        "per_clip_psnr": evaluation["per_clip_psnr"],
        "per_clip_motion_psnr": evaluation["per_clip_motion_psnr"],
        "best": best,
        "bars": {
            best: bars(summary, best),
            "noreg-random-init": bars(summary, "noreg-random-init"),
        },
    }
    with stage(s, "report"):
        plot(summary, docs / "reproduction.png", best)
        data["timings_s"] = dict(s.timings)
        data["timings_s"]["total"] = time.perf_counter() - total
        (docs / "reproduction.json").write_text(json.dumps(data, indent=1, default=str))
        (docs / "reproduction.md").write_text(markdown(data))
        if (out / "best").exists():
            shutil.rmtree(out / "best")
        shutil.copytree(trained[best][0], out / "best")
    print(results_table(data))
    print("\n".join(claims(data)))
    print("timings (s):", json.dumps({k: round(v, 1) for k, v in data["timings_s"].items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

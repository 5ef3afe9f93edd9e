"""Make the bundled model pair on the real footage of ../shared/data: a small image VAE
(diffusers ``AutoencoderKL``, SD's layout: 8x down, 4 latent channels) and a CV-VAE inflated from
it and trained with the paper's recipe. Every stage resumes where it stopped.

Stages:
  data       the held-out split (photos, the last 30% of every clip), training photos and clip
             frames cached as uint8 tensors, training clip portions written as videos + a list;
  image-vae  L1 + SSIM + KL on random crops at several scales of training photos and frames
             (flips, scale jitter), AdamW, EMA; checkpoints every few minutes, exact resume;
             exports the EMA or raw weights with the scale of the training latents; then the
             phases of IMAGE_VAE_PHASES after the first, each fine-tuning the one before;
  eval-image the image VAE on the held-out photos and frames at 128x128 (PSNR, SSIM, mean
             signed error per channel) and the CV-VAE on the photos as one-frame videos,
             written as JSON, and a picture of the held-out photos (top row) and each image
             VAE phase's round trip of them (a row each);
  cv-vae     the CV-VAE inflated from the image VAE and trained with ``cvvae.training.train``
             in the phases of CVVAE_PHASES, each from the previous one's model;
  eval-video the CV-VAE against uniform frame sampling and the image VAE on every frame, on the
             held-out segments of PROTOCOLS, written as JSON;
  ablations  the paper's latent-regularization variants (ABLATIONS), same steps and batches;
  bundle     the pair in float16 into the package's assets (the bundled default model).

    python benchmarks/bundled_model.py data --out runs/bundled
    python benchmarks/bundled_model.py image-vae --out runs/bundled
    python benchmarks/bundled_model.py eval-image --out runs/bundled
    python benchmarks/bundled_model.py cv-vae --out runs/bundled
    python benchmarks/bundled_model.py eval-video --out runs/bundled
    python benchmarks/bundled_model.py bundle --out runs/bundled
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
import yaml
from diffusers import AutoencoderKL
from safetensors.torch import load_file, save_file

from cvvae import CVVAE
from cvvae.evaluation import evaluate_video, summarize_videos
from cvvae.evaluation.codecs import image_reconstruct
from cvvae.evaluation.metrics import psnr, ssim
from cvvae.evaluation.sampling import fill_frames, keyframe_indices
from cvvae.io import atomic_path, read_image, read_video, write_image, write_video
from cvvae.training import load_config, train
from cvvae.training.data import rotate_hue
from cvvae.training.latent_reg import psi

SHARED = Path(os.environ.get("CVVAE_SHARED", Path(__file__).resolve().parents[2] / "shared"))
ASSETS = Path(__file__).resolve().parents[1] / "src" / "cvvae" / "assets"
TRAIN_FRACTION = 0.7  # the first 70% of every clip's frames are for training
GAP = 8  # frames dropped between a clip's training and held-out parts
FRAME_SIDE = 256  # short side of cached training frames (eval is at 128)
PHOTO_SIDE = 384  # short side of cached training photos
EVAL_SIZE = (128, 128)
PIECE_FRAMES = 80  # CV-VAE training videos are cut into pieces this long (half overlapping)
# the clips that move, CV-VAE's training videos -> rows per piece in the list (a sampling weight)
MOVING_CLIPS = {"Megamind.avi": 2, "vtest.avi": 1, "tree.avi": 1}
# the CV-VAE's video lists -> rows per piece of the other (nearly static) clips
VIDEO_LISTS = {"train_videos.csv": 0, "train_videos_all.csv": 1}
EVAL_FRAMES = 17


class CVVAEPhase(NamedTuple):
    """One CV-VAE training phase: ``start`` is the phase whose model it starts from (None: the
    inflated image VAE), ``image_vae`` the IMAGE_VAE_PHASES entry of its latent regularization,
    ``hue_rotation`` the share of hue-rotated samples; a new ``seed`` draws other batches;
    ``psi`` the target of the decoder latent regularization (the paper's ``random`` by default;
    ``slice`` picks frame ``psi_slice_offset`` of each group of four, ``blend`` mixes that frame,
    ``psi_slice_share`` of it, with the group's mean) and ``decoder_reg_weight`` its weight;
    ``freeze_encoder`` trains the decoder only (the latents stay the previous phase's);
    ``videos`` its VIDEO_LISTS entry (the moving clips only by default)."""

    steps: int
    start: str | None
    lr: float
    ema: float
    seed: int
    image_vae: str
    hue_rotation: float
    psi: str = "random"
    psi_slice_offset: int = 3
    psi_slice_share: float = 0.5
    decoder_reg_weight: float = 1.0
    freeze_encoder: bool = False
    videos: str = "train_videos.csv"


# the CV-VAE's training phases in order (phase_config): output folder -> CVVAEPhase
CVVAE_PHASES = {
    "cvvae": CVVAEPhase(1500, None, 2e-4, 0.98, 0, "image_vae", 0.0),
    "cvvae_long": CVVAEPhase(2000, "cvvae", 1.5e-4, 0.995, 0, "image_vae", 0.0),
    "cvvae_phase3": CVVAEPhase(3000, "cvvae_long", 1e-4, 0.998, 3, "image_vae", 0.0),
    "cvvae_phase4": CVVAEPhase(1200, "cvvae_phase3", 5e-5, 0.998, 4, "image_vae", 0.0),
    "cvvae_phase5": CVVAEPhase(2000, "cvvae_phase4", 1e-4, 0.998, 5, "image_vae_colour", 0.5),
    "cvvae_phase6": CVVAEPhase(3000, "cvvae_phase5", 7e-5, 0.998, 6, "image_vae_colour", 0.5),
    # psi slice moves each latent frame from near the mean of its four frames towards the last;
    # a short phase leaves it between the two (image-decoder gaps about 1 dB to each)
    "cvvae_phase7": CVVAEPhase(
        950, "cvvae_phase6", 5e-5, 0.998, 7, "image_vae_colour", 0.5, psi="slice"
    ),
    # the nearly static clips join the videos (the CV-VAE was weakest there), and psi targets
    # the third frame of each group of four: between phase 7's last and psi random's any
    "cvvae_phase8": CVVAEPhase(
        600,
        "cvvae_phase7",
        3e-5,
        0.998,
        8,
        "image_vae_colour",
        0.5,
        psi="slice",
        psi_slice_offset=2,
        videos="train_videos_all.csv",
    ),
    # the target between the last frame of each group (psi slice) and its mean, weighted twice:
    # one latent frame the image decoder reads as either within 1 dB
    "cvvae_phase9": CVVAEPhase(
        600,
        "cvvae_phase8",
        5e-5,
        0.998,
        9,
        "image_vae_colour",
        0.5,
        psi="blend",
        psi_slice_share=0.6,
        decoder_reg_weight=2.0,
        videos="train_videos_all.csv",
    ),
    # the decoder alone, so the latent frames (and the image-decoder gaps) stay phase 9's
    "cvvae_phase10": CVVAEPhase(
        300,
        "cvvae_phase9",
        2e-5,
        0.99,
        10,
        "image_vae_colour",
        0.5,
        decoder_reg_weight=0.0,
        freeze_encoder=True,
        videos="train_videos_all.csv",
    ),
}
FINAL_PHASE = list(CVVAE_PHASES)[-1]
# protocol name -> (clips, frame stride): held-out 17-frame segments at 128x128
PROTOCOLS = {
    "moving-stride2": (["Megamind.avi", "vtest.avi"], 2),
    "moving-stride1": (["Megamind.avi", "vtest.avi"], 1),
    "pexels-stride2": (
        ["pexels_19216241_1280x720_30fps.mp4", "pexels_4896510_1280x720_30fps.mp4"],
        2,
    ),
}


@dataclass
class ImageVAESettings:
    """Architecture and schedule of the image VAE."""

    channels: tuple[int, ...] = (32, 64, 96, 96)
    norm_groups: int = 16
    steps: int = 5000
    batch: int = 8
    crop: int = 128
    lr: float = 5e-4
    warmup: int = 200
    min_lr_ratio: float = 0.05
    kl_weight: float = 1e-6
    ssim_weight: float = 0.2
    ema_decay: float = 0.999
    photo_ratio: float = 0.5  # share of crops taken from photos (the rest from clip frames)
    scale_range: tuple[float, float] = (128.0, 320.0)  # short side before cropping (log-uniform)
    checkpoint_every: int = 200
    seed: int = 0
    hue_rotation: float = 0.0  # share of crops with a random hue turn (a colour augmentation)
    init_from: str | None = None  # the image VAE phase to fine-tune (its latent scale is kept)


# the image VAE's training phases in order (output folder -> settings): the first from scratch,
# the second fine-tunes all of it with hue-rotated crops so that colours it never saw (saturated
# greens, yellows) come back right; the CV-VAE phases after it learn its (slightly moved) latents
IMAGE_VAE_PHASES = {
    "image_vae": ImageVAESettings(),
    "image_vae_colour": ImageVAESettings(
        steps=1500,
        lr=2e-4,
        warmup=100,
        ema_decay=0.995,
        seed=1,
        hue_rotation=0.5,
        init_from="image_vae",
    ),
}
FINAL_IMAGE_VAE = list(IMAGE_VAE_PHASES)[-1]


def cvvae_config(out: Path, steps: int, loss: dict | None = None) -> dict:
    """The CV-VAE training config (the paper's recipe at this scale): inflated from
    ``out/image_vae``, decoder latent regularization with psi random, joint image + video
    batches, clips with frame strides 1-4, a PatchGAN late in training; ``loss`` overrides."""
    data = out / "data"
    return {
        "output_dir": str(out / "cvvae"),
        "seed": 0,
        "max_steps": steps,
        "mixed_precision": "no",
        "checkpoint_every": 50,
        "keep_checkpoints": 2,
        "log_every": 10,
        "image_log_every": 500,
        "num_val_clips": 2,
        "model": {"image_vae": str(out / "image_vae")},
        "data": {
            "videos": [str(data / "train_videos.csv")],
            "images": [str(data / "photos")],
            "video_shapes": [[9, 64], [17, 64]],
            "image_size": 64,
            "image_ratio": 0.2,
            "frame_stride": [1, 4],
            "resize_range": [2.0, 3.5],  # short side 128-224: the evaluation's scale to 1.75x
            "batch_size": 2,
            "num_workers": 1,
        },
        "loss": {
            "kl_weight": 1e-6,
            "lpips_weight": 0.0,
            "gan_weight": 0.05,
            "gan_start": int(steps * 0.75),
            "disc_channels": 32,
            "disc_layers": 3,
            "disc_norm_groups": 8,
            "decoder_reg_weight": 1.0,
            "encoder_reg_weight": 0.0,
            "psi": "random",
            "psi_slice_offset": 3,
            "psi_slice_share": 0.5,
        }
        | (loss or {}),
        "optim": {
            "lr": 2e-4,
            "disc_lr": 2e-4,
            "warmup_steps": 30,
            "min_lr_ratio": 0.05,
            "ema_decay": 0.98,
        },
    }


def phase_config(out: Path, name: str, steps: int | None = None) -> dict:
    """The config of the CV-VAE training phase ``name`` (CVVAE_PHASES; ``steps`` overrides its
    own): the first is ``cvvae_config``; each later one starts from the previous phase's model
    with 17x96x96 clips too, its own learning rate, EMA and psi, and the PatchGAN for the last
    16%."""
    phase = CVVAE_PHASES[name]
    steps = steps or phase.steps
    config = cvvae_config(out, steps) | {"output_dir": str(out / name), "seed": phase.seed}
    config["optim"] |= {"lr": phase.lr, "ema_decay": phase.ema}
    config["model"]["image_vae"] = str(out / phase.image_vae)
    config["loss"] |= {
        "psi": phase.psi,
        "psi_slice_offset": phase.psi_slice_offset,
        "psi_slice_share": phase.psi_slice_share,
        "decoder_reg_weight": phase.decoder_reg_weight,
    }
    config["data"]["videos"] = [str(out / "data" / phase.videos)]
    if phase.hue_rotation:
        config["data"]["hue_rotation"] = phase.hue_rotation
    if phase.freeze_encoder:
        config["model"]["freeze_encoder"] = True
    if phase.start:
        config["model"]["init_from"] = str(out / phase.start / "model")
        config["data"]["video_shapes"].append([17, 96])
        config["loss"]["gan_start"] = int(steps * 0.84)
    return config


def split(shared: Path) -> dict:
    """The held-out split: every 5th photo (sorted names, from the 3rd) and the last 30% of each
    clip's decoded frames; training uses the other photos and each clip's first frames."""
    photos = sorted(p.name for p in (shared / "data" / "images").glob("*.jpg"))
    clips = {}
    for path in sorted((shared / "data" / "videos").iterdir()):
        if path.suffix.lower() not in (".mp4", ".avi"):
            continue
        total = _count_frames(path)
        cut = int(total * TRAIN_FRACTION)
        clips[path.name] = {"frames": total, "train": [0, cut - GAP], "held_out": [cut, total]}
    return {
        "held_out_photos": photos[2::5],
        "train_photos": [p for i, p in enumerate(photos) if i % 5 != 2],
        "clips": clips,
    }


def _count_frames(path: Path) -> int:
    """Decoded frame count (headers can lie: tree.avi claims 444 and holds 68)."""
    video, _ = read_video(path, size=(8, 8))
    return video.shape[1]


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def _short_side(h: int, w: int, side: int) -> tuple[int, int]:
    scale = side / min(h, w)
    return round(h * scale), round(w * scale)


def prepare_data(out: Path) -> None:
    """Write ``split.json``, ``photos.safetensors`` / ``frames.safetensors`` (uint8 training
    photos ``(3, H, W)`` and clip frames ``(T, 3, H, W)`` of every clip: the image VAE's data),
    :func:`write_clip_pieces` of every clip and the lists of VIDEO_LISTS (the CV-VAE's videos)."""
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    info = split(SHARED)
    photos = {}
    (data / "photos").mkdir(exist_ok=True)
    for name in info["train_photos"]:
        link = data / "photos" / name  # the CV-VAE trainer's image folder: training photos only
        if not link.exists():
            link.symlink_to(SHARED.resolve() / "data" / "images" / name)
        image = read_image(SHARED / "data" / "images" / name)
        size = _short_side(*image.shape[-2:], PHOTO_SIDE)
        photos[name] = _to_uint8(F.interpolate(image[None], size, mode="area")[0])
    frames = {}
    for name, clip in info["clips"].items():
        start, stop = clip["train"]
        video, meta = read_video(SHARED / "data" / "videos" / name, num_frames=stop)
        size = _short_side(meta.height, meta.width, FRAME_SIDE)
        video = F.interpolate(video.transpose(0, 1), size, mode="area")[start:stop]
        frames[name] = _to_uint8(video)  # (T, 3, H, W)
        write_clip_pieces(data, name, video.transpose(0, 1), meta.rate)
        print(f"  {name}: {stop - start} training frames at {size}", flush=True)
    for name, tensors in (("photos", photos), ("frames", frames)):
        with atomic_path(data / f"{name}.safetensors") as tmp:
            save_file(tensors, str(tmp))
    for list_name, still_weight in VIDEO_LISTS.items():
        rows = ["path"] + [
            f"videos/{p.name}"
            for p in sorted((data / "videos").glob("*.mp4"))
            for _ in range(MOVING_CLIPS.get(p.name.split("_part")[0], still_weight))
        ]
        (data / list_name).write_text("\n".join(rows) + "\n")
    (data / "split.json").write_text(json.dumps(info, indent=2))


def write_clip_pieces(data: Path, name: str, video: torch.Tensor, rate) -> None:
    """The training frames ``(3, T, H, W)`` of clip ``name`` as overlapping pieces of
    PIECE_FRAMES frames (short files: a random clip decodes only its own piece)."""
    folder = data / "videos"
    folder.mkdir(exist_ok=True)
    total = video.shape[1]
    starts = list(range(0, max(1, total - PIECE_FRAMES + 1), PIECE_FRAMES // 2))
    if starts[-1] + PIECE_FRAMES < total:
        starts.append(total - PIECE_FRAMES)
    for k, first in enumerate(starts):
        piece = video[:, first : first + PIECE_FRAMES]
        write_video(folder / f"{name}_part{k:02d}.mp4", piece, rate, crf=10)


class CropSampler:
    """Random training crops ``(B, 3, S, S)`` in [-1, 1]: a photo or a clip frame, resized so its
    short side is log-uniform in ``scale_range``, cropped at random, flipped left-right half the
    time, its hue turned at random in a ``hue_rotation`` share of crops. Batch ``b`` depends only
    on ``(seed, b)``, so a resumed run sees the same batches."""

    def __init__(self, data: Path, s: ImageVAESettings):
        photos = load_file(str(data / "photos.safetensors"))
        clips = load_file(str(data / "frames.safetensors"))
        self.photos = [photos[k] for k in sorted(photos)]
        self.frames = [(k, i) for k in sorted(clips) for i in range(len(clips[k]))]
        self.clips, self.s = clips, s

    def batch(self, b: int) -> torch.Tensor:
        s = self.s
        gen = torch.Generator().manual_seed(s.seed * 1_000_003 + b)
        low, high = (math.log(v) for v in s.scale_range)
        out = []
        for _ in range(s.batch):
            if float(torch.rand((), generator=gen)) < s.photo_ratio:
                image = self.photos[int(torch.randint(len(self.photos), (1,), generator=gen))]
            else:
                name, i = self.frames[int(torch.randint(len(self.frames), (1,), generator=gen))]
                image = self.clips[name][i]
            side = math.exp(low + (high - low) * float(torch.rand((), generator=gen)))
            side = min(max(side, s.crop), min(image.shape[-2:]))
            size = _short_side(*image.shape[-2:], round(side))
            x = F.interpolate(image[None].float(), size, mode="bilinear", antialias=True)[0]
            top = int(torch.randint(x.shape[-2] - s.crop + 1, (1,), generator=gen))
            left = int(torch.randint(x.shape[-1] - s.crop + 1, (1,), generator=gen))
            x = x[:, top : top + s.crop, left : left + s.crop]
            if float(torch.rand((), generator=gen)) < 0.5:
                x = x.flip(-1)
            x = x / 127.5 - 1.0
            if s.hue_rotation and float(torch.rand((), generator=gen)) < s.hue_rotation:
                x = rotate_hue(x, 2 * math.pi * float(torch.rand((), generator=gen)))
            out.append(x)
        return torch.stack(out)


def make_image_vae(s: ImageVAESettings) -> AutoencoderKL:
    """SD's AutoencoderKL layout (4 levels: 8x down, 4 latent channels), small and seeded."""
    torch.manual_seed(s.seed)
    return AutoencoderKL(
        block_out_channels=s.channels,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=s.norm_groups,
        down_block_types=["DownEncoderBlock2D"] * len(s.channels),
        up_block_types=["UpDecoderBlock2D"] * len(s.channels),
    )


def lr_at(step: int, s: ImageVAESettings) -> float:
    """Linear warmup, then cosine decay to ``min_lr_ratio * lr``."""
    if step < s.warmup:
        return s.lr * (step + 1) / s.warmup
    t = (step - s.warmup) / max(1, s.steps - s.warmup)
    return s.lr * (s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def image_vae_loss(vae: AutoencoderKL, x: torch.Tensor, s: ImageVAESettings, gen) -> dict:
    """``{"l1", "ssim", "kl", "loss"}`` for a batch; per-element means; bf16 autocast on the CPU."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(
            posterior.mean.shape, generator=gen, dtype=posterior.mean.dtype
        )
        x_hat = vae.decode(z).sample.float()
    l1 = (x_hat - x).abs().mean()
    structure = 1 - ssim(x_hat.transpose(0, 1), x.transpose(0, 1)).mean()  # (3, B, H, W)
    mean, logvar = posterior.mean.float(), posterior.logvar.float()
    kl = 0.5 * (mean**2 + logvar.exp() - 1.0 - logvar).mean()
    loss = l1 + s.ssim_weight * structure + s.kl_weight * kl
    return {"l1": l1, "ssim": structure, "kl": kl, "loss": loss}


def _save_checkpoint(folder: Path, step: int, vae, ema, opt, log: list) -> None:
    """Model, EMA and optimizer tensors (loaded back with ``weights_only=True``) + JSON state."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {"vae": vae.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict()}
    with atomic_path(folder / "state.pt") as tmp:
        torch.save(state, tmp)
    with atomic_path(folder / "progress.json") as tmp:
        tmp.write_text(json.dumps({"step": step, "log": log}))


def train_image_vae(
    out: Path, s: ImageVAESettings, stop_after: int | None = None, name: str = "image_vae"
) -> Path | None:
    """Train (from scratch, or from ``out/<s.init_from>``; resuming from ``out/<name>_ckpt`` when
    present) and export to ``out/<name>`` (:func:`export_image_vae`); returns that folder. With
    ``stop_after``, stop at that step with a checkpoint and return None (a later call resumes)."""
    sampler = CropSampler(out / "data", s)
    if s.init_from:
        vae, ema = (AutoencoderKL.from_pretrained(out / s.init_from) for _ in range(2))
    else:
        vae, ema = make_image_vae(s), make_image_vae(s)
    ema.load_state_dict(vae.state_dict())
    ema.requires_grad_(False)
    opt = torch.optim.AdamW(vae.parameters(), lr=s.lr, weight_decay=0.0, betas=(0.9, 0.99))
    ckpt, step, log = out / f"{name}_ckpt", 0, []
    if (ckpt / "progress.json").is_file():
        state = torch.load(ckpt / "state.pt", weights_only=True)
        vae.load_state_dict(state["vae"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        progress = json.loads((ckpt / "progress.json").read_text())
        step, log = progress["step"], progress["log"]
        print(f"resumed at step {step}", flush=True)
    (out / f"{name}_settings.json").write_text(json.dumps(asdict(s), indent=2))
    tick = time.perf_counter()
    end = s.steps if stop_after is None else min(stop_after, s.steps)
    while step < end:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, s)
        gen = torch.Generator().manual_seed(s.seed * 7_000_003 + step)
        terms = image_vae_loss(vae, sampler.batch(step), s, gen)
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), vae.parameters(), strict=True):
                p_ema.lerp_(p, 1 - s.ema_decay)
        step += 1
        if step % 50 == 0:
            seconds = time.perf_counter() - tick
            row = {k: round(float(v.detach()), 5) for k, v in terms.items()} | {"step": step}
            log.append(row | {"seconds": round(seconds, 1)})
            print(f"step {step} {row} {seconds:.0f}s", flush=True)
        if step % s.checkpoint_every == 0 or step == end:
            _save_checkpoint(ckpt, step, vae, ema, opt, log)
    if step < s.steps:
        return None
    return export_image_vae(out / name, {"ema": ema, "raw": vae}, sampler)


@torch.no_grad()
def export_image_vae(
    folder: Path, candidates: dict[str, AutoencoderKL], sampler: CropSampler
) -> Path:
    """Save the candidate (EMA or raw weights) with the lower L1 on 64 training crops that no
    training step drew into ``folder``; a model trained from scratch gets ``scaling_factor`` =
    1 / std of its latent means on them (so scaled latents have unit variance, as SD's 0.18215
    does), a fine-tuned one keeps its start's. Held-out data plays no part."""
    crops = torch.cat([sampler.batch(10**6 + b) for b in range(64 // sampler.s.batch)])
    scores = {}
    for name, vae in candidates.items():
        vae.eval()
        recon = vae.decode(vae.encode(crops).latent_dist.mean).sample
        scores[name] = float((recon - crops).abs().mean())
    name = min(scores, key=scores.get)
    vae = candidates[name]
    if not sampler.s.init_from:
        std = float(vae.encode(crops).latent_dist.mean.std())
        vae.register_to_config(scaling_factor=round(1.0 / std, 5))
    vae.save_pretrained(folder)
    print(f"exported {name} weights (training-crop L1 {scores})", flush=True)
    return folder


def held_out_images(info: dict) -> dict[str, torch.Tensor]:
    """Held-out photos and clip frames at 128x128 (resized to cover, centre-cropped):
    ``{"photos": (N, 3, 128, 128), "frames:<clip>": (M, 3, 128, 128)}`` (every 8th held-out
    frame of each clip)."""
    photos = [
        read_image(SHARED / "data" / "images" / name, size=EVAL_SIZE)
        for name in info["held_out_photos"]
    ]
    sets = {"photos": torch.stack(photos)}
    for name, clip in info["clips"].items():
        start, stop = clip["held_out"]
        video, _ = read_video(
            SHARED / "data" / "videos" / name, start=start, num_frames=stop - start, size=EVAL_SIZE
        )
        sets[f"frames:{name}"] = video[:, ::8].transpose(0, 1)
    return sets


@torch.no_grad()
def round_trip(vae: AutoencoderKL | CVVAE, images: torch.Tensor) -> torch.Tensor:
    """The posterior-mean round trip of ``images`` ``(N, 3, H, W)``, clipped to [-1, 1] (a
    CV-VAE codes each image as a one-frame video)."""
    return torch.cat(
        [vae.decode(vae.encode(x).latent_dist.mean).sample for x in images.split(8)]
    ).clamp(-1, 1)


def evaluate_image_vae(vae: AutoencoderKL | CVVAE, images: torch.Tensor) -> dict:
    """PSNR / SSIM (means over images) and mean signed error per RGB channel in 1/255 units of
    the posterior-mean round trip of ``images`` ``(N, 3, H, W)``."""
    recon = round_trip(vae, images)
    signed = (recon - images).mean(dim=(0, 2, 3)) * 127.5
    return {
        "count": len(images),
        "psnr": float(psnr(recon.transpose(0, 1), images.transpose(0, 1)).mean()),
        "ssim": float(ssim(recon.transpose(0, 1), images.transpose(0, 1)).mean()),
        "mean_signed_error_255": [round(float(v), 3) for v in signed],
    }


def held_out_segments(info: dict, clips: list[str], stride: int) -> list[tuple[str, int]]:
    """``(clip, first source frame)`` of consecutive, non-overlapping EVAL_FRAMES-frame segments
    (source frames ``first + stride * i``) inside each clip's held-out frames."""
    segments = []
    for name in clips:
        start, stop = info["clips"][name]["held_out"]
        span = stride * EVAL_FRAMES
        segments += [(name, first) for first in range(start, stop - span + stride, span)]
    return segments


def motion_psnr(clip: torch.Tensor) -> float:
    """PSNR of the frames between ``clip``'s uncoded keyframes (0, 4, ...) filled by linear
    interpolation: what motion alone costs uniform sampling."""
    keys = keyframe_indices(clip.shape[1])
    between = torch.ones(clip.shape[1], dtype=torch.bool)
    between[keys] = False
    filled = fill_frames(clip[:, keys], "linear")
    return float(psnr(clip[:, between], filled[:, between]).mean())


def psi_spread_psnr(clip: torch.Tensor) -> float:
    """PSNR between the psi ``slice`` and ``mean`` targets of ``clip``'s latent frames after the
    first: how far apart the two frames are that one latent frame is asked to be."""
    targets = [psi(clip[None], mode)[0][:, 1:] for mode in ("slice", "mean")]
    return float(psnr(*targets).mean())


@torch.no_grad()
def midpoint_psnr(clip: torch.Tensor, image_vae: AutoencoderKL) -> dict[str, float]:
    """PSNR against the psi ``slice`` and ``mean`` targets of ``clip`` ``(3, 1+4k, H, W)`` (mean
    over the ``1+k`` latent frames) of the image VAE's own round trip of the frame halfway
    between the two: the image decoder reading a latent frame it could make itself, placed to
    serve both targets equally (a reference for a CV-VAE's image-decoder gaps)."""
    slice_, mean = (psi(clip[None], mode)[0] for mode in ("slice", "mean"))
    decoded = image_reconstruct(image_vae, (slice_ + mean) / 2)
    return {"slice": float(psnr(slice_, decoded).mean()), "mean": float(psnr(mean, decoded).mean())}


def evaluate_protocol(info: dict, models: dict, image_vae: AutoencoderKL, name: str) -> dict:
    """Every model and the baselines on the held-out segments of protocol ``name``:
    ``{"segments", "motion_psnr", "psi_spread_psnr", "midpoint_gap", "summary", ...}`` (see
    :func:`cvvae.evaluation.summarize_videos`; ``midpoint_gap``: the image-decoder gaps per psi
    mode of :func:`midpoint_psnr`)."""
    clips, stride = PROTOCOLS[name]
    segments, results, motion, spread = held_out_segments(info, clips, stride), [], [], []
    midpoint = []
    for clip_name, first in segments:
        clip, _ = read_video(
            SHARED / "data" / "videos" / clip_name,
            start=first,
            num_frames=EVAL_FRAMES,
            stride=stride,
            size=EVAL_SIZE,
        )
        results.append(evaluate_video(clip, models, image_vae, baselines=True))
        motion.append(motion_psnr(clip))
        spread.append(psi_spread_psnr(clip))
        midpoint.append(midpoint_psnr(clip, image_vae))
    summary = summarize_videos(results)
    reference = next(iter(summary["compatibility"].values()))
    return {
        "segments": [list(s) for s in segments],
        "motion_psnr": sum(motion) / len(motion),
        "psi_spread_psnr": sum(spread) / len(spread),
        "midpoint_gap": {
            mode: reference[mode]["image_vae_psnr"] - sum(m[mode] for m in midpoint) / len(midpoint)
            for mode in ("slice", "mean")
        },
        "per_segment_psnr": {
            method: [float(r.scores[method].psnr.mean()) for r in results]
            for method in results[0].scores
        },
        "summary": summary,
    }


def protocol_table(name: str, result: dict) -> str:
    """Markdown table of one protocol: PSNR / SSIM / latent frames per method, then the image
    decoder's gap on each model's latents (psi slice / mean / first)."""
    methods, compat = result["summary"]["methods"], result["summary"]["compatibility"]
    lines = [
        f"{name}: {len(result['segments'])} segments, keyframe interpolation "
        f"{result['motion_psnr']:.2f} dB, psi slice vs mean targets {result['psi_spread_psnr']:.2f} dB, "
        "image-decoder gaps of the image VAE's latent of the frame halfway between them "
        f"{result['midpoint_gap']['slice']:.2f} / {result['midpoint_gap']['mean']:.2f}",
        "",
        "| method | latent frames | PSNR | SSIM | image decoder gap (slice / mean / first) |",
        "|---|---|---|---|---|",
    ]
    for method, m in methods.items():
        gaps = ""
        if method in compat:
            gaps = " / ".join(
                f"{compat[method][mode]['psnr_gap']:.2f}" for mode in ("slice", "mean", "first")
            )
        lines.append(
            f"| {method} | {m['latent_frames']} | {m['psnr']:.2f} | {m['ssim']:.3f} | {gaps} |"
        )
    return "\n".join(lines)


# the paper's ablations at this scale: name -> loss overrides (all from the inflated image VAE)
ABLATIONS = {
    "no-reg": {"decoder_reg_weight": 0.0},
    "decoder-random": {"decoder_reg_weight": 1.0, "psi": "random"},
    "encoder-random": {"decoder_reg_weight": 0.0, "encoder_reg_weight": 1.0},
    "both-random": {"decoder_reg_weight": 1.0, "encoder_reg_weight": 1.0},
    "decoder-first": {"decoder_reg_weight": 1.0, "psi": "first"},
    "decoder-slice": {"decoder_reg_weight": 1.0, "psi": "slice"},
    "decoder-mean": {"decoder_reg_weight": 1.0, "psi": "mean"},
}
# the recipe once more with another seed (other batches and random draws): seed-to-seed noise
SEED_VARIANT = ("decoder-random-seed1", {"decoder_reg_weight": 1.0, "psi": "random"}, 1)


def run_ablations(out: Path, steps: int, info: dict) -> dict:
    """Train every ablation for ``steps`` on the same data and batches (9x64 clips, no GAN), and
    the recipe with another seed, then evaluate them together on the moving clips at stride 2."""
    models = {}
    variants = [(name, loss, 0) for name, loss in ABLATIONS.items()] + [SEED_VARIANT]
    for name, loss, seed in variants:
        config = cvvae_config(out, steps, loss | {"gan_weight": 0.0})
        config["seed"] = seed
        config["output_dir"] = str(out / "ablations" / name)
        config["data"]["video_shapes"] = [[9, 64]]
        config["num_val_clips"] = 0
        path = out / "ablations" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config))
        models[name] = CVVAE.from_pretrained(train(load_config(path)))
    image_vae = AutoencoderKL.from_pretrained(out / "image_vae").eval()
    return evaluate_protocol(info, models, image_vae, "moving-stride2")


def bundle(out: Path, target: Path) -> None:
    """Write the pair into ``target`` (``image_vae/``, ``model/``) with float16 weights (they load
    as float32), the model folder holding every phase's training config (``train_config.yaml``
    the last's, ``train_config_phase<N>.yaml`` the earlier ones'); each folder is written beside
    its old version and swapped in when complete."""
    final = out / FINAL_PHASE / "model"
    pair = {
        "image_vae": AutoencoderKL.from_pretrained(out / FINAL_IMAGE_VAE),
        "model": CVVAE.from_pretrained(final),
    }
    for name, model in pair.items():
        staging, old = target / f".{name}.new", target / f".{name}.old"
        shutil.rmtree(staging, ignore_errors=True)
        model.to(torch.float16).save_pretrained(staging)
        config = json.loads((staging / "config.json").read_text())
        config.pop("_name_or_path", None)  # where it was loaded from here
        (staging / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        if name == "model":
            shutil.copy(final / "train_config.yaml", staging / "train_config.yaml")
            for number, phase in enumerate(list(CVVAE_PHASES)[:-1], start=1):
                earlier = out / phase / "model" / "train_config.yaml"
                shutil.copy(earlier, staging / f"train_config_phase{number}.yaml")
        if (target / name).exists():
            os.replace(target / name, old)
        os.replace(staging, target / name)
        shutil.rmtree(old, ignore_errors=True)


def ablation_table(result: dict, reference: str = "decoder-random") -> str:
    """Markdown table of the ablations: recon PSNR and its paired difference to ``reference``
    (mean +- standard error over the segments), the image decoder's gap per psi mode and the
    first-frame latent error."""
    per_segment, compat = result["per_segment_psnr"], result["summary"]["compatibility"]
    base = torch.tensor(per_segment[reference])
    lines = [
        f"| variant | PSNR | vs {reference} | gap slice / mean / first | first-frame latent error |",
        "|---|---|---|---|---|",
    ]
    for name in [*ABLATIONS, SEED_VARIANT[0]]:
        scores = torch.tensor(per_segment[name])
        diff = scores - base
        noise = float(diff.std() / math.sqrt(len(diff))) if len(diff) > 1 else float("nan")
        gaps = " / ".join(f"{compat[name][m]['psnr_gap']:.2f}" for m in ("slice", "mean", "first"))
        lines.append(
            f"| {name} | {float(scores.mean()):.2f} | "
            f"{float(diff.mean()):+.2f} +- {noise:.2f} | {gaps} | "
            f"{compat[name]['first_frame_latent_error']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "stage",
        choices=["data", "image-vae", "eval-image", "cv-vae", "eval-video", "ablations", "bundle"],
    )
    parser.add_argument(
        "--phase",
        choices=list(CVVAE_PHASES),
        default=FINAL_PHASE,
        help="eval-video: the CV-VAE phase to measure, against its own image VAE; eval-image: the "
        "CV-VAE phase to run on the held-out photos as one-frame videos (default: the last)",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/bundled"))
    parser.add_argument(
        "--steps",
        type=int,
        help="steps: each image-vae phase (default IMAGE_VAE_PHASES), each cv-vae phase "
        "(default CVVAE_PHASES), "
        "each ablation (default 300)",
    )
    parser.add_argument(
        "--to",
        type=Path,
        default=ASSETS,
        help="bundle: the folder to write (default: the package's)",
    )
    parser.add_argument("--threads", type=int, help="torch threads (default: PyTorch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.stage == "data":
        prepare_data(args.out)
    elif args.stage == "image-vae":
        for name, s in IMAGE_VAE_PHASES.items():
            s = replace(s, steps=args.steps) if args.steps else s
            print(train_image_vae(args.out, s, name=name))
    elif args.stage == "cv-vae":
        for name in CVVAE_PHASES:
            config = phase_config(args.out, name, args.steps)
            config_path = args.out / f"{name}_config.yaml"
            config_path.write_text(yaml.safe_dump(config))
            print(train(load_config(config_path)))
    elif args.stage == "eval-video":
        info = json.loads((args.out / "data" / "split.json").read_text())
        phase = CVVAE_PHASES[args.phase]
        image_vae = AutoencoderKL.from_pretrained(args.out / phase.image_vae).eval()
        models = {"cv-vae": CVVAE.from_pretrained(args.out / args.phase / "model")}
        results = {}
        for name in PROTOCOLS:
            results[name] = evaluate_protocol(info, models, image_vae, name)
            print(protocol_table(name, results[name]) + "\n", flush=True)
        (args.out / "cvvae_eval.json").write_text(json.dumps(results, indent=2))
    elif args.stage == "bundle":
        bundle(args.out, args.to)
    elif args.stage == "ablations":
        info = json.loads((args.out / "data" / "split.json").read_text())
        result = run_ablations(args.out, args.steps or 300, info)
        print(protocol_table("ablations, moving-stride2", result) + "\n")
        print(ablation_table(result))
        (args.out / "ablations_eval.json").write_text(json.dumps(result, indent=2))
    else:
        info = json.loads((args.out / "data" / "split.json").read_text())
        phases = {n: AutoencoderKL.from_pretrained(args.out / n).eval() for n in IMAGE_VAE_PHASES}
        vae = phases[FINAL_IMAGE_VAE]
        sets = held_out_images(info)
        results = {k: evaluate_image_vae(vae, v) for k, v in sets.items()}
        frames = [v for k, v in sets.items() if k.startswith("frames:")]
        results["frames"] = evaluate_image_vae(vae, torch.cat(frames))
        cvvae = CVVAE.from_pretrained(args.out / args.phase / "model").eval()
        for prefix, model in (("", vae), ("cv-vae:", cvvae)):
            results[f"{prefix}per_photo"] = {
                name: evaluate_image_vae(model, photo[None])
                for name, photo in zip(info["held_out_photos"], sets["photos"], strict=True)
            }
        results["cv-vae:photos"] = evaluate_image_vae(cvvae, sets["photos"])
        print(json.dumps(results, indent=2))
        rows = [sets["photos"]] + [round_trip(phase, sets["photos"]) for phase in phases.values()]
        grid = torch.cat([torch.cat(list(row), dim=-1) for row in rows], dim=-2)
        write_image(args.out / "image_vae_photos.jpg", grid, quality=90)
        (args.out / "image_vae_eval.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

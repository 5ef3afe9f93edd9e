"""The training loop on Accelerate: one process or many (``accelerate launch`` / ``torchrun``).

Reads top to bottom: build the image VAE, the video VAE, the discriminator and the losses;
resume from the latest complete checkpoint; then per optimizer step: ``grad_accum`` micro-batches
of autoencoder (and, after ``loss.gan_start``, discriminator) forward/backward, clipping,
optimizer and scheduler steps, EMA update, logs and checkpoints; finally export the EMA model.

All randomness of a step (posterior noise, ``psi`` random frames, data) is drawn from generators
seeded by ``(seed, rank, step)``, so a resumed run repeats an uninterrupted one exactly.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import shutil
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from accelerate import Accelerator
from diffusers import AutoencoderKL
from torch import nn
from tqdm.auto import tqdm

from cvvae.errors import UserInputError
from cvvae.io import list_images, list_videos
from cvvae.models import CVVAE
from cvvae.models.inflation import inflate_from_image_vae
from cvvae.training import checkpoints as ckpt
from cvvae.training.config import TrainConfig, config_to_dict, save_config
from cvvae.training.data import (
    BatchPlan,
    ClipDataset,
    make_loader,
    validation_keys,
)
from cvvae.training.discriminator import PatchDiscriminator3D, adaptive_gan_weight, hinge_d_loss
from cvvae.training.latent_reg import LatentRegularization
from cvvae.training.losses import GeneratorLoss, KLLoss, L1Loss, PerceptualLoss, weighted_sum
from cvvae.training.lpips import load_lpips

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Raised when more than ``max_nonfinite`` steps had a NaN or infinite loss, or when the
    model to export has non-finite parameters (nothing is exported then)."""


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Multiplier of the base LR at ``step``: linear warmup to 1, then cosine to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """``ema = decay * ema + (1 - decay) * model`` for parameters; buffers are copied."""
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p.detach(), 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers(), strict=True):
        e.copy_(b)


def load_image_vae(config: TrainConfig) -> AutoencoderKL:
    """The frozen image VAE: from a local folder, or randomly initialised (seeded) for toy runs."""
    m = config.model
    if m.image_vae is None:
        try:
            with torch.random.fork_rng():
                torch.manual_seed(config.seed)
                vae = AutoencoderKL(**m.image_vae_init)
        except (TypeError, ValueError, RuntimeError, IndexError, KeyError) as err:
            raise UserInputError(
                f"model.image_vae_init does not make an AutoencoderKL ({_first_line(err)})"
            ) from None
    else:
        if not Path(m.image_vae).is_dir():
            raise UserInputError(f"model.image_vae folder not found: {m.image_vae}")
        try:
            # a local folder only; diffusers reads a .bin with torch.load(weights_only=True)
            vae = AutoencoderKL.from_pretrained(
                m.image_vae, subfolder=m.image_vae_subfolder, local_files_only=True
            )
        except Exception as err:  # diffusers raises many types for missing or damaged files
            raise UserInputError(
                f"cannot load the image VAE ({_first_line(err)}): {m.image_vae}"
            ) from None
    return vae.requires_grad_(False).eval()


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def build_video_vae(config: TrainConfig, image_vae: AutoencoderKL) -> CVVAE:
    """The video VAE to train: ``init_from`` a saved CV-VAE, or inflated from the image VAE.
    Raises UserInputError if ``init_from`` does not share the image VAE's latent space shape."""
    source = config.model.init_from
    if source is None:
        try:
            return inflate_from_image_vae(image_vae)
        except ValueError as err:
            raise UserInputError(f"cannot inflate the image VAE: {err}") from None
    if not Path(source).is_dir():
        raise UserInputError(f"model.init_from folder not found: {source}")
    vae = CVVAE.from_pretrained(source)
    want, got = image_vae.config.latent_channels, vae.config.latent_channels
    if want != got:
        raise UserInputError(
            f"model.init_from has {got} latent channels but the image VAE has {want}: {source}"
        )
    return vae


class AutoencoderStep(nn.Module):
    """The video VAE's training forward in one call (one DDP forward per micro-batch).

    ``forward(x, generator, extra_latents)``: encode ``x`` ``(B, 3, T, H, W)``, sample ``z``,
    decode; ``extra_latents`` (same shape as ``z``, e.g. image-VAE latents for the encoder-based
    regularization) are decoded in the same pass. Returns ``(x_hat, posterior, z, extra)``.
    """

    def __init__(self, vae: CVVAE):
        super().__init__()
        self.vae = vae

    def forward(
        self, x: torch.Tensor, generator: torch.Generator, extra_latents: torch.Tensor | None = None
    ):
        posterior = self.vae.encode(x).latent_dist
        z = posterior.sample(generator)
        latents = z if extra_latents is None else torch.cat([z, extra_latents.to(z.dtype)])
        decoded = self.vae.decode(
            latents, num_frames=x.shape[2], height=x.shape[3], width=x.shape[4]
        ).sample
        x_hat, extra = decoded[: x.shape[0]], decoded[x.shape[0] :]
        return x_hat, posterior, z, (extra if extra_latents is not None else None)


class Trainer:
    """One training run of ``config``. ``run()`` trains to ``max_steps`` and returns the exported
    EMA model folder ``<output_dir>/model``. ``step_losses`` holds each step's logged terms."""

    def __init__(self, config: TrainConfig):
        self.config = config
        self.out = Path(config.output_dir)
        # Accelerate treats torchrun's processes as one CPU job each unless told to use the CPU.
        multi_cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
        check_tracker(config.log_with)
        self.accelerator = Accelerator(
            mixed_precision=config.mixed_precision,
            log_with=config.log_with,
            project_dir=str(self.out),
            cpu=multi_cpu,
        )
        acc = self.accelerator
        lc, oc = config.loss, config.optim
        self.image_vae = load_image_vae(config).to(acc.device)
        torch.manual_seed(config.seed)
        vae = build_video_vae(config, self.image_vae)
        vae.encoder.requires_grad_(not config.model.freeze_encoder)
        if config.model.gradient_checkpointing:
            vae.enable_gradient_checkpointing()
        vae.train()
        self.ema = copy.deepcopy(vae).requires_grad_(False).eval().to(acc.device)
        disc = PatchDiscriminator3D(3, lc.disc_channels, lc.disc_layers, lc.disc_norm_groups)
        self.reg = LatentRegularization(
            self.image_vae,
            psi_mode=lc.psi,
            slice_offset=lc.psi_slice_offset,
            slice_share=lc.psi_slice_share,
            distance_kind=lc.reg_distance,
        )
        self.l1, self.kl, self.gan = L1Loss(), KLLoss(), GeneratorLoss()
        self.perceptual = None
        if lc.lpips_path is not None and lc.lpips_weight > 0:
            self.perceptual = PerceptualLoss(load_lpips(lc.lpips_path).to(acc.device))
        elif lc.lpips_weight > 0 and acc.is_main_process:
            logger.warning("no LPIPS weights (loss.lpips_path): the perceptual loss is off")
        self.weights = {
            "l1": lc.l1_weight,
            "kl": lc.kl_weight,
            "lpips": lc.lpips_weight,
            "decoder_reg": lc.decoder_reg_weight,
            "encoder_reg": lc.encoder_reg_weight,
        }
        betas = tuple(oc.betas)
        opt_ae = torch.optim.AdamW(
            [p for p in vae.parameters() if p.requires_grad],
            oc.lr,
            betas=betas,
            eps=oc.eps,
            weight_decay=oc.weight_decay,
        )
        opt_disc = torch.optim.AdamW(
            disc.parameters(), oc.disc_lr, betas=betas, eps=oc.eps, weight_decay=oc.weight_decay
        )
        disc_steps = max(
            1, config.max_steps - lc.gan_start
        )  # the discriminator's clock starts at gan_start
        self.sched_ae = torch.optim.lr_scheduler.LambdaLR(
            opt_ae, lambda s: lr_factor(s, oc.warmup_steps, config.max_steps, oc.min_lr_ratio)
        )
        self.sched_disc = torch.optim.lr_scheduler.LambdaLR(
            opt_disc, lambda s: lr_factor(s, oc.warmup_steps, disc_steps, oc.min_lr_ratio)
        )
        self.model, self.disc, self.opt_ae, self.opt_disc = acc.prepare(
            AutoencoderStep(vae), disc, opt_ae, opt_disc
        )

        videos, images = list_videos(config.data.videos), list_images(config.data.images)
        if config.data.image_ratio < 1 and not videos:
            raise UserInputError(f"no video files found in {config.data.videos}")
        if config.data.image_ratio > 0 and not images:
            raise UserInputError(f"no image files found in {config.data.images}")
        self.dataset = ClipDataset(videos, images, config.data)
        self.step, self.nonfinite, self.skipped = 0, 0, 0
        self.seen_skipped: set[str] = set()
        self.step_losses: dict[int, dict[str, float]] = {}
        self._resume()

    # ------------------------------------------------------------------ state
    @property
    def vae(self) -> CVVAE:
        return self.accelerator.unwrap_model(self.model).vae

    def _state(self) -> dict:
        return {
            "step": self.step,
            "data_position": self.step * self.config.grad_accum,
            "model": self.vae.state_dict(),
            "ema": self.ema.state_dict(),
            "disc": self.accelerator.unwrap_model(self.disc).state_dict(),
            "opt_ae": self.opt_ae.state_dict(),
            "opt_disc": self.opt_disc.state_dict(),
            "sched_ae": self.sched_ae.state_dict(),
            "sched_disc": self.sched_disc.state_dict(),
            "nonfinite": self.nonfinite,
            "skipped": self.skipped,
            # the fp16 loss scale and its growth counter; empty without fp16
            "scaler": self._scaler_state(),
        }

    def _scaler_state(self) -> dict:
        scaler = self.accelerator.scaler
        return scaler.state_dict() if scaler is not None else {}

    def _resume(self) -> None:
        resume = self.config.resume
        if resume == "none":
            return
        if resume == "auto":
            path = ckpt.find_latest_checkpoint(self.out / "checkpoints")
            if path is None:
                return
        else:
            path = Path(resume)
            if not ckpt.is_complete(path):
                raise UserInputError(f"not a complete checkpoint: {path}")
        state, rank_state = ckpt.load_checkpoint(path, self.accelerator.process_index)
        try:
            self._load_state(state)
        except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as err:
            differ = ckpt.config_differences(path, self.config)
            why = (
                f"written with other settings: {', '.join(differ)}" if differ else _first_line(err)
            )
            raise UserInputError(
                f"the checkpoint does not fit this run ({why}); use a new output_dir or "
                f"resume=none: {path}"
            ) from None
        if rank_state is not None:
            ckpt.restore_rng(rank_state)
        logger.info("resumed from %s at step %d", path, self.step)

    def _load_state(self, state: dict) -> None:
        self.vae.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.accelerator.unwrap_model(self.disc).load_state_dict(state["disc"])
        self.opt_ae.load_state_dict(state["opt_ae"])
        self.opt_disc.load_state_dict(state["opt_disc"])
        self.sched_ae.load_state_dict(state["sched_ae"])
        self.sched_disc.load_state_dict(state["sched_disc"])
        scaler, saved = self.accelerator.scaler, state.get("scaler")
        if saved is None:  # a checkpoint of a version that did not save the loss scaler
            if scaler is not None and scaler.is_enabled():
                logger.warning("the checkpoint has no fp16 loss scale; it starts afresh")
        elif (scaler is not None and scaler.is_enabled()) != bool(saved):
            raise ValueError("mixed_precision differs (fp16 loss scaler state)")
        elif saved:
            scaler.load_state_dict(saved)
        self.step, self.nonfinite, self.skipped = (
            int(state["step"]),
            int(state["nonfinite"]),
            int(state["skipped"]),
        )

    def save_checkpoint(self) -> None:
        """Write a checkpoint of the current step (every process takes part)."""
        acc, root = self.accelerator, self.out / "checkpoints"
        if acc.is_main_process:
            ckpt.begin_checkpoint(root, self.step)
        acc.wait_for_everyone()
        tmp = root / f"{ckpt.checkpoint_name(self.step)}.tmp"
        try:
            ckpt.write_rank_state(tmp, acc.process_index, ckpt.capture_rng())
            acc.wait_for_everyone()
            if acc.is_main_process:
                ckpt.finish_checkpoint(
                    tmp, self._state(), self.config, self.config.keep_checkpoints
                )
        except BaseException:  # a full disk, Ctrl-C, SIGTERM: leave no half checkpoint
            if acc.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        acc.wait_for_everyone()

    # ------------------------------------------------------------------ one step
    def _generator(self, micro: int) -> torch.Generator:
        g = torch.Generator(self.accelerator.device)
        c = self.config
        key = ((c.seed * 1_000_003 + self.accelerator.process_index) * 1_000_003 + self.step) * 64
        g.manual_seed((key + micro) % 2**64)  # the generator takes 64 bits
        return g

    def _ae_losses(
        self, x: torch.Tensor, g: torch.Generator, gan_on: bool
    ) -> tuple[torch.Tensor, dict, torch.Tensor]:
        """Autoencoder loss of one micro-batch: ``(total, {term: value}, detached x_hat)``."""
        lc, acc = self.config.loss, self.accelerator
        target = self.reg.target(x, g)
        extra = self.reg.encode_frames(target) if lc.encoder_reg_weight > 0 else None
        x_hat, posterior, z, extra_decoded = self.model(x, g, extra)
        with acc.autocast():
            terms = {**self.l1(x, x_hat), **self.kl(posterior.mean, posterior.logvar)}
            if self.perceptual is not None:
                terms.update(self.perceptual(x, x_hat))
            if lc.decoder_reg_weight > 0:
                terms.update(self.reg.decoder_reg(z, target))
            if extra_decoded is not None:
                terms.update(self.reg.encoder_reg(x, extra_decoded))
            total = weighted_sum(terms, self.weights)
            if gan_on:
                disc = acc.unwrap_model(self.disc).requires_grad_(False)
                terms.update(self.gan(disc, x_hat))
                d_weight = torch.tensor(1.0, device=x.device)
                if lc.adaptive_gan_weight:
                    nll = weighted_sum(
                        {k: terms[k] for k in ("l1", "lpips") if k in terms}, self.weights
                    )
                    d_weight = adaptive_gan_weight(nll, terms["gan"], self.vae.decoder_last_layer())
                terms["gan_weight"] = d_weight
                total = total + lc.gan_weight * d_weight * terms["gan"]
        return total, terms, x_hat.detach()

    def _all_finite(self, value: torch.Tensor) -> bool:
        flag = torch.isfinite(value.detach()).all().float().reshape(1)
        return bool(self.accelerator.gather(flag).min() > 0)

    def train_step(self, batches) -> dict[str, float] | None:
        """One optimizer step over ``grad_accum`` micro-batches; None if it was skipped."""
        acc, c = self.accelerator, self.config
        gan_on = c.loss.gan_weight > 0 and self.step >= c.loss.gan_start
        sums: dict[str, float] = {}
        finite = True
        for micro in range(c.grad_accum):
            batch = next(batches)
            self._note_skipped(batch["skipped"])
            x = batch["video"].to(acc.device)
            last = micro == c.grad_accum - 1
            if not finite:
                continue  # keep consuming the planned batches of a skipped step
            with nullcontext() if last else acc.no_sync(self.model):
                total, terms, x_hat = self._ae_losses(x, self._generator(micro), gan_on)
                finite = self._all_finite(total)
                if finite:
                    acc.backward(total / c.grad_accum)
            if finite and gan_on:
                acc.unwrap_model(self.disc).requires_grad_(True)
                with nullcontext() if last else acc.no_sync(self.disc), acc.autocast():
                    d_loss = hinge_d_loss(self.disc(x), self.disc(x_hat))
                finite = self._all_finite(d_loss)
                if finite:
                    acc.backward(d_loss / c.grad_accum)
                    terms["disc"] = d_loss
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach()) / c.grad_accum
        if not finite:
            self.opt_ae.zero_grad(set_to_none=True)
            self.opt_disc.zero_grad(set_to_none=True)
            self._advance()
            self.nonfinite += 1
            logger.warning(
                "step %d: non-finite loss, step skipped (%d so far)", self.step, self.nonfinite
            )
            if self.nonfinite > c.max_nonfinite:
                raise NonFiniteLossError(
                    f"{self.nonfinite} steps had non-finite losses (limit optim max_nonfinite="
                    f"{c.max_nonfinite}); last at step {self.step}. Lower the learning rate or use fp32."
                )
            return None
        clip = c.optim.grad_clip or float("inf")
        sums["grad_norm_ae"] = float(acc.clip_grad_norm_(self.vae.parameters(), clip))
        self.opt_ae.step()
        if gan_on:
            sums["grad_norm_disc"] = float(acc.clip_grad_norm_(self.disc.parameters(), clip))
            self.opt_disc.step()
            self.sched_disc.step()
        self.opt_ae.zero_grad(set_to_none=True)
        self.opt_disc.zero_grad(set_to_none=True)
        update_ema(self.ema, self.vae, c.optim.ema_decay)
        self._advance()
        return sums

    def _advance(self) -> None:
        self.sched_ae.step()
        self.step += 1

    def _note_skipped(self, messages: list[str]) -> None:
        self.skipped += len(messages)
        for message in messages:
            if message not in self.seen_skipped:
                self.seen_skipped.add(message)
                logger.warning(
                    "skipped unreadable data (%d skipped so far): %s", self.skipped, message
                )

    # ------------------------------------------------------------------ logging
    def _log(self, sums: dict[str, float], samples_per_s: float) -> None:
        values = {f"loss/{k}": v for k, v in sums.items() if not k.startswith("grad_norm")}
        values.update(
            {f"grad_norm/{k[10:]}": v for k, v in sums.items() if k.startswith("grad_norm")}
        )
        values.update(
            {
                "lr/ae": self.sched_ae.get_last_lr()[0],
                "lr/disc": self.sched_disc.get_last_lr()[0],
                "throughput/samples_per_s": samples_per_s,
                "data/skipped_files": self.skipped,
                "train/nonfinite_steps": self.nonfinite,
            }
        )
        self.accelerator.log(values, step=self.step)

    @torch.no_grad()
    def log_reconstructions(self, clips: torch.Tensor) -> None:
        """Input (top) and EMA reconstruction (bottom) of the fixed clips, all frames side by side."""
        x = clips.to(self.accelerator.device)
        x_hat = self.ema(x).sample.clamp(-1, 1)
        rows = [
            torch.cat(list(v.float().unbind(1)), dim=-1)
            for pair in zip(x, x_hat, strict=True)
            for v in pair
        ]
        grid = (torch.cat(rows, dim=-2) + 1) / 2
        if self.config.log_with == "tensorboard":
            writer = self.accelerator.get_tracker("tensorboard", unwrap=True)
            writer.add_image("val/reconstruction", grid.cpu(), self.step)
            return
        tracker = self.accelerator.get_tracker(self.config.log_with)
        if hasattr(tracker, "log_images"):  # trackers without images get the losses only
            image = grid.clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
            tracker.log_images({"val/reconstruction": [image]}, step=self.step)

    # ------------------------------------------------------------------ the run
    def run(self, stop_after: int | None = None) -> Path | None:
        """Train to ``max_steps`` and export (returns the model folder); with ``stop_after``,
        stop at that step with a checkpoint and return None (a later run resumes there)."""
        acc, c = self.accelerator, self.config
        end = c.max_steps if stop_after is None else min(stop_after, c.max_steps)
        if acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            save_config(c, self.out / "config.yaml")
        # TensorBoard logs go to <output_dir>/tensorboard; other trackers get a "cvvae" project
        project = "tensorboard" if c.log_with == "tensorboard" else "cvvae"
        acc.init_trackers(project, config=_flat(config_to_dict(c)))
        plan = BatchPlan(
            len(self.dataset.files["video"]),
            len(self.dataset.files["image"]),
            c.data,
            seed=c.seed,
            rank=acc.process_index,
            world=acc.num_processes,
            start=self.step * c.grad_accum,
        )
        batches = iter(make_loader(self.dataset, plan, c.data.num_workers))
        clips = None
        if acc.is_main_process and c.num_val_clips:
            clips = torch.stack(
                [
                    self.dataset[k]["video"]
                    for k in validation_keys(self.dataset, c.num_val_clips, c.seed)
                ]
            )
        bar = tqdm(
            total=c.max_steps,
            initial=self.step,
            disable=not acc.is_local_main_process,
            desc="train",
        )
        tick, tick_step = time.perf_counter(), self.step
        while self.step < end:
            sums = self.train_step(batches)
            bar.update(1)
            if sums is not None:
                self.step_losses[self.step] = sums
                bar.set_postfix(
                    {
                        k: f"{sums[k]:.4f}"
                        for k in ("l1", "decoder_reg", "encoder_reg", "gan")
                        if k in sums
                    }
                )
                if self.step % c.log_every == 0:
                    now = time.perf_counter()
                    samples = (
                        (self.step - tick_step)
                        * c.grad_accum
                        * c.data.batch_size
                        * acc.num_processes
                    )
                    self._log(sums, samples / max(now - tick, 1e-9))
                    tick, tick_step = now, self.step
            if clips is not None and (
                self.step % c.image_log_every == 0 or self.step == c.max_steps
            ):
                self.log_reconstructions(clips)
            if self.step % c.checkpoint_every == 0 or self.step == end:
                self.save_checkpoint()
        bar.close()
        if self.step < c.max_steps:
            acc.end_training()
            return None
        return self._export()

    def _export(self) -> Path:
        acc, target = self.accelerator, self.out / "model"
        bad = [n for n, p in self.ema.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            acc.end_training()
            raise NonFiniteLossError(
                f"the trained model has non-finite parameters ({len(bad)} tensors, e.g. {bad[0]}); "
                f"nothing exported. Lower the learning rate or use fp32."
            )
        if acc.is_main_process:
            self.ema.save_pretrained(target)
            save_config(self.config, target / "train_config.yaml")
        acc.wait_for_everyone()
        acc.end_training()
        return target


def check_tracker(name: str) -> None:
    """Raise UserInputError if the experiment tracker ``name`` is not installed."""
    from accelerate.tracking import get_available_trackers

    if name not in {str(getattr(t, "value", t)) for t in get_available_trackers()}:
        raise UserInputError(
            f"log_with={name}: that tracker's package is not installed (pip install {name})"
        )


def train(config: TrainConfig) -> Path:
    """Train a compatible video VAE as ``config`` says; returns the exported EMA model folder."""
    return Trainer(config).run()


def _flat(tree: dict, prefix: str = "") -> dict:
    """Nested config -> flat ``{"a/b": scalar or str}`` for TensorBoard hparams."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = (
                value if isinstance(value, int | float | str | bool) else str(value)
            )
    return out

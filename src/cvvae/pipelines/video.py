"""Image-to-video in the style of Stable Video Diffusion, on CV-VAE latents.

SVD denoises one latent per output frame. With CV-VAE as its VAE, each latent frame after the
first stands for 4 video frames: ``k + 1`` latent frames decode to ``1 + 4k`` frames (the released
model turns 25 latents into 97 frames, with SVD's output layer tuned as in the paper).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline, EulerDiscreteScheduler, UNetSpatioTemporalConditionModel
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from diffusers.video_processor import VideoProcessor
from transformers import CLIPVisionModelWithProjection
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from cvvae.inference.plan import InferencePlan
from cvvae.models import CVVAE


@dataclass
class CVVAEVideoPipelineOutput(BaseOutput):
    """``frames``: ``(B, T, 3, H, W)`` in [0, 1] for ``output_type="pt"``, ``(B, T, H, W, 3)``
    for ``"np"``, lists of PIL images for ``"pil"``; for ``"latent"``, the denoised scaled
    latents ``(B, C, t, h, w)`` in CV-VAE layout."""

    frames: torch.Tensor | np.ndarray | list


class CVVAEVideoPipeline(DiffusionPipeline):
    """Image-to-video: SVD-style conditioning and sampling, CV-VAE decoding with 4x time.

    Components: ``vae`` (:class:`CVVAE`, the conditioning image is encoded in image mode),
    ``image_encoder`` (CLIP vision with projection, its embedding is the cross-attention
    context), ``unet`` (:class:`UNetSpatioTemporalConditionModel` with ``in_channels = 2 *
    latent_channels``: noisy latents and the image latent, concatenated per frame) and
    ``scheduler`` (SVD uses :class:`EulerDiscreteScheduler`, v-prediction, Karras sigmas).
    """

    model_cpu_offload_seq = "image_encoder->unet->vae"
    _callback_tensor_inputs = ["latents"]

    def __init__(
        self,
        vae: CVVAE,
        image_encoder: CLIPVisionModelWithProjection,
        unet: UNetSpatioTemporalConditionModel,
        scheduler: EulerDiscreteScheduler,
    ):
        super().__init__()
        self.register_modules(vae=vae, image_encoder=image_encoder, unet=unet, scheduler=scheduler)
        self.video_processor = VideoProcessor(vae_scale_factor=vae.spatial_compression_ratio)

    def _image_embeddings(self, image: torch.Tensor) -> torch.Tensor:
        """CLIP image embeddings ``(B, 1, D)`` of ``image`` ``(B, 3, H, W)`` in [-1, 1]."""
        size = self.image_encoder.config.image_size
        x = F.interpolate(image, (size, size), mode="bilinear", antialias=True, align_corners=False)
        mean = torch.tensor(OPENAI_CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(OPENAI_CLIP_STD, device=x.device).view(1, 3, 1, 1)
        x = ((x + 1) / 2 - mean) / std
        return self.image_encoder(x.to(self.image_encoder.dtype)).image_embeds.unsqueeze(1)

    def _time_ids(self, fps: int, motion_bucket_id: int, noise_aug_strength: float, batch: int):
        """SVD's micro-conditioning ``(batch, 3)``; SVD was trained on ``fps - 1``."""
        ids = torch.tensor([[fps - 1, motion_bucket_id, noise_aug_strength]], dtype=self.unet.dtype)
        return ids.repeat(batch, 1).to(self.device)

    @torch.no_grad()
    def __call__(
        self,
        image: PIL.Image.Image | list[PIL.Image.Image] | torch.Tensor,
        height: int | None = None,
        width: int | None = None,
        num_frames: int = 17,
        num_inference_steps: int = 25,
        min_guidance_scale: float = 1.0,
        max_guidance_scale: float = 3.0,
        fps: int = 7,
        motion_bucket_id: int = 127,
        noise_aug_strength: float = 0.02,
        decode_chunk_size: int | None = None,
        num_videos_per_prompt: int = 1,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pt",
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
        return_dict: bool = True,
    ):
        """Generate ``num_frames`` frames from ``image`` (PIL image(s), or a tensor ``(B, 3, H,
        W)`` in [0, 1] as in ``StableVideoDiffusionPipeline``), resized to ``height x width``
        (default: the image's size, rounded down to multiples of 8).

        The UNet denoises ``t = 1 + ceil((num_frames - 1) / 4)`` latent frames of ``H/8 x W/8``
        (``latents``, ``(B, t, C, h, w)``, replace the initial noise); the CV-VAE decodes them to
        ``1 + 4(t - 1)`` frames, cropped to ``num_frames``, ``decode_chunk_size`` latent frames
        per decoder call when given (memory, as SVD's). Classifier-free guidance rises linearly
        from ``min_guidance_scale`` (first latent frame) to ``max_guidance_scale`` (last), and is
        off when ``max_guidance_scale <= 1``. ``callback_on_step_end(pipe, step, timestep,
        kwargs)`` gets ``callback_on_step_end_tensor_inputs`` and may return new ``latents``.
        """
        for name in callback_on_step_end_tensor_inputs:
            if name not in self._callback_tensor_inputs:
                raise ValueError(
                    f"callback tensor inputs must be in {self._callback_tensor_inputs}, got {name!r}"
                )
        image = self.video_processor.preprocess(image, height=height, width=width)
        image = image.to(self.device, torch.float32)
        height, width = image.shape[-2:]
        t, h, w = self.vae.latent_shape(num_frames, height, width)
        guided = max_guidance_scale > 1
        context, image_latents, time_ids = self._conditioning(
            image,
            t,
            num_videos_per_prompt,
            guided,
            (fps, motion_bucket_id, noise_aug_strength),
            generator,
        )
        guidance = torch.linspace(min_guidance_scale, max_guidance_scale, t, device=self.device)
        guidance = guidance.view(1, t, 1, 1, 1).to(self.unet.dtype) if guided else None

        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        shape = (image.shape[0] * num_videos_per_prompt, t, self.unet.config.out_channels, h, w)
        if latents is None:
            latents = randn_tensor(
                shape, generator=generator, device=self.device, dtype=self.unet.dtype
            )
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        latents = latents.to(self.device, self.unet.dtype) * self.scheduler.init_noise_sigma
        for i, step in enumerate(self.progress_bar(self.scheduler.timesteps)):
            latents = self._denoise_step(latents, step, context, image_latents, time_ids, guidance)
            if callback_on_step_end is not None:
                given = {"latents": latents} if callback_on_step_end_tensor_inputs else {}
                latents = callback_on_step_end(self, i, step, given).get("latents", latents)

        latents = latents.permute(0, 2, 1, 3, 4)  # (B, t, C, h, w) -> CV-VAE's (B, C, t, h, w)
        if output_type == "latent":
            frames = latents
        else:
            z = self.vae.unscale_latents(latents.to(self.vae.dtype))
            video = self._decode(z, num_frames, height, width, decode_chunk_size)
            frames = self.video_processor.postprocess_video(video.float(), output_type=output_type)
        self.maybe_free_model_hooks()
        return CVVAEVideoPipelineOutput(frames=frames) if return_dict else (frames,)

    def _conditioning(
        self,
        image: torch.Tensor,
        t: int,
        copies: int,
        guided: bool,
        micro: tuple[int, int, float],
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The UNet's conditioning for ``image`` ``(B, 3, H, W)`` in [-1, 1], ``copies`` videos
        each: CLIP context ``(N, 1, D)``, the noised image's latent repeated over ``t`` frames
        ``(N, t, C, h, w)`` and SVD's time ids ``(N, 3)`` from ``micro = (fps, motion bucket,
        noise strength)``; unconditional copies first when ``guided``."""
        fps, motion_bucket_id, noise_aug_strength = micro
        context = self._image_embeddings(image).repeat_interleave(copies, dim=0)
        noise = randn_tensor(
            image.shape, generator=generator, device=image.device, dtype=image.dtype
        )
        noisy_image = (image + noise_aug_strength * noise).to(self.vae.dtype)
        image_latents = self.vae.encode(noisy_image).latent_dist.mode()  # unscaled, as in SVD
        image_latents = image_latents.repeat_interleave(copies, dim=0)
        image_latents = image_latents.unsqueeze(1).repeat(1, t, 1, 1, 1).to(self.unet.dtype)
        time_ids = self._time_ids(fps, motion_bucket_id, noise_aug_strength, context.shape[0])
        if guided:
            context = torch.cat([torch.zeros_like(context), context])
            image_latents = torch.cat([torch.zeros_like(image_latents), image_latents])
            time_ids = torch.cat([time_ids, time_ids])
        return context, image_latents, time_ids

    def _denoise_step(self, latents, step, context, image_latents, time_ids, guidance):
        """One scheduler step on ``latents`` ``(N, t, C, h, w)``; classifier-free guidance with
        per-frame scale ``guidance`` ``(1, t, 1, 1, 1)`` unless it is ``None``."""
        x = torch.cat([latents] * 2) if guidance is not None else latents
        x = torch.cat([self.scheduler.scale_model_input(x, step), image_latents], dim=2)
        pred = self.unet(
            x, step, encoder_hidden_states=context, added_time_ids=time_ids, return_dict=False
        )[0]
        if guidance is not None:
            uncond, cond = pred.chunk(2)
            pred = uncond + guidance * (cond - uncond)
        return self.scheduler.step(pred, step, latents).prev_sample

    def _decode(
        self, z: torch.Tensor, num_frames: int, height: int, width: int, chunk: int | None
    ) -> torch.Tensor:
        """The video of latents ``z``, ``chunk`` latent frames per decoder call when given (the
        VAE's own tiling settings are restored after)."""
        size = dict(num_frames=num_frames, height=height, width=width)
        if chunk is None:
            return self.vae.decode(z, **size).sample
        saved = (self.vae.use_tiling, self.vae._inference_plan, self.vae._memory_budget)
        self.vae.enable_tiling(plan=InferencePlan(decode_latents=chunk))
        try:
            return self.vae.decode(z, **size).sample
        finally:
            self.vae.use_tiling, self.vae._inference_plan, self.vae._memory_budget = saved

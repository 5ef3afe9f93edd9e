"""The CV-VAE model: a diffusers VAE for both released flavours and our own trained ones.

Videos are ``(B, 3, T, H, W)`` in [-1, 1]; images ``(B, 3, H, W)`` (image mode: one latent frame,
4-D latents, as the image VAE). Any ``T >= 1`` and any size are accepted: inputs are padded to
``T = 1 + 4k`` frames (repeating the last frame) and to multiples of 8 (repeating edge pixels),
and ``decode(z, num_frames=..., height=..., width=...)`` crops back.

The class follows diffusers' VAE contract (``AutoencoderKL``, ``AutoencoderKLWan``): ``encode`` /
``decode`` return ``AutoencoderKLOutput`` / ``DecoderOutput``, carry ``apply_forward_hook`` (so
``enable_model_cpu_offload`` moves the model before they run), and ``enable_tiling`` /
``enable_slicing`` are runtime settings, never saved. Chunked and tiled execution lives in
:mod:`cvvae.inference`; this class picks its plan per call.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import AutoencoderMixin, DecoderOutput
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils.accelerate_utils import apply_forward_hook
from safetensors.torch import save_file

from ..errors import UserInputError
from ..inference.engine import decode_latents, encode_moments
from ..inference.precision import check_finite
from .checkpoint import LAYOUTS, to_layout
from .convs import PADDING_MODES, Conv3d
from .distributions import DiagonalGaussian
from .loading import (
    CONFIG_NAME,
    check_save_arguments,
    load_model,
    placement,
    resolve_folder,
    split_load_arguments,
    weights_name,
)
from .networks import Decoder, Encoder
from .settings import TilingSettings
from .validation import check_decode_input, check_encode_input, check_size

logger = logging.getLogger("cvvae")


class CVVAE(TilingSettings, ModelMixin, AutoencoderMixin, ConfigMixin):
    """Compatible video VAE: causal 3D encoder, non-causal 3D decoder, 4x time and 8x space.

    Config (saved by ``save_pretrained``): channels, depth, normalisation, ``padding_mode``
    (``"zeros"``: SD 2.1 flavour, ``"replicate"``: SD3 flavour), mid attention (and temporal
    decoder attention for SD 2.1), latent ``scaling_factor``/``shift_factor``, and the checkpoint
    ``state_dict_layout`` (``"ldm"`` or ``"diffusers"``) used when saving, and whether a 1x1
    ``post_quant_conv`` precedes the decoder (only for some inflated models).
    """

    config_name = CONFIG_NAME
    _supports_gradient_checkpointing = True
    spatial_compression_ratio = 8
    temporal_compression_ratio = 4

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        latent_channels: int = 4,
        block_out_channels: tuple[int, ...] = (128, 256, 512, 512),
        layers_per_block: int = 2,
        norm_num_groups: int = 32,
        norm_eps: float = 1e-5,
        padding_mode: str = "zeros",
        mid_attention: bool = True,
        decoder_temporal_attention: bool = True,
        dropout: float = 0.0,
        scaling_factor: float = 0.18215,
        shift_factor: float | None = None,
        state_dict_layout: str = "ldm",
        use_post_quant_conv: bool = False,
    ):
        super().__init__()
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        if state_dict_layout not in LAYOUTS:
            raise ValueError(
                f"state_dict_layout must be one of {LAYOUTS}, got {state_dict_layout!r}"
            )
        if len(block_out_channels) != 4:
            raise ValueError("block_out_channels must have 4 levels (8x space, 4x time)")
        common = dict(
            latent_channels=latent_channels,
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            norm_num_groups=norm_num_groups,
            norm_eps=norm_eps,
            padding_mode=padding_mode,
            mid_attention=mid_attention,
            dropout=dropout,
        )
        self.encoder = Encoder(in_channels, **common)
        self.decoder = Decoder(
            out_channels, temporal_attention=decoder_temporal_attention, **common
        )
        # A 1x1 conv on latents before the decoder, kept only by inflation from an image VAE whose
        # post_quant_conv has a bias (see inflation.py); the released models have none.
        self.post_quant_conv = (
            Conv3d(latent_channels, latent_channels, 1) if use_post_quant_conv else None
        )
        self.use_slicing = False  # runtime settings, never saved (tiling: TilingSettings)

    # ----------------------------------------------------------------- shapes and scaling
    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        """Latent ``(t, h, w)`` for a clip of ``num_frames x height x width``."""
        return (
            1 + math.ceil((num_frames - 1) / self.temporal_compression_ratio),
            math.ceil(height / self.spatial_compression_ratio),
            math.ceil(width / self.spatial_compression_ratio),
        )

    def scale_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latents -> the normalised latents a diffusion model works on."""
        shift = self.config.shift_factor or 0.0
        return (z - shift) * self.config.scaling_factor

    def unscale_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`scale_latents`."""
        shift = self.config.shift_factor or 0.0
        return z / self.config.scaling_factor + shift

    def decoder_last_layer(self) -> torch.nn.Parameter:
        """Weight of the decoder's output conv (for the adaptive GAN weight)."""
        return self.decoder.conv_out.weight

    def _pad_input(self, x: torch.Tensor) -> torch.Tensor:
        """Pad ``(B, C, T, H, W)`` to ``T = 1 + 4k`` (repeat last frame) and H, W to multiples of 8."""
        t, h, w = x.shape[2:]
        lt, lh, lw = self.latent_shape(t, h, w)
        pad_t = 1 + (lt - 1) * self.temporal_compression_ratio - t
        pad_h = lh * self.spatial_compression_ratio - h
        pad_w = lw * self.spatial_compression_ratio - w
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h, 0, 0), mode="replicate")
        if pad_t:
            x = torch.cat([x, x[:, :, -1:].expand(-1, -1, pad_t, -1, -1)], dim=2)
        return x

    # ----------------------------------------------------------------- encode / decode
    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder moments ``(B, 2C, t, h, w)`` of a padded video ``(B, 3, 1 + 4k, 8h, 8w)``."""
        plan = self._plan("encode", *x.shape[2:])
        if plan is None:
            moments = self.encoder(x)
        else:
            moments = encode_moments(self.encoder, x, plan)
        if self._checks_finite():
            check_finite(moments, self.encoder, lambda: self.encoder(x), "encoder")
        return moments

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        """Video ``(B, 3, 1 + 4(t - 1), 8h, 8w)`` of latents ``(B, C, t, h, w)``."""
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        t, h, w = z.shape[2:]
        plan = self._plan(
            "decode",
            1 + (t - 1) * self.temporal_compression_ratio,
            h * self.spatial_compression_ratio,
            w * self.spatial_compression_ratio,
        )
        x = self.decoder(z) if plan is None else decode_latents(self.decoder, z, plan)
        if self._checks_finite():
            check_finite(x, self.decoder, lambda: self.decoder(z), "decoder")
        return x

    def _checks_finite(self) -> bool:
        """Check outputs except in a training step (the trainer skips non-finite steps)."""
        return not (torch.is_grad_enabled() and self.training)

    @apply_forward_hook
    def encode(
        self, x: torch.Tensor, return_dict: bool = True
    ) -> AutoencoderKLOutput | tuple[DiagonalGaussian]:
        """Encode ``(B, 3, T, H, W)`` (or an image ``(B, 3, H, W)``) to a posterior over latents
        ``(B, C, t, h, w)`` (``(B, C, h, w)`` for images), see :meth:`latent_shape`; with
        slicing, one sample at a time."""
        check_encode_input(x, self.config.in_channels, self.dtype)
        image = x.dim() == 4
        video = self._pad_input(x.unsqueeze(2) if image else x)
        if self.use_slicing and video.shape[0] > 1:
            moments = torch.cat([self._encode(part) for part in video.split(1)])
        else:
            moments = self._encode(video)
        posterior = DiagonalGaussian(moments.squeeze(2) if image else moments)
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    @apply_forward_hook
    def decode(
        self,
        z: torch.Tensor,
        return_dict: bool = True,
        *,
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        generator: torch.Generator | None = None,
    ) -> DecoderOutput | tuple[torch.Tensor]:
        """Decode latents ``(B, C, t, h, w)`` to ``(B, 3, 1 + 4(t-1), 8h, 8w)``, cropped to
        ``num_frames``/``height``/``width`` when given (at least 1, at most the decoded size).
        Image latents ``(B, C, h, w)`` decode to images. ``generator`` is accepted as diffusers
        pipelines pass it, and unused: decoding is deterministic. With slicing, one sample at a
        time."""
        check_decode_input(z, self.config.latent_channels, self.dtype)
        image = z.dim() == 4
        z = z.unsqueeze(2) if image else z
        full = (
            1 + (z.shape[2] - 1) * self.temporal_compression_ratio,
            z.shape[3] * self.spatial_compression_ratio,
            z.shape[4] * self.spatial_compression_ratio,
        )
        crop = [
            check_size(name, value, limit)
            for name, value, limit in zip(
                ("num_frames", "height", "width"), (num_frames, height, width), full, strict=True
            )
        ]
        if self.use_slicing and z.shape[0] > 1:
            x = torch.cat([self._decode(part) for part in z.split(1)])
        else:
            x = self._decode(z)
        x = x[:, :, : crop[0], : crop[1], : crop[2]]
        if image:
            x = x[:, :, 0]
        return DecoderOutput(sample=x) if return_dict else (x,)

    def forward(
        self,
        sample: torch.Tensor,
        sample_posterior: bool = False,
        return_dict: bool = True,
        generator: torch.Generator | None = None,
    ) -> DecoderOutput | tuple[torch.Tensor]:
        """Encode then decode ``sample`` (posterior mode, or a sample with ``generator``); the
        reconstruction has the shape of ``sample``."""
        posterior = self.encode(sample).latent_dist
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        frames = None if sample.dim() == 4 else sample.shape[2]
        size = dict(height=sample.shape[-2], width=sample.shape[-1])
        x = self.decode(z, num_frames=frames, **size).sample
        return DecoderOutput(sample=x) if return_dict else (x,)

    # ----------------------------------------------------------------- checkpoints
    def layout_state_dict(self) -> dict[str, torch.Tensor]:
        """The state dict under the checkpoint names and shapes of ``config.state_dict_layout``."""
        return to_layout(
            self.state_dict(), self.config.state_dict_layout, len(self.config.block_out_channels)
        )

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        is_main_process: bool = True,
        save_function=None,
        safe_serialization: bool = True,
        variant: str | None = None,
        push_to_hub: bool = False,
        **kwargs,
    ) -> None:
        """Write ``config.json`` and ``diffusion_pytorch_model[.variant].safetensors`` (in the
        config's layout; written atomically). Nothing is written when not ``is_main_process``.
        Arguments of diffusers' ``save_pretrained`` this model cannot honour (pickle weights, a
        ``save_function``, ``push_to_hub``) raise ``ValueError``."""
        check_save_arguments(safe_serialization, save_function, push_to_hub, kwargs)
        if not is_main_process:
            return
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.save_config(directory)
        name = weights_name(variant)
        tmp = directory / (name + ".tmp")
        save_file(self.layout_state_dict(), tmp, metadata={"format": "pt"})
        os.replace(tmp, directory / name)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        subfolder: str | None = None,
        **kwargs,
    ) -> CVVAE:
        """Load a local folder or a Hub repo (``subfolder`` e.g. ``"vae3d"``): a released CV-VAE
        folder (``CVVAEModel`` / ``CVVAESD3Model``) or one saved by :meth:`save_pretrained`.

        Takes diffusers' arguments: ``torch_dtype`` (default float32, whatever the weights'
        dtype, as diffusers does), ``variant``, ``device_map`` (one device),
        ``output_loading_info`` and the Hub ones (``revision``, ``cache_dir``, ``token``, ...);
        others raise ``ValueError`` when set (see :mod:`cvvae.models.loading`). A name that is
        not a local folder goes to the Hub only if it can be a repo id, and a failure says so.
        Loading is strict; problems raise :class:`UserInputError` naming the key and folder."""
        hub, local = split_load_arguments(kwargs)
        device = placement(local.get("device_map"))
        folder = resolve_folder(str(pretrained_model_name_or_path), subfolder, hub)
        config_path = folder / CONFIG_NAME
        weights_path = folder / weights_name(local.get("variant"))
        for path in (config_path, weights_path):
            if not path.is_file():
                raise UserInputError(f"model folder has no {path.name}: {folder}")
        model = load_model(cls, config_path, weights_path)
        dtype = local.get("torch_dtype") or torch.get_default_dtype()
        model = torch.nn.Module.to(model, device, dtype)  # ModelMixin.to warns on every cast
        model = model.eval()
        if local.get("output_loading_info"):
            empty: list[str] = []
            return model, dict(missing_keys=empty, unexpected_keys=[], mismatched_keys=[])
        return model

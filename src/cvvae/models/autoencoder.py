"""The CV-VAE model: a diffusers model class for both released flavours and our own trained ones.

Videos are ``(B, 3, T, H, W)`` in [-1, 1]; images ``(B, 3, H, W)`` (image mode: one latent frame,
4-D latents, as the image VAE). Any ``T >= 1`` and any size are accepted: inputs are padded to
``T = 1 + 4k`` frames (repeating the last frame) and to multiples of 8 (repeating edge pixels),
and ``decode(..., num_frames, height, width)`` crops back.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from safetensors.torch import load_file, save_file

from ..errors import UserInputError
from ..inference.planner import ChunkPlan, describe_plan, plan_for_budget
from ..inference.precision import check_finite
from ..inference.streaming import decode_latents, encode_moments
from .checkpoint import LAYOUTS, config_from_released, from_layout, to_layout
from .distributions import DiagonalGaussian
from .layers import PADDING_MODES, Conv3d
from .networks import Decoder, Encoder

logger = logging.getLogger("cvvae")

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
CONFIG_NAME = "config.json"


@dataclass
class EncoderOutput(BaseOutput):
    """``latent_dist``: the posterior over latents."""

    latent_dist: DiagonalGaussian


@dataclass
class DecoderOutput(BaseOutput):
    """``sample``: decoded video ``(B, 3, T, H, W)`` or image ``(B, 3, H, W)``."""

    sample: torch.Tensor


@dataclass
class AutoencoderOutput(BaseOutput):
    """``sample``: the reconstruction; ``latent_dist``: the posterior it was decoded from."""

    sample: torch.Tensor
    latent_dist: DiagonalGaussian


class CVVAE(ModelMixin, ConfigMixin):
    """Compatible video VAE: causal 3D encoder, non-causal 3D decoder, 4x time and 8x space.

    Config (saved by ``save_pretrained``): channels, depth, normalisation, ``padding_mode``
    (``"zeros"``: SD 2.1 flavour, ``"replicate"``: SD3 flavour), mid attention (and temporal
    decoder attention for SD 2.1), latent ``scaling_factor``/``shift_factor``, and the checkpoint
    ``state_dict_layout`` (``"ldm"`` or ``"diffusers"``) used when saving, and whether a 1x1
    ``post_quant_conv`` precedes the decoder (only for some inflated models).
    """

    config_name = CONFIG_NAME
    _supports_gradient_checkpointing = True

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
        self._chunk_plan: ChunkPlan | None = None
        self._memory_budget: float | None = None

    temporal_compression = 4
    spatial_compression = 8

    # ----------------------------------------------------------------- shapes and scaling
    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        """Latent ``(t, h, w)`` for a clip of ``num_frames x height x width``."""
        return (
            1 + math.ceil((num_frames - 1) / self.temporal_compression),
            math.ceil(height / self.spatial_compression),
            math.ceil(width / self.spatial_compression),
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
        pad_t = 1 + (lt - 1) * self.temporal_compression - t
        pad_h = lh * self.spatial_compression - h
        pad_w = lw * self.spatial_compression - w
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h, 0, 0), mode="replicate")
        if pad_t:
            x = torch.cat([x, x[:, :, -1:].expand(-1, -1, pad_t, -1, -1)], dim=2)
        return x

    # ----------------------------------------------------------------- runtime settings
    def enable_tiling(
        self,
        encode_frames: int = 16,
        decode_latents: int = 4,
        encode_stats: str = "running",
        decode_stats: str = "running",
        tile_size: int | None = None,
        tile_levels: int = 2,
        tile_order: str = "lockstep",
        encode_sampling: int = 0,
        decode_sampling: int = 3,
    ) -> None:
        """Run the full-resolution parts in time chunks (expert settings; never saved).

        ``encode_frames`` video frames (a multiple of 4) per encoder chunk, ``decode_latents``
        latent frames per decoder chunk; ``*_stats`` is how clip-wide GroupNorm statistics are
        obtained (``"two_pass"``, ``"running"`` or ``"chunk"``, see
        :mod:`cvvae.inference.streaming`). Memory then grows with the chunk, not the clip.
        ``tile_size`` (video pixels) also splits the frames of the ``tile_levels`` finest levels
        (of 4) into tiles with halos; the coarser levels run on whole frames. Tiles advance
        together chunk by chunk (``tile_order="lockstep"``: one pass, all tiles' caches held) or
        one after the other over the whole clip (``"sequential"``: the least memory, two passes).
        With lockstep tiles and running statistics, ``*_sampling = N`` makes each call first run
        a crop of ``1 / N`` of each tile's side at its centre to sample the whole frame's
        GroupNorm moments, so no tile is normalised with its own region alone (0: off; on by
        default for the decoder, whose small calls it brings much closer to the full pass);
        docs/performance.md.
        """
        self._chunk_plan = ChunkPlan(
            encode_frames,
            decode_latents,
            encode_stats,
            decode_stats,
            tile_size,
            tile_levels,
            tile_order,
            encode_sampling,
            decode_sampling,
        )
        self._memory_budget = None

    def set_memory_budget(self, gib: float) -> None:
        """Pick chunk sizes per call so the estimated peak stays under ``gib`` GiB (logged)."""
        if gib <= 0:
            raise ValueError(f"memory budget must be positive, got {gib}")
        self._memory_budget = gib
        self._chunk_plan = None

    def disable_tiling(self) -> None:
        """Back to one full pass over the clip (exact, memory grows with the clip)."""
        self._chunk_plan = None
        self._memory_budget = None

    def _plan(self, direction: str, frames: int, height: int, width: int) -> ChunkPlan | None:
        """The chunk plan for one call (``direction``: ``"encode"``/``"decode"``), logged when a
        memory budget picked it."""
        if self._memory_budget is None:
            return self._chunk_plan
        channels = self.config.block_out_channels
        plan = plan_for_budget(
            self._memory_budget * 2**30,
            frames,
            height,
            width,
            channels[0],
            channels[-1],
            self.dtype.itemsize,
            direction,
        )
        logger.info(
            "memory budget %.2f GiB, %d frames %dx%d -> %s",
            self._memory_budget,
            frames,
            width,
            height,
            describe_plan(plan, direction),
        )
        return plan

    # ----------------------------------------------------------------- encode / decode
    def encode(self, x: torch.Tensor, return_dict: bool = True):
        """Encode ``(B, 3, T, H, W)`` (or an image ``(B, 3, H, W)``) to a posterior over latents
        ``(B, C, t, h, w)`` (``(B, C, h, w)`` for images), see :meth:`latent_shape`."""
        if x.dim() not in (4, 5):
            raise ValueError(
                f"expected (B, 3, T, H, W) or (B, 3, H, W), got shape {tuple(x.shape)}"
            )
        image = x.dim() == 4
        video = self._pad_input(x.unsqueeze(2) if image else x)
        plan = None if image else self._plan("encode", *video.shape[2:])
        if plan is None:
            moments = self.encoder(video)
        else:
            moments = encode_moments(
                self.encoder,
                video,
                plan.encode_frames,
                plan.encode_stats,
                plan.tile_size,
                plan.tile_levels,
                plan.tile_order,
                plan.encode_sampling,
            )
        if not torch.is_grad_enabled():
            check_finite(moments, self.encoder, lambda: self.encoder(video), "encoder")
        posterior = DiagonalGaussian(moments.squeeze(2) if image else moments)
        return EncoderOutput(latent_dist=posterior) if return_dict else (posterior,)

    def decode(
        self,
        z: torch.Tensor,
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        return_dict: bool = True,
        generator: torch.Generator | None = None,
    ):
        """Decode latents ``(B, C, t, h, w)`` to ``(B, 3, 1 + 4(t-1), 8h, 8w)``, cropped to
        ``num_frames``/``height``/``width`` when given. Image latents ``(B, C, h, w)`` decode to
        images. ``generator`` is accepted for diffusers pipelines and unused (decoding is
        deterministic)."""
        if z.dim() not in (4, 5):
            raise ValueError(
                f"expected (B, C, t, h, w) or (B, C, h, w), got shape {tuple(z.shape)}"
            )
        image = z.dim() == 4
        z = z.unsqueeze(2) if image else z
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        t, h, w = z.shape[2:]
        plan = (
            None
            if image
            else self._plan(
                "decode",
                1 + (t - 1) * self.temporal_compression,
                h * self.spatial_compression,
                w * self.spatial_compression,
            )
        )
        if plan is None:
            x = self.decoder(z)
        else:
            x = decode_latents(
                self.decoder,
                z,
                plan.decode_latents,
                plan.decode_stats,
                plan.tile_size,
                plan.tile_levels,
                plan.tile_order,
                plan.decode_sampling,
            )
        if not torch.is_grad_enabled():
            check_finite(x, self.decoder, lambda: self.decoder(z), "decoder")
        x = x[:, :, :num_frames, :height, :width]
        if image:
            x = x[:, :, 0]
        return DecoderOutput(sample=x) if return_dict else (x,)

    def forward(
        self,
        sample: torch.Tensor,
        sample_posterior: bool = False,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ):
        """Encode then decode ``sample``; returns the reconstruction (same shape) and posterior."""
        posterior = self.encode(sample).latent_dist
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        frames = None if sample.dim() == 4 else sample.shape[2]
        x = self.decode(z, frames, sample.shape[-2], sample.shape[-1]).sample
        return AutoencoderOutput(sample=x, latent_dist=posterior) if return_dict else (x, posterior)

    # ----------------------------------------------------------------- checkpoints
    def layout_state_dict(self) -> dict[str, torch.Tensor]:
        """The state dict under the checkpoint names and shapes of ``config.state_dict_layout``."""
        return to_layout(
            self.state_dict(), self.config.state_dict_layout, len(self.config.block_out_channels)
        )

    def save_pretrained(self, save_directory: str | os.PathLike, **_ignored) -> None:
        """Write ``config.json`` and ``diffusion_pytorch_model.safetensors`` (in the config's layout)."""
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.save_config(directory)
        tensors = self.layout_state_dict()
        tmp = directory / (WEIGHTS_NAME + ".tmp")
        save_file(tensors, tmp, metadata={"format": "pt"})
        os.replace(tmp, directory / WEIGHTS_NAME)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        subfolder: str | None = None,
        torch_dtype: torch.dtype | None = None,
        **_ignored,
    ) -> CVVAE:
        """Load a local folder or a Hub repo (``subfolder`` e.g. ``"vae3d"``): a released CV-VAE
        folder (``CVVAEModel`` / ``CVVAESD3Model``) or one saved by :meth:`save_pretrained`.
        Loading is strict; problems raise :class:`UserInputError` naming the key and folder."""
        folder = _resolve_folder(str(pretrained_model_name_or_path), subfolder)
        config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
        for path in (config_path, weights_path):
            if not path.is_file():
                raise UserInputError(f"model folder has no {path.name}: {folder}")
        try:
            raw = json.loads(config_path.read_text())
        except (OSError, ValueError) as error:
            raise UserInputError(f"unreadable model config ({error}): {config_path}") from None
        config = _our_config(raw, str(config_path))
        with torch.device("meta"):
            model = cls(**config)
        try:
            checkpoint = load_file(weights_path)
        except Exception as error:  # safetensors raises several types for corrupt files
            raise UserInputError(f"unreadable model weights ({error}): {weights_path}") from None
        tensors = from_layout(
            checkpoint,
            model.state_dict(),
            model.config.state_dict_layout,
            len(model.config.block_out_channels),
            str(weights_path),
        )
        model.load_state_dict(tensors, strict=True, assign=True)
        if torch_dtype is not None:
            model = torch.nn.Module.to(model, torch_dtype)  # ModelMixin.to warns on every cast
        return model.eval()


def _our_config(raw: dict, source: str) -> dict:
    if raw.get("_class_name") in ("CVVAEModel", "CVVAESD3Model"):
        return config_from_released(raw, source)
    if raw.get("_class_name") != CVVAE.__name__:
        raise UserInputError(f"unknown model class {raw.get('_class_name')!r} in {source}")
    config = {k: v for k, v in raw.items() if not k.startswith("_")}
    unknown = set(config) - (set(CVVAE._get_init_keys(CVVAE)) - {"self"})
    if unknown:
        raise UserInputError(f"unknown config keys {sorted(unknown)} in {source}")
    return config


def _resolve_folder(name: str, subfolder: str | None) -> Path:
    local = Path(name)
    if local.exists():
        folder = local / subfolder if subfolder else local
        if not folder.is_dir():
            raise UserInputError(f"not a model folder: {folder}")
        return folder
    if local.is_absolute() or name.startswith(".") or name.count("/") != 1:
        raise UserInputError(f"no such model folder: {name}")
    try:
        from huggingface_hub import snapshot_download

        pattern = f"{subfolder}/*" if subfolder else "*"
        root = Path(snapshot_download(name, allow_patterns=[pattern]))
    except Exception as error:
        raise UserInputError(
            f"cannot fetch model {name!r} from the Hub ({type(error).__name__}); "
            f"pass a local folder instead: {name}"
        ) from None
    return root / subfolder if subfolder else root

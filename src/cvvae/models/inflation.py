"""Inflate a 2D image VAE (diffusers ``AutoencoderKL``) into a CV-VAE.

Every 3D kernel starts as the image VAE's 2D kernel at the temporal tap that sees the current
frame (the last tap of causal encoder convs, the centre tap of decoder convs), zeros elsewhere;
a time-doubling upsampler gets the 2D kernel for both of its output frames. The image VAE's
``quant_conv`` is folded into ``encoder.conv_out`` (exact: nothing pads in between).

``post_quant_conv`` is folded into ``decoder.conv_in`` when that is exact, i.e. when its bias is
zero. A nonzero bias cannot be folded exactly: ``decoder.conv_in`` zero-pads its input, and the
padded border would no longer see the bias, which then changes every pixel through the clip-wide
GroupNorm statistics and attention (a max error of 1.6 on a random tiny VAE). Such a
``post_quant_conv`` is kept as a 1x1 layer in front of the decoder (``use_post_quant_conv=True``)
unless ``fold_post_quant_conv=True`` asks for the released layout at that approximation.

After inflation, image mode reproduces the image VAE's latent and reconstruction, and a static
clip encodes to the image latent repeated.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL

from .autoencoder import CVVAE
from .checkpoint import layout_name

_BLOCKS = ({"DownEncoderBlock2D"}, {"UpDecoderBlock2D"})


def config_from_image_vae(image_vae: AutoencoderKL, use_post_quant_conv: bool = False) -> dict:
    """The CV-VAE config matching ``image_vae`` (same channels, depth and latent normalisation)."""
    cfg = image_vae.config
    if len(cfg.block_out_channels) != 4:
        raise ValueError("the image VAE must have 4 levels (8x spatial compression)")
    if set(cfg.down_block_types) != _BLOCKS[0] or set(cfg.up_block_types) != _BLOCKS[1]:
        raise ValueError("the image VAE must use DownEncoderBlock2D / UpDecoderBlock2D blocks")
    if cfg.act_fn != "silu":
        raise ValueError(f"unsupported activation {cfg.act_fn!r} (expected silu)")
    return {
        "in_channels": cfg.in_channels,
        "out_channels": cfg.out_channels,
        "latent_channels": cfg.latent_channels,
        "block_out_channels": tuple(cfg.block_out_channels),
        "layers_per_block": cfg.layers_per_block,
        "norm_num_groups": cfg.norm_num_groups,
        "norm_eps": 1e-6,
        "padding_mode": "zeros",
        "mid_attention": cfg.mid_block_add_attention,
        "decoder_temporal_attention": False,
        "scaling_factor": cfg.scaling_factor,
        "shift_factor": cfg.shift_factor,
        "state_dict_layout": "ldm",
        "use_post_quant_conv": use_post_quant_conv,
    }


def _tap(name: str) -> int:
    """Temporal tap of a 3x3x3 kernel that sees the current frame."""
    return 2 if name.startswith("encoder.") else 1


def _inflate_kernel(weight_2d: torch.Tensor, shape_3d: torch.Size, tap: int) -> torch.Tensor:
    """``(O, I, kh, kw)`` -> ``(O', I, 3, kh, kw)`` with the kernel at ``tap``; when ``O' = 2 O``
    (time-doubling upsampler) both output-frame halves get the kernel."""
    weight = torch.zeros(shape_3d, dtype=weight_2d.dtype)
    repeats = shape_3d[0] // weight_2d.shape[0]
    weight[:, :, tap] = weight_2d.repeat(repeats, 1, 1, 1)
    return weight


def _folded_quant_convs(image_sd: dict, fold_post_quant_conv: bool) -> dict:
    """``encoder.conv_out`` with ``quant_conv`` folded in; ``decoder.conv_in`` with
    ``post_quant_conv`` folded in if asked."""
    out = {}
    if "quant_conv.weight" in image_sd:
        q, qb = image_sd["quant_conv.weight"][:, :, 0, 0], image_sd["quant_conv.bias"]
        w, b = image_sd["encoder.conv_out.weight"], image_sd["encoder.conv_out.bias"]
        out["encoder.conv_out.weight"] = torch.einsum("oj,jchw->ochw", q, w)
        out["encoder.conv_out.bias"] = q @ b + qb
    if fold_post_quant_conv and "post_quant_conv.weight" in image_sd:
        p, pb = image_sd["post_quant_conv.weight"][:, :, 0, 0], image_sd["post_quant_conv.bias"]
        w, b = image_sd["decoder.conv_in.weight"], image_sd["decoder.conv_in.bias"]
        out["decoder.conv_in.weight"] = torch.einsum("ojhw,ji->oihw", w, p)
        out["decoder.conv_in.bias"] = b + torch.einsum("ojhw,j->o", w, pb)
    return out


@torch.no_grad()
def inflate_from_image_vae(
    image_vae: AutoencoderKL, fold_post_quant_conv: bool | None = None
) -> CVVAE:
    """A CV-VAE initialised from ``image_vae`` (see the module docstring for the rule).

    ``fold_post_quant_conv``: ``None`` folds it only when exact (zero bias); ``True`` always
    folds (released layout); ``False`` always keeps it as a layer.
    """
    image_sd = {k: v.detach().float().cpu() for k, v in image_vae.state_dict().items()}
    has_post_quant = "post_quant_conv.weight" in image_sd
    if fold_post_quant_conv is None:
        fold_post_quant_conv = not has_post_quant or not image_sd["post_quant_conv.bias"].any()
    keep = has_post_quant and not fold_post_quant_conv
    model = CVVAE(**config_from_image_vae(image_vae, use_post_quant_conv=keep))
    image_sd.update(_folded_quant_convs(image_sd, fold_post_quant_conv))
    levels = len(model.config.block_out_channels)
    inflated = {}
    for name, ours in model.state_dict().items():
        source = image_sd[layout_name(name, "diffusers", levels)]
        if ours.dim() == 5 and ours.shape[2] == 3:
            inflated[name] = _inflate_kernel(source, ours.shape, _tap(name))
        elif name.endswith("upsample.conv.bias"):  # one bias per output frame of the upsampler
            inflated[name] = source.repeat(ours.shape[0] // source.shape[0])
        else:
            inflated[name] = source.reshape(ours.shape)
    model.load_state_dict(inflated, strict=True)
    return model.eval()

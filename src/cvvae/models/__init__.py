"""Networks, the CV-VAE model class, checkpoint layouts and inflation from an image VAE."""

from diffusers.models.autoencoders.vae import DecoderOutput
from diffusers.models.modeling_outputs import AutoencoderKLOutput

from .autoencoder import CVVAE
from .distributions import DiagonalGaussian
from .inflation import inflate_from_image_vae

__all__ = [
    "CVVAE",
    "AutoencoderKLOutput",
    "DecoderOutput",
    "DiagonalGaussian",
    "inflate_from_image_vae",
]

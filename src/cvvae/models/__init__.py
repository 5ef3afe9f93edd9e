"""Networks, the CV-VAE model class, checkpoint layouts and inflation from an image VAE."""

from .autoencoder import CVVAE, AutoencoderOutput, DecoderOutput, EncoderOutput
from .distributions import DiagonalGaussian
from .inflation import inflate_from_image_vae

__all__ = [
    "CVVAE",
    "AutoencoderOutput",
    "DecoderOutput",
    "DiagonalGaussian",
    "EncoderOutput",
    "inflate_from_image_vae",
]

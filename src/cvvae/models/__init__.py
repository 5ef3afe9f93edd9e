"""Networks, the CV-VAE model class, checkpoint layouts and inflation from an image VAE."""

from .autoencoder import CVVAE, AutoencoderOutput, DecoderOutput, EncoderOutput
from .distributions import DiagonalGaussian

__all__ = ["CVVAE", "AutoencoderOutput", "DecoderOutput", "DiagonalGaussian", "EncoderOutput"]

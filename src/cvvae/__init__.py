"""cvvae: compatible video VAEs (CV-VAE) — load, run, train and evaluate."""

from .errors import UserInputError
from .models import CVVAE, DiagonalGaussian, inflate_from_image_vae

__all__ = ["CVVAE", "DiagonalGaussian", "UserInputError", "inflate_from_image_vae"]
__version__ = "0.1.0"

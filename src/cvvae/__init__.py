"""cvvae: compatible video VAEs (CV-VAE) — load, run, train and evaluate."""

from .errors import UserInputError
from .models import CVVAE, DiagonalGaussian

__all__ = ["CVVAE", "DiagonalGaussian", "UserInputError"]
__version__ = "0.1.0"

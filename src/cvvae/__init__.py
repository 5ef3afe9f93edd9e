"""cvvae: compatible video VAEs (CV-VAE) — load, run, train and evaluate."""

from .errors import UserInputError
from .inference.plan import InferencePlan
from .models import CVVAE, DiagonalGaussian, inflate_from_image_vae

__all__ = ["CVVAE", "DiagonalGaussian", "InferencePlan", "UserInputError", "inflate_from_image_vae"]
__version__ = "0.1.0"

"""cvvae: compatible video VAEs (CV-VAE) — load, run, train and evaluate.

The model classes are imported on first use (``cvvae.CVVAE``), so that ``import cvvae.cli``
and ``cvvae --help`` do not load torch and diffusers.
"""

from .errors import UserInputError

__all__ = ["CVVAE", "DiagonalGaussian", "InferencePlan", "UserInputError", "inflate_from_image_vae"]
__version__ = "0.1.0"

_FROM_MODELS = ("CVVAE", "DiagonalGaussian", "inflate_from_image_vae")


def __getattr__(name: str):
    if name in _FROM_MODELS:
        from . import models

        return getattr(models, name)
    if name == "InferencePlan":
        from .inference.plan import InferencePlan

        return InferencePlan
    raise AttributeError(f"module 'cvvae' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

"""Training a compatible video VAE: config, data, losses, discriminator, checkpoints, trainer."""

from cvvae.training.config import TrainConfig, load_config, save_config
from cvvae.training.trainer import Trainer, train

__all__ = ["TrainConfig", "Trainer", "load_config", "save_config", "train"]

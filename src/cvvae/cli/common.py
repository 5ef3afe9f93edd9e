"""Shared pieces of the command line: parser classes, argument types, model loading, progress."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from tqdm import tqdm

from cvvae.errors import UserInputError
from cvvae.models import CVVAE

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def default_model_path() -> Path | None:
    """The model folder used when ``--model`` is not given: the bundled small CV-VAE
    (``cvvae/assets/model``, see ``assets/MODEL_CARD.md``), or None when it is not installed."""
    folder = Path(__file__).resolve().parents[1] / "assets" / "model"
    return folder if (folder / "config.json").is_file() else None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserInputError("--device cuda was given but no CUDA device is available")
    return torch.device(name)


def model_folder(args: argparse.Namespace) -> Path:
    folder = args.model if args.model is not None else default_model_path()
    if folder is None:
        raise UserInputError("no --model given and no bundled model installed")
    return Path(folder)


def load_model(
    folder: Path,
    device: torch.device,
    dtype: torch.dtype | None,
    memory_budget: float | None = None,
) -> CVVAE:
    """Load a model folder onto ``device``; with ``memory_budget`` (GiB) it runs in chunks."""
    from cvvae.models.checkpoint import check_model_folder

    if not folder.is_dir():
        raise UserInputError(f"model folder not found: {folder}")
    check_model_folder(folder)
    try:
        model = CVVAE.from_pretrained(folder)
    except (ValueError, TypeError) as error:  # a config the checks above did not foresee
        raise UserInputError(f"cannot build the model ({error}): {folder}") from None
    model = torch.nn.Module.to(model, device, dtype)
    if memory_budget is not None:
        model.set_memory_budget(memory_budget)
    return model


@contextmanager
def stages(total: int) -> Iterator:
    """A progress bar over ``total`` stages (shown on a terminal only, cleared when done).

    Yields ``stage(name)``: a context manager that labels the bar and advances it on success.
    """
    with tqdm(total=total, unit="stage", leave=False, disable=None, file=sys.stderr) as bar:

        @contextmanager
        def stage(name: str) -> Iterator[None]:
            bar.set_description(name)
            yield
            bar.update()

        yield stage


class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show defaults and keep the hand-wrapped descriptions."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors become one-line UserInputErrors."""

    def error(self, message: str):
        raise UserInputError(f"{message} (see '{self.prog} --help')")


def integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def positive(text: str) -> int:
    value = integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be > 0 and finite, got {text}")
    return value


def non_negative(text: str) -> int:
    value = integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def add_device_options(p) -> None:
    """``--device`` and ``--dtype`` on a parser or argument group."""
    p.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="where to run the model; auto = cuda if available, else cpu",
    )
    p.add_argument(
        "--dtype",
        choices=list(DTYPES),
        default="float32",
        help="model weights and compute precision",
    )


def add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        type=Path,
        help="model folder (config.json + diffusion_pytorch_model.safetensors); "
        "a released CV-VAE folder or one saved by cvvae. Default: the bundled model, if installed",
    )
    add_device_options(p)
    p.add_argument(
        "--memory-budget",
        type=positive_float,
        metavar="GIB",
        help="run long or large videos in time chunks (and spatial tiles) sized to stay under about GIB GiB "
        "(the chosen chunk sizes are logged); default: one exact full pass",
    )

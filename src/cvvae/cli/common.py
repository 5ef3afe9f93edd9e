"""Shared pieces of the command line: parser classes, argument types, model loading.

torch and the model code are imported inside the functions that need them, so that building
the parser (``cvvae --help``) stays fast.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import TYPE_CHECKING

from cvvae.errors import UserInputError

if TYPE_CHECKING:
    import torch

    from cvvae.models import CVVAE

DTYPE_NAMES = ("float32", "float16", "bfloat16")


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype named by ``--dtype`` (one of :data:`DTYPE_NAMES`)."""
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


BUNDLED_SHORT_SIDE = 128  # the bundled model saw frames this size on the short side (MODEL_CARD.md)


def default_model_path() -> Path | None:
    """The model folder used when ``--model`` is not given: the bundled small CV-VAE
    (``cvvae/assets/model``, see ``assets/MODEL_CARD.md``), or None when it is not installed."""
    folder = Path(__file__).resolve().parents[1] / "assets" / "model"
    return folder if (folder / "config.json").is_file() else None


def resolve_device(name: str) -> torch.device:
    import torch

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
    import torch

    from cvvae.models import CVVAE
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


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Keep the hand-wrapped descriptions; end an option's help with its default, unless the
    default is None or False (nothing to say) or the help already names it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            "%(default)" in text
            or action.default is None
            or action.default is False
            or action.default is argparse.SUPPRESS
            or not (action.option_strings or action.nargs in (argparse.OPTIONAL, "*"))
        ):
            return text
        return text + " (default: %(default)s)"


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
        choices=DTYPE_NAMES,
        default="float32",
        help="model weights and compute precision",
    )


def add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        type=Path,
        help="model folder (config.json + diffusion_pytorch_model.safetensors); "
        "a released CV-VAE folder or one saved by cvvae. Default: the bundled model, if installed "
        f"(trained on frames with a {BUNDLED_SHORT_SIDE}-pixel short side: inputs are read at that "
        "scale unless --height/--width say otherwise)",
    )
    add_device_options(p)
    p.add_argument(
        "--memory-budget",
        type=positive_float,
        metavar="GIB",
        help="a budget for the model's encode and decode calls: they run in time chunks (and "
        "spatial tiles) sized so that their estimated working memory (activations, their input "
        "and output) stays under about GIB GiB; the chosen sizes are logged. Not a limit for "
        "the whole command: the weights, the clip as read, copies for writing and the metrics "
        "come on top. Default: one exact full pass",
    )

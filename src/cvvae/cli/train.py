"""Commands that make models: inflate an image VAE, train a compatible video VAE."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from cvvae.cli.common import Formatter
from cvvae.errors import UserInputError


def cmd_inflate(args: argparse.Namespace) -> None:
    """Inflate a diffusers AutoencoderKL folder into a CV-VAE folder."""
    from diffusers import AutoencoderKL

    from cvvae.models.inflation import inflate_from_image_vae

    if not (args.image_vae / "config.json").is_file():
        raise UserInputError(
            f"not a diffusers AutoencoderKL folder (no config.json): {args.image_vae}"
        )
    if args.output.exists() or args.output.is_symlink():
        raise UserInputError(f"output folder already exists: {args.output}")
    if not args.output.parent.is_dir():
        raise UserInputError(f"output folder's parent does not exist: {args.output}")
    try:
        # a local folder only: nothing is fetched, and a .bin is read with weights_only=True
        image_vae = AutoencoderKL.from_pretrained(args.image_vae, local_files_only=True)
    except Exception as error:  # diffusers raises many types for missing or damaged files
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserInputError(f"cannot load the image VAE ({first}): {args.image_vae}") from None
    try:
        model = inflate_from_image_vae(image_vae, fold_post_quant_conv=args.fold_post_quant_conv)
    except ValueError as error:
        raise UserInputError(f"{error}: {args.image_vae}") from None
    tmp = args.output.with_name(f".{args.output.name}.tmp")
    if tmp.exists():  # left by a killed run
        shutil.rmtree(tmp)
    try:
        model.save_pretrained(tmp)
        tmp.rename(args.output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(
        f"inflated {args.image_vae} into {args.output} "
        f"(post_quant_conv {'kept as a layer' if model.config.use_post_quant_conv else 'folded'})"
    )


def presets_folder() -> Path:
    """The training presets installed with the package (``cvvae/configs/*.yaml``)."""
    return Path(__file__).resolve().parents[1] / "configs"


def preset_names() -> list[str]:
    return sorted(p.stem for p in presets_folder().glob("*.yaml"))


def resolve_config(text: str) -> Path:
    """CONFIG as given: an existing file, a path (it has a folder or a .yaml/.yml ending; its
    absence is reported by the config loader), or else the name of an installed preset."""
    path = Path(text)
    if path.is_file() or len(path.parts) > 1 or path.suffix in (".yaml", ".yml"):
        return path
    preset = presets_folder() / f"{text}.yaml"
    if not preset.is_file():
        raise UserInputError(
            f"no config file and no preset named {text!r} (presets: {', '.join(preset_names())})"
        )
    return preset


def cmd_train(args: argparse.Namespace) -> None:
    """Train (or resume) a compatible video VAE from a YAML config with key=value overrides."""
    from cvvae.training import load_config, train
    from cvvae.training.trainer import NonFiniteLossError

    config = load_config(resolve_config(args.config), args.overrides)
    try:
        exported = train(config)
    except NonFiniteLossError as error:
        raise UserInputError(f"{error}: {args.config}") from None
    print(f"exported the EMA model to {exported}")


def register(sub) -> None:
    """Add inflate and train to the subcommand set ``sub``."""
    p = sub.add_parser(
        "inflate",
        formatter_class=Formatter,
        help="make a CV-VAE from an image VAE (diffusers AutoencoderKL folder)",
        description="Inflate a 2D image VAE into a 3D CV-VAE: each 3D kernel starts as the 2D kernel at the\n"
        "tap that sees the current frame; quant_conv is folded into the encoder. Image mode then\n"
        "reproduces the image VAE. post_quant_conv is folded only when exact (zero bias) unless\n"
        "--fold-post-quant-conv is given (released layout, approximate at the latent border).",
    )
    p.add_argument(
        "--image-vae", type=Path, required=True, metavar="DIR", help="AutoencoderKL folder"
    )
    p.add_argument("output", type=Path, metavar="OUT", help="new CV-VAE folder (must not exist)")
    p.add_argument(
        "--fold-post-quant-conv",
        action="store_true",
        default=None,
        help="always fold post_quant_conv into decoder.conv_in",
    )
    p.set_defaults(run=cmd_inflate)

    p = sub.add_parser(
        "train",
        formatter_class=Formatter,
        help="train a compatible video VAE (one process, or many under torchrun/accelerate)",
        description="Train from CONFIG (a YAML file, or the name of a preset installed with cvvae: tiny,\n"
        "sd21, sd3) with key=value overrides, e.g. 'cvvae train tiny max_steps=100' or\n"
        "'cvvae train my.yaml'. Resumes from the latest complete checkpoint in the output folder.\n"
        "See docs/training.md.",
    )
    p.add_argument(
        "config",
        metavar="CONFIG",
        help="YAML config file, or a preset name (tiny, sd21, sd3; files in cvvae/configs/)",
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.set_defaults(run=cmd_train)

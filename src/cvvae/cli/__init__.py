"""The ``cvvae`` command line: the only package that prints and touches user files.

Every problem the user can fix ends as one stderr line ``cvvae: error: <problem>: <file>`` and
exit code 2, with no traceback and no partial output file (see ``failures`` for the other codes
and ``docs/errors.md`` for what each bad input gets). Each module adds its subcommands through
``register(sub)``. The command modules import torch, diffusers and the models only inside the
commands, so ``cvvae --help`` does not load them.
"""

from __future__ import annotations

import logging
import sys

from cvvae.cli import codec, dataset, evaluate, train
from cvvae.cli.common import Formatter, Parser
from cvvae.cli.failures import INTERRUPTED, TERMINATED, Terminated, describe, sigterm_raises
from cvvae.errors import UserInputError

COMMAND_MODULES = (codec, train, dataset, evaluate)

MAIN_DESCRIPTION = """\
Encode and decode videos and images with a CV-VAE compatible video VAE (arXiv 2405.20279).

Videos (anything FFmpeg reads) and images (.png, .jpg, .jpeg, .bmp, .webp, .tif) are read into
RGB in [-1, 1]. Videos are written as H.264 (.mp4/.mov/.mkv) at the input's frame rate; images as
PNG or JPEG by extension. Any frame count and size work: the model pads internally and crops back.
Outputs appear only when complete. Errors print one line and exit with code 2.
"""

EXAMPLES = """\
examples:
  cvvae reconstruct clip.mp4 recon.mp4 --model vae3d --frames 33 --height 256 --width 256
  cvvae encode clip.mp4 clip.safetensors --model vae3d
  cvvae decode clip.safetensors decoded.mp4 --model vae3d
  cvvae info
"""


def build_parser() -> Parser:
    """The ``cvvae`` parser; each subcommand stores its function in ``args.run``."""
    parser = Parser(
        prog="cvvae", description=MAIN_DESCRIPTION, epilog=EXAMPLES, formatter_class=Formatter
    )
    sub = parser.add_subparsers(title="commands", dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def _show_cvvae_log() -> None:
    """Print the library's own log lines (e.g. the chunk sizes a memory budget picked)."""
    logger = logging.getLogger("cvvae")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("cvvae: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def _quiet_diffusers() -> None:
    """Silence diffusers' warnings (not for CLI users); imported only once a command runs."""
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 2 user error, 130 interrupted,
    143 terminated; a bug raises with its traceback)."""
    _show_cvvae_log()
    try:
        with sigterm_raises():
            args = build_parser().parse_args(argv)
            _quiet_diffusers()
            args.run(args)
    except UserInputError as error:
        return _error(str(error), 2)
    except KeyboardInterrupt:
        print("cvvae: interrupted", file=sys.stderr)
        return INTERRUPTED
    except Terminated:
        print("cvvae: terminated", file=sys.stderr)
        return TERMINATED
    except Exception as error:
        known = describe(error)
        if known is None:
            raise
        return _error(known[1], known[0])
    return 0


def _error(message: str, code: int) -> int:
    print(f"cvvae: error: {' '.join(message.splitlines())}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())

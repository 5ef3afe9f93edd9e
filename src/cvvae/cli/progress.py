"""Progress on the terminal: a line of stages, and inside encode and decode a bar of frames.

Bars show only when stderr is a terminal and are cleared when done. While they show, the
``cvvae`` logger's lines (e.g. the chunk sizes a memory budget picked) print above them instead
of into them (tqdm's logging redirect).

The frame bar follows the model from outside, with forward hooks on its layers (nothing in the
model knows about it): each call of the last layer of the encoder's or decoder's full-resolution
trunk (one time chunk, or one spatial tile of a chunk, under ``--memory-budget``) advances the
bar by the frames it produced, shared among the chunk's tiles, so the bar moves tile by tile
and shows frames per second. A full pass (no budget) is one call: the bar fills when the trunk
is done. With tiles run one at a time (very small budgets) the count is approximate and the
bar stops at its end while the rest runs.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

if TYPE_CHECKING:
    import torch

    from cvvae.models import CVVAE

STAGE_FORMAT = "{desc} [stage {n_fmt}/{total_fmt}, {elapsed}]"
# frames are counted in tile shares: show them rounded
FRAME_FORMAT = "{l_bar}{bar}| {n:.0f}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]"


def _bar(**options) -> tqdm:
    return tqdm(leave=False, disable=None, file=sys.stderr, dynamic_ncols=True, **options)


@contextmanager
def stages(total: int) -> Iterator[Callable]:
    """A status line over ``total`` stages, with log lines routed around it.

    Yields ``stage(name, frames=None)``: a context manager that names the current stage and
    counts it done on success. With ``frames`` (a :func:`frame_counter`) a frame bar runs under
    the line meanwhile.
    """
    with (
        logging_redirect_tqdm([logging.getLogger("cvvae")]),
        _bar(total=total, bar_format=STAGE_FORMAT) as line,
    ):

        @contextmanager
        def stage(name: str, frames: Callable | None = None) -> Iterator[None]:
            line.set_description_str(name)
            if frames is None:
                yield
            else:
                with frames(name):
                    yield
            line.update()

        yield stage


def _trunk_layers(model: CVVAE, direction: str) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """``(last, first)`` layers of a trunk: ``last`` produces its output (the decoder's output
    convolution; the encoder's last level's last layer), ``first`` runs once per call on whole
    frames before any tile (the decoder's coarsest block; for the encoder, ``last`` itself).
    None if the model is laid out otherwise."""
    try:
        if direction == "encode":
            level = model.encoder.down[-1]
            last = level.downsample if hasattr(level, "downsample") else level.block[-1]
            return last, last
        return model.decoder.conv_out, model.decoder.up[-1].block[0]
    except (AttributeError, IndexError, TypeError):
        return None


def frame_counter(model: CVVAE, direction: str, frames: int) -> Callable:
    """A factory for :func:`stages`: ``counter(label)`` is a context manager showing a bar of
    the ``frames`` clip frames that ``direction`` (``"encode"``/``"decode"``) goes through.

    Each call of the trunk's last layer adds the frames it produced (encode: latent frames,
    latent 0 being clip frame 0 and each further one 4 frames), divided by the number of its
    calls per call of the trunk (its tiles), learnt from the first call."""
    layers = _trunk_layers(model, direction)
    per_latent = model.temporal_compression_ratio if direction == "encode" else 1

    @contextmanager
    def counter(label: str) -> Iterator[None]:
        if layers is None:
            yield
            return
        last, first = layers
        produced, latents, calls, tiles, this_call = 0.0, 0.0, 0, None, 0.0
        with _bar(
            total=frames, unit="frame", desc=label, position=1, bar_format=FRAME_FORMAT
        ) as bar:

            def on_first(*_) -> None:
                nonlocal produced, calls, tiles, this_call
                if calls and tiles is None:
                    tiles = calls  # last-layer calls in the trunk call that just ended
                    produced -= this_call * (1 - 1 / tiles)  # that call counted each tile whole
                calls, this_call = 0, 0.0

            def on_last(_module, _inputs, output) -> None:
                nonlocal produced, latents, calls, this_call
                if not hasattr(output, "ndim") or output.ndim != 5:
                    return
                calls += 1
                share = 1.0 if tiles is None else 1.0 / tiles
                if direction == "encode":
                    before = latents
                    latents += output.shape[2] * share
                    # latent 0 is clip frame 0; every further latent frame stands for 4 frames
                    produced += min(latents, 1) - min(before, 1)
                    produced += per_latent * (max(latents - 1, 0) - max(before - 1, 0))
                else:
                    produced += output.shape[2] * share
                    this_call += output.shape[2] * share
                bar.update(min(produced, frames) - bar.n)

            handles = [last.register_forward_hook(on_last)]
            if first is not last:
                handles.append(first.register_forward_pre_hook(on_first))
            try:
                yield
            finally:
                for handle in handles:
                    handle.remove()

    return counter

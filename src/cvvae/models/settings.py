"""Runtime settings of the CV-VAE that bound memory: tiling and a memory budget (never saved).

:class:`TilingSettings` is mixed into :class:`~cvvae.models.autoencoder.CVVAE`: it holds
diffusers' tiling attributes (``use_tiling``, ``tile_sample_min_height`` / ``_width`` /
``_num_frames``) and turns them, an expert :class:`~cvvae.inference.plan.InferencePlan` or a
memory budget into the plan of one call.
"""

from __future__ import annotations

import logging
import math

from ..inference.costs import plan_costs
from ..inference.plan import InferencePlan, describe_plan, plan_for_budget, plan_for_tiles

logger = logging.getLogger("cvvae")


class TilingSettings:
    """``enable_tiling`` / ``set_memory_budget`` / ``disable_tiling`` and the plan per call; the
    class it is mixed into has ``encoder`` and ``decoder``."""

    use_tiling = False
    tile_sample_min_height = 256
    tile_sample_min_width = 256
    tile_sample_min_num_frames = 16
    _inference_plan: InferencePlan | None = None
    _memory_budget: float | None = None

    def enable_tiling(
        self,
        tile_sample_min_height: int | None = None,
        tile_sample_min_width: int | None = None,
        tile_sample_min_num_frames: int | None = None,
        plan: InferencePlan | None = None,
    ) -> None:
        """Bound memory in time and space (never saved): the full-resolution levels run a few
        frames at a time and, when the frame is larger than a tile, tile by tile with halos;
        images too. With no arguments, tiles of 256 x 256 video pixels and 16-frame encoder
        chunks (the decoder: one latent frame per call), which keeps 720p within a quarter of
        the full pass's memory (docs/memory.md).

        ``tile_sample_min_height`` / ``_width``: the largest tile, in video pixels (tiles are
        near-equal and cover the frame; neighbours' halos are added, not overlapped);
        ``tile_sample_min_num_frames``: video frames per encoder call (a multiple of 4; the
        decoder takes one latent frame per 16 of them). ``plan``: an expert
        :class:`~cvvae.inference.plan.InferencePlan` instead (statistics modes, tile levels
        and order). To pick the sizes from a memory budget, use :meth:`set_memory_budget`.
        """
        sizes = (tile_sample_min_height, tile_sample_min_width, tile_sample_min_num_frames)
        if plan is not None and any(size is not None for size in sizes):
            raise ValueError("enable_tiling takes tile sizes or a plan, not both")
        if plan is not None and not isinstance(plan, InferencePlan):
            raise ValueError(f"plan must be an InferencePlan, got {type(plan).__name__}")
        current = (self.tile_sample_min_height, self.tile_sample_min_width)
        height, width, frames = (
            old if new is None else new
            for new, old in zip(sizes, (*current, self.tile_sample_min_num_frames), strict=True)
        )
        plan_for_tiles(height, width, frames)  # checks the sizes before anything changes
        self.tile_sample_min_height, self.tile_sample_min_width = height, width
        self.tile_sample_min_num_frames = frames
        self.use_tiling = True
        self._inference_plan = plan
        self._memory_budget = None

    def set_memory_budget(self, gib: float) -> None:
        """Pick chunks and tiles per call so the estimated peak stays under ``gib`` GiB (logged)."""
        if isinstance(gib, bool) or not isinstance(gib, (int, float)) or not 0 < gib < math.inf:
            raise ValueError(f"memory budget must be a positive number of GiB, got {gib!r}")
        self._memory_budget = float(gib)
        self.use_tiling = True
        self._inference_plan = None

    def disable_tiling(self) -> None:
        """Back to one full pass over the clip (exact, memory grows with the clip)."""
        self.use_tiling = False
        self._inference_plan = None
        self._memory_budget = None

    def _plan(self, direction: str, frames: int, height: int, width: int) -> InferencePlan | None:
        """The plan for one call (``direction``: ``"encode"``/``"decode"``) on a video of
        ``frames x height x width``; ``None``: the full pass. A budget's plan is logged."""
        if not self.use_tiling:
            return None
        if self._memory_budget is None:
            return self._inference_plan or plan_for_tiles(
                self.tile_sample_min_height,
                self.tile_sample_min_width,
                self.tile_sample_min_num_frames,
            )
        network = self.encoder if direction == "encode" else self.decoder
        plan = plan_for_budget(
            self._memory_budget * 2**30, (frames, height, width), plan_costs(network, direction)
        )
        logger.info(
            "memory budget %.2f GiB, %d frames %dx%d -> %s",
            self._memory_budget,
            frames,
            width,
            height,
            describe_plan(plan, direction),
        )
        return plan

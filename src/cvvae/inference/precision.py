"""Find the first layer that produces non-finite values (fp16 overflow, bad weights)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class NonFiniteError(FloatingPointError):
    """Raised when a model output holds NaN or Inf; the message names the first layer."""


def first_nonfinite_module(root: nn.Module, run: Callable[[], object]) -> str | None:
    """Re-run ``run()`` with hooks on every submodule of ``root``; the qualified name of the
    first module (in execution order) whose tensor output is not finite, or None."""
    found: list[str] = []
    names = {module: name for name, module in root.named_modules()}

    def hook(module: nn.Module, _inputs, output) -> None:
        if not found and isinstance(output, torch.Tensor) and output.numel():
            if not torch.isfinite(output).all():
                found.append(names[module] or type(module).__name__)

    handles = [m.register_forward_hook(hook) for m in names]
    try:
        with torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()
    return found[0] if found else None


def check_finite(
    output: torch.Tensor, root: nn.Module, run: Callable[[], object], what: str
) -> None:
    """Raise :class:`NonFiniteError` naming the first culprit layer if ``output`` is not finite
    (``meta`` tensors hold no values and pass)."""
    if output.device.type == "meta" or torch.isfinite(output).all():
        return
    culprit = first_nonfinite_module(root, run)
    where = f"first produced by layer '{culprit}'" if culprit else "no single layer found"
    hint = (
        "run in bfloat16 or float32"
        if output.dtype == torch.float16
        else "check the weights and input"
    )
    raise NonFiniteError(f"{what} produced non-finite values in {output.dtype} ({where}); {hint}")

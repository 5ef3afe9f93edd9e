"""Checks at the model's door: each raises ``ValueError`` naming what was expected and given,
instead of a torch error deep inside the network."""

from __future__ import annotations

import operator

import torch


def _check_tensor(x: torch.Tensor, what: str, layout: str, channels: int, dtype) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{what} must be a tensor {layout}, got {type(x).__name__}")
    if x.dim() not in (4, 5):
        raise ValueError(f"expected {what} {layout}, got shape {tuple(x.shape)}")
    if x.shape[1] != channels:
        raise ValueError(
            f"expected {what} with {channels} channels {layout}, got shape {tuple(x.shape)}"
        )
    if x.dtype != dtype:
        raise ValueError(f"{what} are {x.dtype} but the model is {dtype}; cast one to the other")
    if 0 in x.shape:
        raise ValueError(f"{what} are empty: shape {tuple(x.shape)}")


def check_encode_input(x: torch.Tensor, channels: int, dtype: torch.dtype) -> None:
    """A video ``(B, channels, T, H, W)`` or image ``(B, channels, H, W)`` of the model's dtype."""
    _check_tensor(
        x, "inputs", f"(B, {channels}, T, H, W) or (B, {channels}, H, W)", channels, dtype
    )


def check_decode_input(z: torch.Tensor, channels: int, dtype: torch.dtype) -> None:
    """Latents ``(B, channels, t, h, w)`` or ``(B, channels, h, w)`` of the model's dtype."""
    _check_tensor(
        z, "latents", f"(B, {channels}, t, h, w) or (B, {channels}, h, w)", channels, dtype
    )


def check_size(name: str, value, limit: int) -> int | None:
    """``value`` (``None``: no crop) as a crop size of at least 1 and at most ``limit``, the
    decoded size along that axis; a bool (``decode(z, False)``) is refused."""
    if value is None:
        return None
    try:
        if isinstance(value, bool):
            raise TypeError
        value = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an int or None, got {value!r}") from None
    if not 1 <= value <= limit:
        raise ValueError(f"{name} must be between 1 and {limit} for these latents, got {value}")
    return value

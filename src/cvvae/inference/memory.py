"""A deterministic meter of peak tensor memory, for CPU and GPU alike.

``PeakMemory`` counts the bytes of every tensor storage created by an op while it is active and
releases them when the last tensor using the storage is garbage-collected, so its peak is the
most activation memory alive at once (inputs and weights made before it started are not
counted, nor are views of them). Unlike process RSS it does not depend on the allocator or on other processes.

It also works on the ``meta`` device, where nothing is computed or allocated: a model and input
made on ``meta`` give the peak of any size in seconds (``benchmarks/bench_inference.py
--device meta``); under :class:`FusedAttentionOnMeta` attention counts as the fused kernels
allocate it.
"""

from __future__ import annotations

import weakref
from collections import Counter

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class PeakMemory(TorchDispatchMode):
    """Context manager; ``peak_bytes`` after exit is the highest live total seen."""

    def __init__(self):
        super().__init__()
        self.live_bytes = 0
        self.peak_bytes = 0
        self._refs: Counter[int] = Counter()
        self._sizes: dict[int, int] = {}

    def _release(self, key: int) -> None:
        self._refs[key] -= 1
        if self._refs[key] == 0:
            del self._refs[key]
            self.live_bytes -= self._sizes.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        for t in tree_leaves((args, kwargs)):  # storages made before the meter: not counted
            if isinstance(t, torch.Tensor):
                self._sizes.setdefault(_storage_key(t), 0)
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                key = _storage_key(t)
                if key not in self._sizes:
                    self._sizes[key] = t.untyped_storage().nbytes()
                    self.live_bytes += self._sizes[key]
                    self.peak_bytes = max(self.peak_bytes, self.live_bytes)
                self._refs[key] += 1
                weakref.finalize(t, self._release, key)
        return out


def _storage_key(t: torch.Tensor) -> int:
    """The identity of ``t``'s storage (shared by its views; meta tensors have one too)."""
    return t.untyped_storage()._cdata


class FusedAttentionOnMeta(TorchFunctionMode):
    """Context manager: ``scaled_dot_product_attention`` on ``meta`` runs the fused (flash)
    kernel's meta function, not the math path, which materialises the ``L x L`` scores that
    fused GPU and CPU kernels never allocate (so the meter counts what real runs allocate)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention and len(args) == 3 and not kwargs:
            q, k, v = args
            if q.device.type == "meta":
                return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v)[0]
        return func(*args, **kwargs)

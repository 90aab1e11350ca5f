"""What every Triton launcher here shares: the optional import, lazy jitting, and the checks before a launch.

Triton is optional: without it the package still imports and the dispatchers run the torch references.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # the references need no triton; only the launchers do
    triton = None
    tl = None

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
INDEX_DTYPES = (torch.int32, torch.int64)


def is_interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1), read now, not at import."""
    knobs = getattr(triton, "knobs", None)  # triton >= 3.4 reads its environment through `knobs`
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


class LazyKernel:
    """A Triton kernel jitted at its first launch rather than at import.

    `triton.jit` decides between compiling and interpreting when it decorates, so deferring it means TRITON_INTERPRET
    is honoured even when something imported this package before the variable was set (a test suite, say).
    One jitted function is kept per mode. (Triton's own library functions, `tl.max` and the like, are decorated
    when triton is imported; tests/kernels/conftest.py makes them interpretable when that happened first.)
    """

    def __init__(self, fn: Callable):
        self.fn = fn
        self._jitted: dict[bool, Any] = {}  # triton.JITFunction (triton ships no types)

    def __getitem__(self, grid):
        interpreting = is_interpreting()
        if interpreting not in self._jitted:
            self._jitted[interpreting] = triton.jit(self.fn)
        return self._jitted[interpreting][grid]


def use_triton(tensor: torch.Tensor, use_reference: bool) -> bool:
    """Whether a dispatcher should launch Triton: CUDA tensors, not forced to the reference, and triton installed."""
    if use_reference or not tensor.is_cuda:
        return False
    if triton is None:
        warnings.warn(
            "triton is not installed: promptswap kernels fall back to their torch references on CUDA",
            RuntimeWarning,
            stacklevel=3,
        )
        return False
    return True


def check_launchable(name: str, **tensors: torch.Tensor) -> None:
    """Raise ValueError unless a Triton launch over these tensors can run: triton present, one device, and CPU
    tensors only under the interpreter."""
    if triton is None:
        raise ValueError(f"{name}: triton is not installed; use the torch reference instead")
    devices = {t.device for t in tensors.values()}
    if len(devices) != 1:
        listing = ", ".join(f"{key} on {t.device}" for key, t in tensors.items())
        raise ValueError(f"{name}: tensors must share one device, got {listing}")
    device = devices.pop()
    if device.type == "cpu" and not is_interpreting():
        raise ValueError(f"{name}: CPU tensors run only under TRITON_INTERPRET=1; use the torch reference instead")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"{name}: unsupported device {device}")


def check_dtype(name: str, arg: str, tensor: torch.Tensor, allowed: tuple[torch.dtype, ...]) -> None:
    if tensor.dtype not in allowed:
        names = "/".join(str(d).removeprefix("torch.") for d in allowed)
        raise ValueError(f"{name}: {arg} must be {names}, got {tensor.dtype}")


def check_ndim(name: str, arg: str, tensor: torch.Tensor, ndim: int, layout: str) -> None:
    if tensor.dim() != ndim:
        raise ValueError(f"{name}: {arg} must be {layout}, got shape {tuple(tensor.shape)}")


def next_power_of_2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def dot_precision(dtype: torch.dtype) -> str:
    """`tl.dot` precision for tiles upcast to float32 from `dtype`: TF32 is exact on fp16/bf16 inputs (at most 10
    mantissa bits) and runs on tensor cores; true fp32 inputs keep full IEEE precision."""
    return "ieee" if dtype == torch.float32 else "tf32"

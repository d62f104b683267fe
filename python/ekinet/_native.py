"""The compiled core: one context per device and thread (a context owns handles and workspace)."""

import functools
import threading

import numpy as np

from . import _core
from ._arrays import is_cupy

_local = threading.local()


@functools.cache
def cuda_built():
    return bool(_core.build_info()["cuda"])


def context_for(xp):
    """The calling thread's context for NumPy (CPU) or CuPy (current device and stream) arrays."""
    contexts = _local.__dict__.setdefault("contexts", {})
    if xp is np:
        if "cpu" not in contexts:
            contexts["cpu"] = _core.make_cpu_context()
        return contexts["cpu"]
    device = xp.cuda.Device().id
    key = f"cuda:{device}"
    if key not in contexts:
        contexts[key] = _core.make_cuda_context(device)
    context = contexts[key]
    context.set_stream(xp.cuda.get_current_stream().ptr)
    return context


def view(a):
    """A _core.View of a 2-D (or 1-D, as one row) NumPy or CuPy array with unit stride along its last axis,
    read in C++; the view keeps the array alive, so a temporary passed straight into a native call is not freed
    before the call reads it."""
    return _core.device_view(a) if is_cupy(a) else _core.host_view(a)


def rows_contiguous(xp, a):
    """a itself when each row is contiguous and rows do not overlap, else a contiguous copy (a broadcast row,
    stride 0, or a sliding window's overlapping rows are copies the native core can read)."""
    if a.ndim == 2 and a.shape[1] > 1 and a.strides[1] != a.dtype.itemsize:
        return xp.ascontiguousarray(a)
    if a.ndim == 2 and a.shape[0] > 1 and a.strides[0] < a.shape[1] * a.dtype.itemsize:
        return xp.ascontiguousarray(a)
    return a

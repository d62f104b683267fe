"""Arrays in and out: NumPy and CuPy natively, anything with __dlpack__ (PyTorch, JAX) through DLPack."""

import numpy as np

FLOAT_DTYPES = ("float32", "float64")
_DLPACK_CPU = 1
_DLPACK_CUDA = 2


def is_cupy(a):
    return type(a).__module__.startswith("cupy")


def device_namespace(device):
    """NumPy for device="cpu", CuPy for "cuda" (ImportError saying how to install it when it is missing)."""
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device = {device!r} must be 'cpu' or 'cuda'")
    if device == "cpu":
        return np
    try:
        import cupy
    except ImportError as error:
        raise ImportError("device='cuda' needs CuPy: pip install 'ekinet[cuda]'") from error
    return cupy


def to_host(a):
    """A NumPy array of a (CuPy arrays are copied from the device)."""
    return a.get() if hasattr(a, "get") else np.asarray(a)


def namespace_of(a):
    if is_cupy(a):
        import cupy

        return cupy
    return np


def to_array(x, name):
    """NumPy or CuPy array from x (array, DLPack producer, list, scalar); DLPack data is not copied."""
    if isinstance(x, np.ndarray) or is_cupy(x):
        return x
    if hasattr(x, "__dlpack__") and hasattr(x, "__dlpack_device__"):
        if hasattr(x, "resolve_neg"):  # a PyTorch lazy negation or conjugation would export its unresolved data
            x = x.resolve_conj().resolve_neg()
        device_type = int(x.__dlpack_device__()[0])
        if device_type not in (_DLPACK_CPU, _DLPACK_CUDA):
            raise ValueError(f"{name} lives on DLPack device type {device_type}; ekinet takes CPU or CUDA arrays")
        try:
            if device_type == _DLPACK_CPU:
                return np.from_dlpack(x)
            import cupy

            return cupy.from_dlpack(x)
        except (BufferError, RuntimeError, TypeError) as error:
            raise TypeError(f"{name} could not be read through DLPack: {error}") from error
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must be an array (NumPy, CuPy or DLPack), got {type(x).__name__}") from error


def like_input(result, original):
    """Return result in the framework of the caller's original array (PyTorch and JAX via DLPack)."""
    module = type(original).__module__
    if module.startswith("torch"):
        import torch

        return torch.from_dlpack(result)
    if module.startswith("jax") or module.startswith("jaxlib"):
        import jax.numpy as jnp

        return jnp.from_dlpack(result)
    return result


def floating(a, name):
    """The array if its dtype is float32/float64, else TypeError naming the argument."""
    if a.dtype.char not in "fd":  # float32, float64 (a test of dtype.char is much faster than of dtype.name)
        raise TypeError(f"{name} has dtype {a.dtype.name}; ekinet computes in float32 or float64 "
                        f"(convert with {name}.astype('float32'))")
    return a


def same_dtype(a, name, dtype):
    floating(a, name)
    if a.dtype != dtype:
        raise TypeError(f"{name} has dtype {a.dtype.name} but U is {dtype.name}; pass every ensemble-sized "
                        f"array in one dtype (e.g. {name}.astype(U.dtype))")
    return a


def same_namespace(a, name, xp):
    if namespace_of(a) is not xp:
        where = "a CuPy (GPU)" if xp is not np else "a NumPy (CPU)"
        raise ValueError(f"{name} is not {where} array like U; pass all arrays on one device")
    return a

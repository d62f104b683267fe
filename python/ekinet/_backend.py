"""backend= for every operation: "auto", "native" or "reference"."""

import numpy as np

from ._core import BackendUnavailable
from ._native import cuda_built

BACKENDS = ("auto", "native", "reference")


def resolve(backend, xp):
    """"native" or "reference" for arrays of namespace xp."""
    if backend not in BACKENDS:
        raise ValueError(f"backend = {backend!r} is not one of {', '.join(map(repr, BACKENDS))}")
    if backend == "reference":
        return "reference"
    if xp is np or cuda_built():
        return "native"
    if backend == "native":
        raise BackendUnavailable(
            "ekinet was built without CUDA, so CuPy arrays cannot use the native backend: reinstall on a machine "
            "with the CUDA toolkit (pip install . finds nvcc, cuBLAS and cuSOLVER), or pass backend='reference'"
        )
    return "reference"

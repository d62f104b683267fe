"""The counter-based normal generator of cpp/include/ekinet/random.hpp, vectorised.

Draw i of (seed, stream) is splitmix64(key + i * golden) turned into a normal by Box-Muller, so NumPy, CuPy,
the C++ CPU code and the CUDA kernels give the same numbers.
"""

import numpy as np

STREAM_PERTURBATION = 1
STREAM_REDRAW = 2
STREAM_RANDOMIZATION = 3

_GOLDEN = 0x9E3779B97F4A7C15
_STREAM_MULTIPLIER = 0xD1B54A32D192ED03
_MASK = (1 << 64) - 1


def _splitmix64(xp, x):
    x = x + xp.uint64(_GOLDEN)
    x = (x ^ (x >> xp.uint64(30))) * xp.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> xp.uint64(27))) * xp.uint64(0x94D049BB133111EB)
    return x ^ (x >> xp.uint64(31))


def _splitmix64_int(x):
    x = (x + _GOLDEN) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def stream_key(seed, stream):
    return _splitmix64_int((int(seed) & _MASK) ^ ((stream * _STREAM_MULTIPLIER) & _MASK))


def standard_normal(xp, seed, stream, indices):
    """Normals number `indices` (an integer array) of the given seed and stream, as float64."""
    with np.errstate(over="ignore"):
        index = xp.asarray(indices, dtype=xp.uint64)
        bits = _splitmix64(xp, xp.uint64(stream_key(seed, stream)) + index * xp.uint64(_GOLDEN))
    u1 = ((bits >> xp.uint64(32)).astype(xp.float64) + 1.0) * 2.0**-32
    u2 = (bits & xp.uint64(0xFFFFFFFF)).astype(xp.float64) * 2.0**-32
    return xp.sqrt(-2.0 * xp.log(u1)) * xp.cos(2.0 * np.pi * u2)


def normal_matrix(xp, seed, stream, rows, cols):
    """rows x cols normals; entry (r, c) is draw r * cols + c."""
    index = xp.arange(rows * cols, dtype=xp.uint64).reshape(rows, cols)
    return standard_normal(xp, seed, stream, index)

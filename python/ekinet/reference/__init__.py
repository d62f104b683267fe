"""Readable NumPy/CuPy reference implementation of every algorithm of ekinet (eki-math.md).

Array-namespace style: each function takes its array module from its inputs, so the same code runs on NumPy
and on CuPy. It is the oracle the native core is tested against and the CuPy fallback when the CUDA
extension is not built. It follows the formulas literally; speed is the native core's job.
"""

from .forward import forward
from .kalman import kalman_update
from .loss_scheme import loss_update, nesterov_extrapolate
from .losses import loss_and_gradient
from .randomization import randomize, randomize_around
from .rng import standard_normal
from .statistics import ensemble_anomalies, ensemble_mean, ensemble_spread

__all__ = [
    "ensemble_anomalies",
    "ensemble_mean",
    "ensemble_spread",
    "forward",
    "kalman_update",
    "loss_and_gradient",
    "loss_update",
    "nesterov_extrapolate",
    "randomize",
    "randomize_around",
    "standard_normal",
]

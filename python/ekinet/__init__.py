"""ekinet: training neural networks without back-propagation, by Ensemble Kalman Inversion.

The heavy work runs in a C++ core (BLAS/LAPACK on the CPU, cuBLAS/cuSOLVER on NVIDIA GPUs); a readable
NumPy/CuPy reference implementation of every algorithm lives in ekinet.reference.
"""


def _load_blas():
    # The core links the BLAS of the scipy-openblas32 wheel; load it by absolute path so the extension finds
    # it wherever pip put the two packages.
    import ctypes
    import os

    # This OpenBLAS is ekinet's own copy (NumPy loads another). Its idle threads spin for 2^28 cycles
    # (about 0.1 s) after each threaded call by default, stealing the cores the forward pass's element-wise
    # passes and member-split small GEMMs need; 2^16 cycles is measured best. An explicit setting wins. It is
    # read when the library loads, which importing scipy_openblas32 already does.
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "16")
    import scipy_openblas32

    ctypes.CDLL(os.path.join(scipy_openblas32.get_lib_dir(), "libscipy_openblas.so"), mode=ctypes.RTLD_GLOBAL)


_load_blas()

from . import datasets, experiments, losses, nn, online, reference, train  # noqa: E402
from ._core import BackendUnavailable, NumericalError  # noqa: E402
from ._inputs import NumericalWarning  # noqa: E402
from .eki import EKI, MinimizeResult, Randomization, minimize  # noqa: E402
from .ensemble import ensemble_mean, ensemble_spread, randomize, randomize_around  # noqa: E402
from .schedulers import AdaptiveStep, ConstantStep, DataMisfitController  # noqa: E402
from .train import RandomizationSchedule, Trainer  # noqa: E402
from .updates import kalman_update, loss_update, nesterov_extrapolate  # noqa: E402

__version__ = "0.1.0"


def build_info():
    """What the native core was compiled with: version, CUDA (and toolkit, architectures), BLAS, compiler, and
    the CUDA devices visible now."""
    from . import _core

    info = dict(_core.build_info())
    info["cuda_devices"] = _core.cuda_device_count()
    return info


__all__ = [
    "AdaptiveStep",
    "BackendUnavailable",
    "ConstantStep",
    "DataMisfitController",
    "datasets",
    "experiments",
    "EKI",
    "MinimizeResult",
    "NumericalError",
    "NumericalWarning",
    "Randomization",
    "RandomizationSchedule",
    "Trainer",
    "build_info",
    "ensemble_mean",
    "ensemble_spread",
    "kalman_update",
    "loss_update",
    "losses",
    "minimize",
    "nesterov_extrapolate",
    "nn",
    "online",
    "randomize",
    "randomize_around",
    "reference",
]

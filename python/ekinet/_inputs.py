"""Turning the caller's arguments into checked arrays, shared by every public operation."""

import numbers
import warnings

import numpy as np

from ._arrays import floating, namespace_of, same_dtype, same_namespace, to_array
from ._native import rows_contiguous


class NumericalWarning(RuntimeWarning):
    """A factorisation needed a jitter or the eigen-decomposition fallback (the result is still valid)."""


def ensemble(U, name="U"):
    """(xp, U) for a J x P ensemble."""
    U = floating(to_array(U, name), name)
    xp = namespace_of(U)
    if U.ndim != 2:
        raise ValueError(f"{name} has shape {tuple(U.shape)}; expected (J, P): one row of parameters per member")
    if U.shape[0] < 2:
        raise ValueError(f"{name} has {U.shape[0]} member(s) (rows); an ensemble needs at least 2")
    if U.shape[1] < 1:
        raise ValueError(f"{name} has no columns; each member needs at least one parameter")
    return xp, rows_contiguous(xp, U)


def member_matrix(a, name, xp, U, cols=None, meaning="one row per member of U"):
    """A J x cols array of U's dtype on U's device."""
    a = same_dtype(same_namespace(to_array(a, name), name, xp), name, U.dtype)
    expected_cols = a.shape[-1] if cols is None and a.ndim == 2 else cols
    if a.ndim != 2 or a.shape[0] != U.shape[0] or a.shape[1] != expected_cols:
        expected = f"({U.shape[0]}, {'M' if expected_cols is None else expected_cols})"
        raise ValueError(f"{name} has shape {tuple(a.shape)} but {expected} was expected ({meaning})")
    if a.shape[1] < 1:
        raise ValueError(f"{name} has no columns ({meaning}); pass at least one")
    return rows_contiguous(xp, a)


def data_vector(y, name, xp, dtype, size):
    """A length-`size` vector cast to dtype (data and variances are small: casting is harmless)."""
    y = to_array(y, name)
    if namespace_of(y) is not xp:
        y = xp.asarray(y.get() if hasattr(y, "get") else y)
    if y.ndim != 1 or y.shape[0] != size:
        raise ValueError(f"{name} has shape {tuple(y.shape)} but ({size},) was expected (one value per column of G)")
    if y.dtype.kind not in "fiu":
        raise TypeError(f"{name} has dtype {y.dtype.name}; pass real numbers")
    return xp.ascontiguousarray(y.astype(dtype, copy=False))


def noise_covariance(noise_cov, xp, dtype, M):
    """("scalar", value, None), ("diagonal", 0, variances) or ("full", 0, matrix) from a scalar, M or M x M."""
    if isinstance(noise_cov, numbers.Real) and not isinstance(noise_cov, bool):
        return "scalar", float(noise_cov), None
    array = to_array(noise_cov, "noise_cov")
    if array.dtype.kind not in "fiu":
        raise TypeError(f"noise_cov = {noise_cov!r:.80} has dtype {array.dtype.name}; pass a real variance, "
                        "variances or a covariance matrix")
    if array.ndim == 0:
        return "scalar", float(array), None
    if namespace_of(array) is not xp:
        array = xp.asarray(array.get() if hasattr(array, "get") else array)
    array = xp.ascontiguousarray(array.astype(dtype, copy=False))
    if array.ndim == 1:
        if array.shape[0] != M:
            raise ValueError(f"noise_cov has shape {tuple(array.shape)} but ({M},) variances were expected")
        return "diagonal", 0.0, array
    if array.ndim == 2 and array.shape == (M, M):
        require_symmetric(xp, array, "noise_cov")
        return "full", 0.0, array
    raise ValueError(f"noise_cov has shape {tuple(array.shape)}; pass a scalar variance, ({M},) variances or an "
                     f"({M}, {M}) covariance matrix")


def noise_value(kind, scalar, matrix):
    """The reference implementation's form of Gamma."""
    return scalar if kind == "scalar" else matrix


def require_symmetric(xp, a, name):
    """A covariance must be symmetric: the native solve reads one triangle and the reference both, so an
    asymmetric matrix would give backend-dependent results. Rounding is tolerated: the native core's test, a
    pair may differ by sqrt(eps) sqrt(|A_ii A_jj|), the bound an SPD matrix puts on |A_ij|."""
    root = xp.sqrt(xp.abs(xp.diagonal(a)))
    pairs = int(xp.count_nonzero(~(xp.abs(a - a.T) <= np.sqrt(np.finfo(a.dtype).eps) * xp.outer(root, root)))) // 2
    if pairs:
        raise ValueError(f"{name} is not symmetric: {pairs} pairs (i, j) differ by more than sqrt(eps) "
                         "sqrt(A_ii A_jj); a covariance matrix must be symmetric: pass (A + A.T) / 2 if the "
                         "asymmetry is rounding")


def require_finite(xp, a, name):
    bad = int(xp.count_nonzero(~xp.isfinite(a)))
    if bad:
        raise ValueError(f"{name} contains {bad} NaN/Inf value{'s' if bad > 1 else ''}; pass finite values")


def seed_from(rng):
    """A seed in [0, 2^64) from an int or a numpy Generator (which it advances); None stays None (the callers
    say what it means: no perturbation, or fresh entropy)."""
    if rng is None:
        return None
    if isinstance(rng, np.random.Generator):
        return int(rng.integers(0, 2**63 - 1))
    if isinstance(rng, numbers.Integral) and not isinstance(rng, bool):
        if not 0 <= rng < 2**64:
            raise ValueError(f"rng = {rng} must be a seed in [0, 2**64)")
        return int(rng)
    raise TypeError(f"rng must be None, an int seed or a numpy.random.Generator, got {type(rng).__name__}")


def choice(value, name, allowed):
    if value not in allowed:
        raise ValueError(f"{name} = {value!r} is not one of {', '.join(map(repr, allowed))}")
    return value


def warn_rescues(report, operation):
    if report["cholesky_jitter_retries"] or report["eigen_fallbacks"]:
        warnings.warn(
            f"{operation}: the gain system was ill-conditioned (jittered Cholesky: "
            f"{report['cholesky_jitter_retries']}, eigen fallback: {report['eigen_fallbacks']}); the ensemble may "
            "have collapsed or the noise covariance may be too small",
            NumericalWarning,
            stacklevel=3,
        )

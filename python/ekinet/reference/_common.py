"""Pieces shared by the reference updates: the array namespace, the noise model, the robust SPD solve, and
the treatment of failed members."""

import numpy as np

from .rng import STREAM_REDRAW, standard_normal


def namespace(*arrays):
    """numpy or cupy, from the arrays' types."""
    for a in arrays:
        module = type(a).__module__
        if module.startswith("cupy"):
            import cupy

            return cupy
    return np


class Noise:
    """Gamma as a scalar variance, a vector of variances, or a full SPD matrix."""

    def __init__(self, xp, noise_cov, M, dtype):
        self.xp = xp
        noise_cov = noise_cov if xp.isscalar(noise_cov) else xp.asarray(noise_cov, dtype=dtype)
        if xp.isscalar(noise_cov) or noise_cov.ndim == 0:
            self.kind = "scalar"
            self.value = float(noise_cov)
            if not (self.value > 0 and np.isfinite(self.value)):
                raise ValueError(f"noise_cov = {self.value} is not a positive finite variance")
        elif noise_cov.ndim == 1:
            self.kind = "diagonal"
            self.value = noise_cov
            if noise_cov.shape != (M,):
                raise ValueError(f"noise_cov has shape {noise_cov.shape} but ({M},) variances were expected")
            if not bool(xp.all(noise_cov > 0)) or not bool(xp.all(xp.isfinite(noise_cov))):
                raise ValueError("noise_cov (diagonal) has entries that are not positive finite variances")
        else:
            self.kind = "full"
            self.value = noise_cov
            if noise_cov.shape != (M, M):
                raise ValueError(f"noise_cov has shape {noise_cov.shape} but ({M}, {M}) was expected")
            if not bool(xp.all(xp.isfinite(noise_cov))):
                raise ValueError("noise_cov contains NaN/Inf values")
            lower = xp.tril(noise_cov) + xp.tril(noise_cov, -1).T  # LAPACK reads the lower triangle
            self.cholesky = _cholesky_or_none(xp, lower)
            if self.cholesky is None:
                raise ValueError("noise_cov is not symmetric positive definite (Cholesky failed)")
            self.value = lower

    def inverse_apply(self, r):
        """Gamma^{-1} applied to each row of r."""
        if self.kind in ("scalar", "diagonal"):
            return r / self.value
        return self.xp.linalg.solve(self.value, r.T).T

    def add_to(self, c, scale):
        """c + scale * Gamma for an M x M matrix c."""
        if self.kind == "scalar":
            return c + scale * self.value * self.xp.eye(c.shape[0], dtype=c.dtype)
        if self.kind == "diagonal":
            return c + scale * self.xp.diag(self.value)
        return c + scale * self.value

    def colour(self, z):
        """Rows z_j ~ N(0, I) turned into rows ~ N(0, Gamma)."""
        if self.kind == "scalar":
            return np.sqrt(self.value) * z
        if self.kind == "diagonal":
            return z * self.xp.sqrt(self.value)
        return z @ self.cholesky.T


def _cholesky_or_none(xp, a):
    try:
        factor = xp.linalg.cholesky(a)
    except np.linalg.LinAlgError:
        return None
    return factor if bool(xp.all(xp.isfinite(factor))) else None


def robust_spd_solve(a, b, report):
    """Solve a x = b for symmetric positive (semi-)definite a: Cholesky, then once with a jitter of
    sqrt(eps) times the mean diagonal, then the eigen-decomposition with eigenvalues clamped at n eps max.
    A Cholesky counts only when its solution is finite (a tiny positive pivot can overflow the solve)."""
    xp = namespace(a, b)
    n = a.shape[0]
    eps = float(np.finfo(a.dtype).eps)
    tiny = float(np.finfo(a.dtype).tiny)
    mean_diagonal = float(xp.trace(a)) / n
    if not np.isfinite(mean_diagonal):
        raise FloatingPointError("the Kalman gain system overflowed (its diagonal is not finite)")
    x = _finite_cholesky_solution(xp, a, b)
    if x is not None:
        return x
    jitter = np.sqrt(eps) * max(abs(mean_diagonal), tiny)
    x = _finite_cholesky_solution(xp, a + jitter * xp.eye(n, dtype=a.dtype), b)
    if x is not None:
        report["cholesky_jitter_retries"] += 1
        return x
    if not bool(xp.all(xp.isfinite(a))):
        raise FloatingPointError("the Kalman gain system holds NaN/Inf values and cannot be solved")
    report["eigen_fallbacks"] += 1
    w, v = xp.linalg.eigh(a)
    floor = max(float(w[-1]), tiny) * n * eps
    x = v @ ((v.T @ b) / xp.maximum(w, floor)[:, None])
    if not bool(xp.all(xp.isfinite(x))):
        raise FloatingPointError("the Kalman gain system gave a non-finite solution (overflow)")
    return x


def _finite_cholesky_solution(xp, a, b):
    factor = _cholesky_or_none(xp, a)
    if factor is None:
        return None
    with np.errstate(over="ignore", invalid="ignore"):
        x = xp.linalg.solve(factor.T, xp.linalg.solve(factor, b))
    return x if bool(xp.all(xp.isfinite(x))) else None


def new_report(formulation, step):
    return {
        "formulation": formulation,
        "failed_members": 0,
        "cholesky_jitter_retries": 0,
        "eigen_fallbacks": 0,
        "step": float(step),
    }


def failed_members(xp, *arrays):
    """Boolean mask of members (rows) whose outputs hold NaN/Inf in any of the arrays."""
    failed = xp.zeros(arrays[0].shape[0], dtype=bool)
    for a in arrays:
        failed |= ~xp.all(xp.isfinite(a), axis=1)
    return failed


def check_survivors(failed, on_failure, operation, what):
    n_failed = int(failed.sum())
    J = failed.shape[0]
    if n_failed == 0:
        return
    if on_failure == "raise":
        raise ValueError(
            f"{operation}: the rows of {what} of {n_failed} of {J} members contain NaN/Inf; "
            "pass on_failure='redraw' to drop and re-draw failed members"
        )
    if J - n_failed < 2:
        raise FloatingPointError(
            f"{operation}: only {J - n_failed} of {J} members have finite {what}; at least 2 are needed"
        )


def redraw_failed(xp, U_new, failed, redraw_seed):
    """Failed members re-drawn around the updated survivors: ubar_s + dU_s^T z / sqrt(J_s) (eki-math 5)."""
    J = U_new.shape[0]
    survivors = xp.flatnonzero(~failed)
    survivors_new = U_new[survivors]
    mean = survivors_new.mean(axis=0)
    anomalies = survivors_new - mean
    for f in xp.flatnonzero(failed).tolist():
        z = standard_normal(xp, redraw_seed, STREAM_REDRAW, f * J + survivors)
        z = (z - z.mean()).astype(U_new.dtype)
        U_new[f] = mean + anomalies.T @ z / np.sqrt(survivors.size)
    return U_new


def select_output(U_new, output):
    """The updated ensemble, or its mean for output="mean"."""
    if output not in ("ensemble", "mean"):
        raise ValueError(f"output = {output!r} is not one of 'ensemble', 'mean'")
    return U_new.mean(axis=0) if output == "mean" else U_new

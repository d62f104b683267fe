"""The EKI (Kalman) update, eki-math section 1, in both formulations, written as the formulas read."""

import numpy as np

from ._common import (Noise, check_survivors, failed_members, namespace, new_report, redraw_failed, robust_spd_solve,
                      select_output)
from .rng import STREAM_PERTURBATION, normal_matrix

_MAX_GAIN_BYTES = 2 << 30
_FLOPS_PER_ELEMENT_PASS = 30.0


def kalman_update_flops(formulation, J, P, M, noise_kind="scalar", output="ensemble"):
    """The flop model behind formulation="auto" (the same as the native core's). For output="mean" neither
    formulation forms a P-sized product: a weighted sum of the members replaces it."""
    j, p, m = float(J), float(P), float(M)
    mean = output == "mean"
    if formulation == "observation":
        apply = 2 * j * p if mean else 4 * j * p * m + 3 * j * p * _FLOPS_PER_ELEMENT_PASS
        return j * m * m + m**3 / 3 + 2 * m * m * j + apply
    whitening = 2 * j * m * m if noise_kind == "full" else 0.0
    return whitening + j * j * m + 2 * j * j * m + j**3 / 3 + 2 * j**3 + (2 * j * p if mean else 2 * j * j * p)


def choose_formulation(J, P, M, noise_kind, element_bytes, output="ensemble"):
    if output == "ensemble" and P * M * element_bytes > _MAX_GAIN_BYTES:
        return "ensemble"
    observation = kalman_update_flops("observation", J, P, M, noise_kind, output)
    ensemble = kalman_update_flops("ensemble", J, P, M, noise_kind, output)
    return "observation" if observation < ensemble else "ensemble"


def kalman_update(U, G, y, noise_cov, *, perturbation=None, seed=None, step=1.0, formulation="auto",
                  on_failure="redraw", redraw_seed=0, output="ensemble"):
    """u_j <- u_j + C^uw (C^ww + Gamma/h)^{-1} (y + eta_j - G(u_j)); returns (U_new, report), or
    (U_new.mean(axis=0), report) for output="mean".

    perturbation: J x M array of eta, or None; seed (with perturbation None): eta_j ~ N(0, Gamma/h) from the
    counter-based generator; neither: no perturbation.
    """
    xp = namespace(U, G)
    J, P = U.shape
    M = G.shape[1]
    if not step > 0 or not np.isfinite(step):
        raise ValueError(f"kalman_update: step = {step} must be a positive finite number")
    noise = Noise(xp, noise_cov, M, U.dtype)
    if formulation == "auto":
        formulation = choose_formulation(J, P, M, noise.kind, U.dtype.itemsize, output)
    if formulation not in ("ensemble", "observation"):
        raise ValueError(f"formulation = {formulation!r} is not one of 'auto', 'ensemble', 'observation'")

    if perturbation is None and seed is not None:
        z = normal_matrix(xp, seed, STREAM_PERTURBATION, J, M)
        perturbation = (noise.colour(z) / np.sqrt(step)).astype(U.dtype)
    residuals = y[None, :] - G if perturbation is None else y[None, :] + perturbation - G

    failed = failed_members(xp, G)
    check_survivors(failed, on_failure, "kalman_update", "G")
    if bool(failed.any()):
        formulation = "ensemble"
    report = new_report(formulation, step)
    report["failed_members"] = int(failed.sum())
    survivors = xp.flatnonzero(~failed)
    update = _ensemble_space if formulation == "ensemble" else _observation_space

    U_new = U.copy()
    U_new[survivors] = update(U[survivors], G[survivors], residuals[survivors], noise, step, report)
    return select_output(redraw_failed(xp, U_new, failed, redraw_seed), output), report


def _ensemble_space(U, G, R, noise, step, report):
    """K = dG Gamma^{-1} dG^T, Q = R Gamma^{-1} dG^T, W = (K + (J/h) I)^{-1} Q^T, U + W^T dU."""
    xp = namespace(U)
    J = U.shape[0]
    dU = U - U.mean(axis=0)
    dG = G - G.mean(axis=0)
    whitened = noise.inverse_apply(dG)  # rows Gamma^{-1} dG_k
    K = dG @ whitened.T
    Q = R @ whitened.T
    W = robust_spd_solve(K + (J / step) * xp.eye(J, dtype=U.dtype), Q.T, report)
    return U + W.T @ dU


def _observation_space(U, G, R, noise, step, report):
    """C^uw (C^ww + Gamma/h)^{-1} r_j for every member."""
    J = U.shape[0]
    dU = U - U.mean(axis=0)
    dG = G - G.mean(axis=0)
    C_uw = dU.T @ dG / J
    C_ww = dG.T @ dG / J
    X = robust_spd_solve(noise.add_to(C_ww, 1.0 / step), R.T, report)
    return U + (C_uw @ X).T

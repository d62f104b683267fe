"""The two ensemble updates: the Kalman (EKI) update and the general-loss scheme (eki-math sections 1, 2)."""

import math
import numbers

from . import _core, reference
from ._arrays import like_input
from ._backend import resolve
from ._inputs import (choice, data_vector, ensemble, member_matrix, noise_covariance, noise_value, require_finite,
                      seed_from, warn_rescues)
from ._native import context_for, view

FORMULATIONS = ("auto", "ensemble", "observation")
FAILURE_POLICIES = ("redraw", "raise")
OUTPUTS = ("ensemble", "mean")


def kalman_update(U, G, y, noise_cov, *, perturbation=None, rng=None, perturb=True, step=1.0, formulation="auto",
                  backend="auto", on_failure="redraw", output="ensemble", return_info=False):
    """One EKI update: u_j <- u_j + C^uw (C^ww + Gamma/h)^{-1} (y + eta_j - G(u_j)), covariances with 1/J.

    Parameters
    ----------
    U : (J, P) array, the ensemble (float32 or float64; NumPy, CuPy, or DLPack such as PyTorch/JAX).
    G : (J, M) array, the forward-model outputs of each member; rows with NaN/Inf are failed members.
    y : (M,) data.
    noise_cov : scalar gamma (Gamma = gamma I), (M,) variances, or an (M, M) SPD matrix.
    perturbation : optional (J, M) eta added to y (reproducible perturbed observations).
    rng : None (no perturbation), an int seed or numpy Generator: eta_j ~ N(0, Gamma / step), and the draws that
        replace failed members.
    perturb : False: no eta even with an rng, which then only seeds the redraw of failed members.
    step : h > 0; h = 1 is the classical EKI.
    formulation : "auto" (cheaper by a flop model), "ensemble" (J x J system) or "observation" (M x M).
    backend : "auto" (native CPU for NumPy, native CUDA for CuPy when built), "native" or "reference".
    on_failure : "redraw" failed members around the survivors, or "raise" ValueError.
    output : "ensemble" (the updated ensemble) or "mean" (only its mean, shape (P,): all EKI(R) needs before it
        redraws the members, at O(J P) instead of the J x J by J x P product).
    return_info : also return a dict (formulation used, failed members, factorisation rescues, step).

    Returns the new ensemble (a new array; U is not modified) or its mean, and the info dict if asked.
    """
    original = U
    xp, U = ensemble(U)
    G = member_matrix(G, "G", xp, U, meaning="one row of forward-model outputs per member of U")
    M = G.shape[1]
    y = data_vector(y, "y", xp, U.dtype, M)
    noise = noise_covariance(noise_cov, xp, U.dtype, M)
    choice(formulation, "formulation", FORMULATIONS)
    choice(on_failure, "on_failure", FAILURE_POLICIES)
    choice(output, "output", OUTPUTS)
    if perturbation is not None and rng is not None:
        raise ValueError("pass either perturbation (the eta to use) or rng (to draw eta), not both")
    if perturbation is not None and not perturb:
        raise ValueError("perturb=False means no eta, but a perturbation was given: pass one or the other")
    eta = None if perturbation is None else member_matrix(perturbation, "perturbation", xp, U, M)
    seed = seed_from(rng)
    redraw_seed = 0 if seed is None else seed
    if not perturb:
        seed = None

    if resolve(backend, xp) == "reference":
        for array, name in ((U, "U"), (y, "y")) + (() if eta is None else ((eta, "perturbation"),)):
            require_finite(xp, array, name)
        U_new, report = reference.kalman_update(U, G, y, noise_value(*noise), perturbation=eta, seed=seed,
                                                step=step, formulation=formulation, on_failure=on_failure,
                                                redraw_seed=redraw_seed, output=output)
    else:
        U_new = _update_output(xp, U, output)
        report = _core.kalman_update(context_for(xp), view(U), view(G), view(y), noise[0], noise[1],
                                     None if noise[2] is None else view(noise[2]),
                                     None if eta is None else view(eta), seed, float(step), formulation,
                                     on_failure, redraw_seed, output, view(U_new))
        U_new = U_new.reshape(-1) if output == "mean" else U_new
    warn_rescues(report, "kalman_update")
    U_new = like_input(U_new, original)
    return (U_new, report) if return_info else U_new


def loss_update(U, G, grad, *, step, adaptive=True, eps=1e-8, backend="auto", on_failure="redraw", rng=None,
                output="ensemble", return_info=False):
    """One step of the general-loss scheme: u_j <- u_j - h_n sum_k D^{jk} u_k, D^{jk} = <G_k - Gbar, g_j> / J.

    grad : (J, M), row j the gradient of the loss with respect to member j's outputs (see ekinet.losses).
    step : h; with adaptive=True the step used is h_n = h / (||D||_F + eps).
    rng : seed for re-drawing failed members (rows of G or grad with NaN/Inf).
    output : "ensemble" or "mean" (only the updated ensemble's mean, shape (P,); see kalman_update).

    Returns (new U or its mean, step used), plus the info dict when return_info=True.
    """
    original = U
    xp, U = ensemble(U)
    G = member_matrix(G, "G", xp, U, meaning="one row of forward-model outputs per member of U")
    grad = member_matrix(grad, "grad", xp, U, G.shape[1], "the loss gradient for each member's outputs, like G")
    choice(on_failure, "on_failure", FAILURE_POLICIES)
    choice(output, "output", OUTPUTS)
    seed = seed_from(rng)
    redraw_seed = 0 if seed is None else seed

    if resolve(backend, xp) == "reference":
        require_finite(xp, U, "U")
        U_new, report = reference.loss_update(U, G, grad, step=step, adaptive=adaptive, eps=eps,
                                              on_failure=on_failure, redraw_seed=redraw_seed, output=output)
    else:
        U_new = _update_output(xp, U, output)
        report = _core.loss_update(context_for(xp), view(U), view(G), view(grad), float(step), bool(adaptive),
                                   float(eps), on_failure, redraw_seed, output, view(U_new))
        U_new = U_new.reshape(-1) if output == "mean" else U_new
    U_new = like_input(U_new, original)
    return (U_new, report["step"], report) if return_info else (U_new, report["step"])


def _update_output(xp, U, output):
    """The native updates' U_out: the shape of U, or one row for the mean."""
    return xp.empty((1, U.shape[1]) if output == "mean" else U.shape, dtype=U.dtype)


def nesterov_extrapolate(U_new, U_old, coefficient, *, backend="auto"):
    """v = u_new + c (u_new - u_old) (MEKI uses c = n / (n + 3))."""
    original = U_new
    xp, U_new = ensemble(U_new, "U_new")
    U_old = member_matrix(U_old, "U_old", xp, U_new, U_new.shape[1], "the shape of U_new")
    if not (isinstance(coefficient, numbers.Real) and math.isfinite(coefficient)):
        raise ValueError(f"coefficient = {coefficient!r} must be a finite number")
    coefficient = float(coefficient)  # a NumPy float64 would promote a float32 ensemble on the reference path
    if resolve(backend, xp) == "reference":
        return like_input(reference.nesterov_extrapolate(U_new, U_old, coefficient), original)
    V = xp.empty_like(U_new, order="C")
    _core.nesterov_extrapolate(context_for(xp), view(U_new), view(U_old), coefficient, view(V))
    return like_input(V, original)

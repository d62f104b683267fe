"""The general-loss scheme of Kovachki & Stuart, eki-math section 2."""

import numpy as np

from ._common import check_survivors, failed_members, namespace, new_report, redraw_failed, select_output


def loss_update(U, G, grad, *, step, adaptive=True, eps=1e-8, on_failure="redraw", redraw_seed=0,
                output="ensemble"):
    """u_{n+1} = u_n - h_n D u_n, D^{jk} = (1/J) <G_k - Gbar, g_j>, h_n = h / (||D||_F + eps) when adaptive
    (h itself where ||D||_F + eps = 0: D = 0 moves nothing at any step).

    Returns (U_new, report) with report["step"] = h_n; U_new.mean(axis=0) instead for output="mean".
    """
    xp = namespace(U, G, grad)
    if not step > 0 or not np.isfinite(step):
        raise ValueError(f"loss_update: step = {step} must be a positive finite number")
    if not eps >= 0 or not np.isfinite(eps):
        raise ValueError(f"loss_update: eps = {eps} must be a non-negative finite number")
    failed = failed_members(xp, G, grad)
    check_survivors(failed, on_failure, "loss_update", "G or grad")
    survivors = xp.flatnonzero(~failed)
    Us, Gs, gs = U[survivors], G[survivors], grad[survivors]
    J = Us.shape[0]

    D = gs @ (Gs - Gs.mean(axis=0)).T / J
    norm = float(xp.linalg.norm(D)) + eps
    h = step / norm if adaptive and norm > 0 else step  # D = 0 (and eps = 0): no update whatever the step
    U_new = U.copy()
    U_new[survivors] = Us - h * (D @ (Us - Us.mean(axis=0)))  # D u = D (u - ubar): rows of D-bar sum to 0
    report = new_report("ensemble", h)
    report["failed_members"] = int(failed.sum())
    return select_output(redraw_failed(xp, U_new, failed, redraw_seed), output), report


def nesterov_extrapolate(U_new, U_old, coefficient):
    """v = u_new + c (u_new - u_old); MEKI uses c = n / (n + 3)."""
    return U_new + coefficient * (U_new - U_old)

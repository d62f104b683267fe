"""The general-loss scheme of Kovachki & Stuart (eki-math section 2): u_{n+1} = u_n - h_n D(u_n) u_n with
D^{jk} = (1/J) <G_k - Gbar, g_j>, its adaptive step, its link with the Kalman update, Nesterov extrapolation,
failed members and argument checking."""

import numpy as np
import pytest
from conftest import EPS32, SHAPE_IDS, SHAPES, assert_update_close, make_noise, make_problem, noise_matrix

import ekinet

RTOL64 = 1e-10  # measured worst case about 1e-14 relative to the update (no linear solve is involved)
# float32: U_new = U - h D dU is a J x J by J x P product plus U; the rounding is about eps32 * J * (|U| +
# |h D dU|) (a length-J sum of products, then one addition). Measured constant below 1 over the grid; 10 is a
# margin of 10 without hiding a real error (a wrong sign or factor is an O(1) error).
C32 = 10.0


def _gradient(G, y, noise):
    """g_j = Gamma^{-1} (G_j - y) of the least-squares loss, in the test (not through ekinet.losses)."""
    return np.linalg.solve(noise_matrix(noise, G.shape[1]), (G - y).T).T


def _D(G, g):
    J = G.shape[0]
    return g @ (G - G.mean(axis=0)).T / J


@pytest.mark.parametrize("eps", [1e-8, 0.1, 3.0])
@pytest.mark.parametrize("adaptive", [True, False])
@pytest.mark.parametrize("J,P,M", SHAPES, ids=SHAPE_IDS)
def test_native_matches_reference(J, P, M, adaptive, eps, rng):
    U, G, y = make_problem(J, P, M, rng)
    grad = _gradient(G, y, make_noise("diagonal", M, rng))
    step = 0.3
    native, h_native = ekinet.loss_update(U, G, grad, step=step, adaptive=adaptive, eps=eps, backend="native")
    reference, h_ref = ekinet.loss_update(U, G, grad, step=step, adaptive=adaptive, eps=eps, backend="reference")
    assert native.shape == (J, P) and native.dtype == np.float64
    assert h_native == pytest.approx(h_ref, rel=1e-12)
    assert_update_close(native, reference, U, RTOL64, "loss_update native vs reference")
    # the step used: h / (||D||_F + eps) with D from the definition, or h itself
    expected_h = step / (np.linalg.norm(_D(G, grad), "fro") + eps) if adaptive else step
    assert h_native == pytest.approx(expected_h, rel=1e-12)


@pytest.mark.parametrize("adaptive", [True, False])
@pytest.mark.parametrize("J,P,M", SHAPES, ids=SHAPE_IDS)
def test_native_matches_reference_float32(J, P, M, adaptive, rng):
    U, G, y = make_problem(J, P, M, rng, dtype=np.float32)
    grad = (G - y).astype(np.float32)
    native, h32 = ekinet.loss_update(U, G, grad, step=0.3, adaptive=adaptive, backend="native")
    assert native.dtype == np.float32
    reference, h64 = ekinet.loss_update(U.astype(np.float64), G.astype(np.float64), grad.astype(np.float64),
                                        step=0.3, adaptive=adaptive, backend="reference")
    assert h32 == pytest.approx(h64, rel=1e3 * EPS32)
    tolerance = C32 * EPS32 * J * (np.max(np.abs(U)) + np.max(np.abs(reference - U)))
    error = np.max(np.abs(native.astype(np.float64) - reference))
    assert error <= tolerance, f"{error:.3e} > {tolerance:.3e}"


@pytest.mark.parametrize("backend", ["native", "reference"])
@pytest.mark.parametrize("noise_kind", ["scalar", "diagonal", "full"])
@pytest.mark.parametrize("J,P,M", [(2, 1, 1), (6, 30, 4), (40, 3, 10), (5, 2, 50)])
def test_squared_loss_scheme_is_the_continuous_time_eki_step(J, P, M, noise_kind, backend, rng):
    """With Psi = 1/2 |y - z|^2_Gamma (g = Gamma^{-1} (z - y)) and a fixed step, D u_j = C^uw g_j, so
    u_j' = u_j - h C^uw Gamma^{-1} (G_j - y): one explicit Euler step of the EKI flow."""
    U, G, y = make_problem(J, P, M, rng)
    noise = make_noise(noise_kind, M, rng)
    Gamma = noise_matrix(noise, M)
    _, grad = ekinet.losses.squared(G, y, noise_cov=noise)
    np.testing.assert_allclose(grad, _gradient(G, y, noise), rtol=1e-10, atol=1e-12)
    h = 0.05
    got, h_used = ekinet.loss_update(U, G, grad, step=h, adaptive=False, backend=backend)
    assert h_used == h
    dU, dG = U - U.mean(axis=0), G - G.mean(axis=0)
    C_uw = dU.T @ dG / J
    expected = U - h * (C_uw @ np.linalg.solve(Gamma, (G - y).T)).T
    assert_update_close(got, expected, U, RTOL64, "loss scheme vs continuous-time EKI step")


@pytest.mark.parametrize("formulation", ["ensemble", "observation"])
@pytest.mark.parametrize("noise_kind", ["scalar", "full"])
def test_kalman_update_approaches_the_same_direction_as_h_goes_to_zero(noise_kind, formulation, rng):
    """(kalman_update(h) - U) / h = C^uw (h C^ww + Gamma)^{-1} (y - G_j) = -C^uw Gamma^{-1} (G_j - y) + O(h):
    dividing h by 10 divides the difference by about 10 (first order)."""
    J, P, M = 8, 5, 6
    U, G, y = make_problem(J, P, M, rng)
    noise = make_noise(noise_kind, M, rng)
    _, grad = ekinet.losses.squared(G, y, noise_cov=noise)
    errors = []
    for h in (1e-2, 1e-3, 1e-4):
        flow, _ = ekinet.loss_update(U, G, grad, step=h, adaptive=False)
        direction = (flow - U) / h
        kalman = ekinet.kalman_update(U, G, y, noise, step=h, formulation=formulation)
        errors.append(np.max(np.abs((kalman - U) / h - direction)) / np.max(np.abs(direction)))
    assert errors[0] < 0.1
    for coarse, fine in zip(errors, errors[1:]):
        assert 7 < coarse / fine < 13, errors


@pytest.mark.parametrize("backend", ["native", "reference"])
def test_adaptive_step_normalises_by_the_frobenius_norm(backend, rng):
    """Scaling the gradients by s scales D by s; the adaptive update (eps = 0) is then unchanged."""
    U, G, y = make_problem(6, 4, 5, rng)
    grad = G - y
    a, ha = ekinet.loss_update(U, G, grad, step=0.2, eps=0.0, backend=backend)
    b, hb = ekinet.loss_update(U, G, 1000.0 * grad, step=0.2, eps=0.0, backend=backend)
    assert hb == pytest.approx(ha / 1000.0, rel=1e-12)
    assert_update_close(b, a, U, RTOL64, "scale invariance")
    c, hc = ekinet.loss_update(U, G, 1000.0 * grad, step=0.2, adaptive=False, backend=backend)
    assert hc == 0.2 and np.max(np.abs(c - U)) > 100 * np.max(np.abs(a - U))


def test_loss_scheme_descends_a_linear_least_squares_problem(rng):
    """Iterating the adaptive scheme on G(u) = A u with the squared loss decreases the mean misfit."""
    J, P, M = 20, 3, 10
    A = rng.standard_normal((M, P))
    y = A @ np.array([1.0, -2.0, 0.5])
    U = rng.standard_normal((J, P))
    misfit = []
    for _ in range(200):
        G = U @ A.T
        values, grad = ekinet.losses.squared(G, y)
        misfit.append(values.mean())
        U, _ = ekinet.loss_update(U, G, grad, step=0.5)
    assert misfit[-1] < 1e-3 * misfit[0]


# --------------------------------------------------------------------------------------------------------------
# Nesterov extrapolation
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("backend", ["native", "reference"])
@pytest.mark.parametrize("c", [0.0, 0.25, 7 / 10, -0.5])
def test_nesterov_extrapolate(c, backend, dtype, rng):
    U_new = rng.standard_normal((5, 7)).astype(dtype)
    U_old = rng.standard_normal((5, 7)).astype(dtype)
    V = ekinet.nesterov_extrapolate(U_new, U_old, c, backend=backend)
    assert V.dtype == dtype and V.shape == U_new.shape
    expected = U_new.astype(np.float64) + c * (U_new.astype(np.float64) - U_old.astype(np.float64))
    np.testing.assert_allclose(V, expected, rtol=4 * np.finfo(dtype).eps, atol=4 * np.finfo(dtype).eps)


@pytest.mark.parametrize("backend", ["native", "reference"])
def test_nesterov_extrapolate_checks_shapes(backend, rng):
    with pytest.raises(ValueError, match=r"U_old has shape \(5, 6\)"):
        ekinet.nesterov_extrapolate(np.zeros((5, 7)), np.zeros((5, 6)), 0.5, backend=backend)
    with pytest.raises(TypeError, match=r"U_old has dtype float32"):
        ekinet.nesterov_extrapolate(np.zeros((5, 7)), np.zeros((5, 7), np.float32), 0.5, backend=backend)
    with pytest.raises(ValueError, match=r"coefficient = nan must be a finite number"):
        ekinet.nesterov_extrapolate(np.zeros((5, 7)), np.zeros((5, 7)), float("nan"), backend=backend)
    U32 = np.zeros((5, 7), np.float32)  # a NumPy float64 coefficient keeps a float32 ensemble float32
    assert ekinet.nesterov_extrapolate(U32, U32, np.float64(0.5), backend=backend).dtype == np.float32


# --------------------------------------------------------------------------------------------------------------
# failed members
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["G", "grad", "both"])
@pytest.mark.parametrize("adaptive", [True, False])
def test_failed_members_native_equals_reference_and_survivors_alone(adaptive, where, rng):
    J, P, M = 9, 6, 5
    U, G, y = make_problem(J, P, M, rng)
    grad = G - y
    failed, survivors = [1, 6], [j for j in range(J) if j not in (1, 6)]
    G_bad, grad_bad = G.copy(), grad.copy()
    if where in ("G", "both"):
        G_bad[1, 0] = np.nan
    else:
        grad_bad[1, 0] = np.nan
    if where in ("grad", "both"):
        grad_bad[6, :] = -np.inf
    else:
        G_bad[6, :] = -np.inf
    kw = dict(step=0.4, adaptive=adaptive, rng=11, return_info=True)
    native, h_native, info = ekinet.loss_update(U, G_bad, grad_bad, backend="native", **kw)
    reference, h_ref, _ = ekinet.loss_update(U, G_bad, grad_bad, backend="reference", **kw)
    assert info["failed_members"] == 2
    assert h_native == pytest.approx(h_ref, rel=1e-12)
    assert_update_close(native, reference, U, RTOL64, "failed members: native vs reference")
    alone, h_alone = ekinet.loss_update(U[survivors], G[survivors], grad[survivors], step=0.4, adaptive=adaptive)
    assert h_native == pytest.approx(h_alone, rel=1e-12)
    assert_update_close(native[survivors], alone, U[survivors], RTOL64, "survivors vs survivors alone")
    assert np.all(np.isfinite(native[failed]))
    assert np.min(np.linalg.norm(native[failed] - U[failed], axis=1)) > 1e-6


@pytest.mark.parametrize("failures", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("backend", ["native", "reference"])
def test_mean_output_is_the_mean_of_the_updated_ensemble(backend, dtype, failures, rng):
    """output="mean" equals the mean of the full update (failed members re-drawn as the full update does)."""
    J, P, M = 11, 30, 6
    U, G, y = make_problem(J, P, M, rng, dtype=dtype)
    grad = (G - y).astype(dtype)
    if failures:
        G[2, 0], grad[7, 3] = np.nan, np.inf
    kw = dict(step=0.4, rng=3, backend=backend, return_info=True)
    full, h_full, full_info = ekinet.loss_update(U, G, grad, **kw)
    mean, h_mean, info = ekinet.loss_update(U, G, grad, output="mean", **kw)
    assert mean.shape == (P,) and mean.dtype == dtype
    assert h_mean == h_full and info["failed_members"] == full_info["failed_members"] == (2 if failures else 0)
    rtol = RTOL64 if dtype == np.float64 else C32 * EPS32 * J
    assert_update_close(mean, full.astype(np.float64).mean(axis=0), U.astype(np.float64).mean(axis=0), rtol,
                        "mean output vs full update")
    with pytest.raises(ValueError, match=r"output = 'x'"):
        ekinet.loss_update(U, G, grad, step=0.4, output="x", backend=backend)


@pytest.mark.parametrize("backend", ["native", "reference"])
def test_failed_members_raise(backend, rng):
    U, G, y = make_problem(6, 3, 4, rng)
    grad = G - y
    grad[2, 1] = np.inf
    with pytest.raises(ValueError, match=r"G or grad.*NaN/Inf"):
        ekinet.loss_update(U, G, grad, step=1.0, on_failure="raise", backend=backend)
    grad[:5, 0] = np.nan
    with pytest.raises(FloatingPointError, match=r"at least 2"):
        ekinet.loss_update(U, G, grad, step=1.0, backend=backend)


# --------------------------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["native", "reference"])
def test_bad_input(backend, rng):
    U, G, y = make_problem(5, 4, 3, rng)
    grad = G - y
    with pytest.raises(ValueError, match=r"grad has shape \(5, 2\)"):
        ekinet.loss_update(U, G, grad[:, :2], step=1.0, backend=backend)
    with pytest.raises(ValueError, match=r"grad has shape \(4, 3\)"):
        ekinet.loss_update(U, G, grad[:4], step=1.0, backend=backend)
    with pytest.raises(ValueError, match=r"\bG has shape \(4, 3\)"):
        ekinet.loss_update(U, G[:4], grad, step=1.0, backend=backend)
    with pytest.raises(TypeError, match=r"grad has dtype float32 but U is float64"):
        ekinet.loss_update(U, G, grad.astype(np.float32), step=1.0, backend=backend)
    with pytest.raises(TypeError, match=r"\bU has dtype int64"):
        ekinet.loss_update(np.ones((5, 4), dtype=np.int64), G, grad, step=1.0, backend=backend)
    U_bad = U.copy()
    U_bad[0, 0] = np.nan
    with pytest.raises(ValueError, match=r"\bU contains 1 NaN/Inf"):
        ekinet.loss_update(U_bad, G, grad, step=1.0, backend=backend)
    for step in (0.0, -1.0, np.inf, np.nan):
        with pytest.raises(ValueError, match=r"step"):
            ekinet.loss_update(U, G, grad, step=step, backend=backend)
    with pytest.raises(ValueError, match=r"on_failure = 'skip'"):
        ekinet.loss_update(U, G, grad, step=1.0, on_failure="skip", backend=backend)
    with pytest.raises(ValueError, match=r"\bU has 1 member"):
        ekinet.loss_update(U[:1], G[:1], grad[:1], step=1.0, backend=backend)


@pytest.mark.parametrize("backend", ["native", "reference"])
@pytest.mark.parametrize("eps", [-1.0, np.nan, np.inf])
def test_eps_must_be_non_negative_and_finite(eps, backend, rng):
    """A negative eps can make h_n = h / (||D||_F + eps) negative or infinite (ascent instead of descent);
    both backends must reject it the same way."""
    U, G, y = make_problem(5, 4, 3, rng)
    with pytest.raises(ValueError, match=r"eps"):
        ekinet.loss_update(U, G, G - y, step=1.0, eps=eps, backend=backend)


@pytest.mark.parametrize("backend", ["native", "reference"])
def test_inputs_are_not_modified(backend, rng):
    U, G, y = make_problem(7, 5, 4, rng)
    grad = G - y
    G[2] = np.nan
    copies = [a.copy() for a in (U, G, grad)]
    out, _ = ekinet.loss_update(U, G, grad, step=0.5, backend=backend)
    assert not np.shares_memory(out, U)
    for original, copy in zip((U, G, grad), copies):
        np.testing.assert_array_equal(original, copy)
    assert np.max(np.abs(out - U)) > 0


@pytest.mark.parametrize("backend", ["native", "reference"])
def test_zero_d_with_zero_eps_moves_nothing(backend, rng):
    """Outputs equal over the members make D = 0: nothing moves at any step, so with eps = 0 the adaptive step
    is h itself rather than h / 0, which turned the ensemble into NaN (0 * Inf)."""
    U = rng.standard_normal((5, 4))
    G = np.ones((5, 3))
    U_new, step = ekinet.loss_update(U, G, rng.standard_normal((5, 3)), step=0.5, eps=0.0, backend=backend)
    np.testing.assert_allclose(U_new, U, rtol=0, atol=1e-15)
    assert step == 0.5

"""The Kalman (EKI) update of eki-math section 1: native core against the NumPy reference and against the
formula written out here, algebraic properties (formulations, subspace property), convergence on linear
problems, the counter-based generator, failed members, argument checking and robustness."""

import gc
import warnings
import types
import weakref

import numpy as np
import pytest
from conftest import (EPS32, FORMULATIONS, NOISE_KINDS, PERTURBATIONS, SHAPE_IDS, SHAPES, STEPS,
                      assert_update_close, coloured_perturbation, counter_normal_int, counter_normals,
                      kalman_system_condition, make_noise, make_problem, noise_matrix, orthogonal_complement_residual,
                      perturbation_kwargs, random_spd, textbook_kalman)

import ekinet
from ekinet import _core
from ekinet._native import view

# float64: the native core and the reference follow different operation orders (Cholesky whitening vs solve,
# ensemble-space transform vs direct sum, BLAS blocking), so they agree to rounding amplified by the condition
# of the gain system. Measured worst case over this grid: 2e-13 relative to the size of the update; 1e-10
# leaves a margin of about 500.
RTOL64 = 1e-10
# float32: the native float32 result is compared with the float64 reference evaluated on the same (float32-
# rounded) inputs. Backward-stable factorisations give an error of about eps32 * (kappa |update| + |U|), where
# kappa is the condition number of the system solved (C^ww + Gamma/h or K + (J/h) I) and the |U| term is the
# rounding of U + update itself (which dominates when h is small and the update tiny). Over this grid the
# measured constant is at most 2.6 (J = 60, h = 0.1); 50 leaves a margin of about 20.
C32 = 50.0


def _noise32(noise):
    return noise if np.isscalar(noise) else np.asarray(noise, dtype=np.float32)


def _as64(kwargs):
    return {k: (v.astype(np.float64) if isinstance(v, np.ndarray) else v) for k, v in kwargs.items()}


# --------------------------------------------------------------------------------------------------------------
# native == reference
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("perturbation", PERTURBATIONS)
@pytest.mark.parametrize("noise_kind", NOISE_KINDS)
@pytest.mark.parametrize("formulation", FORMULATIONS)
@pytest.mark.parametrize("J,P,M", SHAPES, ids=SHAPE_IDS)
def test_native_matches_reference_float64(J, P, M, formulation, noise_kind, perturbation, step, rng):
    U, G, y = make_problem(J, P, M, rng)
    noise = make_noise(noise_kind, M, rng)
    kwargs = perturbation_kwargs(perturbation, J, M, rng)
    native, info = ekinet.kalman_update(U, G, y, noise, step=step, formulation=formulation, backend="native",
                                        return_info=True, **kwargs)
    reference = ekinet.kalman_update(U, G, y, noise, step=step, formulation=formulation, backend="reference",
                                     **kwargs)
    assert native.dtype == np.float64 and native.shape == (J, P)
    assert info["formulation"] == formulation
    assert info["step"] == step
    assert info["failed_members"] == 0
    assert np.max(np.abs(reference - U)) > 0
    assert_update_close(native, reference, U, RTOL64, "native vs reference (float64)")


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("perturbation", PERTURBATIONS)
@pytest.mark.parametrize("noise_kind", NOISE_KINDS)
@pytest.mark.parametrize("formulation", FORMULATIONS)
@pytest.mark.parametrize("J,P,M", SHAPES, ids=SHAPE_IDS)
def test_native_matches_reference_float32(J, P, M, formulation, noise_kind, perturbation, step, rng):
    U, G, y = make_problem(J, P, M, rng, dtype=np.float32)
    noise = _noise32(make_noise(noise_kind, M, rng))
    kwargs = perturbation_kwargs(perturbation, J, M, rng, dtype=np.float32)
    native = ekinet.kalman_update(U, G, y, noise, step=step, formulation=formulation, backend="native", **kwargs)
    assert native.dtype == np.float32
    # The float64 reference on the float32 inputs (so that input rounding is not counted as error).
    noise64 = noise if np.isscalar(noise) else noise.astype(np.float64)
    reference = ekinet.kalman_update(U.astype(np.float64), G.astype(np.float64), y.astype(np.float64), noise64,
                                     step=step, formulation=formulation, backend="reference", **_as64(kwargs))
    # the float32 reference must agree too (looser: it is float32 all the way)
    reference32 = ekinet.kalman_update(U, G, y, noise, step=step, formulation=formulation, backend="reference",
                                       **kwargs)
    assert reference32.dtype == np.float32
    kappa = kalman_system_condition(G, noise_matrix(noise64, M), step, formulation)
    tolerance = C32 * EPS32 * (kappa * np.max(np.abs(reference - U)) + np.max(np.abs(U)))
    error = np.max(np.abs(native.astype(np.float64) - reference))
    assert error <= tolerance, f"float32 error {error:.3e} > tolerance {tolerance:.3e} (kappa {kappa:.2e})"
    error32 = np.max(np.abs(reference32.astype(np.float64) - reference))
    assert error32 <= 2 * tolerance, f"float32 reference error {error32:.3e} > {2 * tolerance:.3e}"


# --------------------------------------------------------------------------------------------------------------
# the two formulations, "auto", the report
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["native", "reference"])
@pytest.mark.parametrize("perturbation", PERTURBATIONS)
@pytest.mark.parametrize("noise_kind", NOISE_KINDS)
@pytest.mark.parametrize("J,P,M", SHAPES, ids=SHAPE_IDS)
def test_formulations_agree_and_auto_reports_its_choice(J, P, M, noise_kind, perturbation, backend, rng):
    U, G, y = make_problem(J, P, M, rng)
    noise = make_noise(noise_kind, M, rng)
    kwargs = perturbation_kwargs(perturbation, J, M, rng)
    step = 0.7
    results = {}
    for formulation in ("ensemble", "observation", "auto"):
        results[formulation], info = ekinet.kalman_update(U, G, y, noise, step=step, formulation=formulation,
                                                          backend=backend, return_info=True, **kwargs)
        assert isinstance(info, dict)
        assert set(info) >= {"formulation", "failed_members", "cholesky_jitter_retries", "eigen_fallbacks", "step"}
        if formulation != "auto":
            assert info["formulation"] == formulation
        else:
            chosen = info["formulation"]
    assert chosen in ("ensemble", "observation")
    assert chosen == ekinet.reference.kalman.choose_formulation(J, P, M, noise_kind, 8)
    assert chosen == _core.choose_formulation(J, P, M, noise_kind, 8, 2 << 30)
    assert_update_close(results["ensemble"], results["observation"], U, RTOL64, "ensemble vs observation")
    assert_update_close(results["auto"], results["ensemble"], U, RTOL64, "auto vs ensemble")
    assert_update_close(results["auto"], results["observation"], U, RTOL64, "auto vs observation")
    # auto is the formulation it reports, not merely close to it
    np.testing.assert_array_equal(results["auto"], results[chosen])


@pytest.mark.parametrize("failures", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("backend", ["native", "reference"])
@pytest.mark.parametrize("perturbation", PERTURBATIONS)
@pytest.mark.parametrize("noise_kind", NOISE_KINDS)
@pytest.mark.parametrize("formulation", ["auto", *FORMULATIONS])
def test_mean_output_is_the_mean_of_the_updated_ensemble(formulation, noise_kind, perturbation, backend, dtype,
                                                         failures, rng):
    """output="mean" (what EKI(R) needs before redrawing every member) equals the mean of the full update, in
    both formulations, with failed members re-drawn as the full update re-draws them."""
    J, P, M = 12, 40, 7
    U, G, y = make_problem(J, P, M, rng)
    G = _with_failures(G) if failures else G
    noise = make_noise(noise_kind, M, rng)
    kwargs = perturbation_kwargs(perturbation, J, M, rng)
    if dtype == np.float32:
        U, G, y, noise = U.astype(dtype), G.astype(dtype), y.astype(dtype), _noise32(noise)
        kwargs = {k: (v.astype(dtype) if isinstance(v, np.ndarray) else v) for k, v in kwargs.items()}
    options = dict(step=0.8, formulation=formulation, backend=backend, return_info=True, **kwargs)
    full, full_info = ekinet.kalman_update(U, G, y, noise, **options)
    mean, info = ekinet.kalman_update(U, G, y, noise, output="mean", **options)
    assert mean.shape == (P,) and mean.dtype == dtype
    assert info["failed_members"] == full_info["failed_members"] == (2 if failures else 0)
    if formulation != "auto":
        assert info["formulation"] == formulation if not failures else info["formulation"] == "ensemble"
    rtol = RTOL64 if dtype == np.float64 else C32 * EPS32 * 10
    expected = full.astype(np.float64).mean(axis=0)
    assert_update_close(mean, expected, U.astype(np.float64).mean(axis=0), rtol, "mean output vs full update")


@pytest.mark.parametrize("J,P,M", [(2000, 79510, 1000), (2000, 100, 50), (50, 10**6, 20), (500, 10, 3000)])
def test_mean_output_choice_ignores_the_parameter_count(J, P, M):
    """With output="mean" neither formulation forms a P-sized product, so "auto" compares the J- and M-sized
    work alone, and never refuses the observation form for the size of a P x M gain it does not form."""
    for noise_kind in ("scalar", "full"):
        chosen = _core.choose_formulation(J, P, M, noise_kind, 4, 2 << 30, "mean")
        assert chosen == ekinet.reference.kalman.choose_formulation(J, P, M, noise_kind, 4, "mean")
        assert chosen == _core.choose_formulation(J, 1, M, noise_kind, 4, 2 << 30, "mean")
        flops = {f: _core.kalman_update_flops(f, J, P, M, noise_kind, "mean") for f in ("ensemble", "observation")}
        assert chosen == min(flops, key=flops.get)
        assert flops["ensemble"] < _core.kalman_update_flops("ensemble", J, P, M, noise_kind)
    assert _core.choose_formulation(2000, 10**7, 100, "scalar", 4, 2 << 30, "mean") == "observation"
    assert _core.choose_formulation(2000, 10**7, 100, "scalar", 4, 2 << 30) == "ensemble"  # a 4 GB gain


@pytest.mark.parametrize("J,P,M,expected", [(4, 50, 120, "ensemble"), (3, 5, 400, "ensemble"),
                                            (60, 5, 3, "observation"), (200, 1000, 2, "observation")])
def test_auto_picks_the_cheaper_formulation(J, P, M, expected, rng):
    """eki-math: "auto" uses ensemble space whenever M is not small against J."""
    U, G, y = make_problem(J, P, M, rng)
    _, info = ekinet.kalman_update(U, G, y, 1.0, return_info=True)
    assert info["formulation"] == expected


# --------------------------------------------------------------------------------------------------------------
# independent check against the textbook formula
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["native", "reference"])
@pytest.mark.parametrize("perturbation", PERTURBATIONS)
@pytest.mark.parametrize("noise_kind", NOISE_KINDS)
@pytest.mark.parametrize("formulation", ["auto", *FORMULATIONS])
@pytest.mark.parametrize("J,P,M", [(2, 1, 1), (4, 50, 120), (60, 5, 3), (10, 200, 8), (5, 7, 2)],
                         ids=["J2-P1-M1", "J4-P50-M120", "J60-P5-M3", "J10-P200-M8", "J5-P7-M2"])
def test_matches_textbook_formula(J, P, M, formulation, noise_kind, perturbation, backend, rng):
    U, G, y = make_problem(J, P, M, rng)
    noise = make_noise(noise_kind, M, rng)
    step = 0.5
    kwargs = perturbation_kwargs(perturbation, J, M, rng)
    if perturbation == "given":
        eta = kwargs["perturbation"]
    elif perturbation == "seeded":
        eta = coloured_perturbation(noise, M, kwargs["rng"], J, step)
    else:
        eta = None
    expected = textbook_kalman(U, G, y, noise_matrix(noise, M), step, eta)
    got = ekinet.kalman_update(U, G, y, noise, step=step, formulation=formulation, backend=backend, **kwargs)
    assert_update_close(got, expected, U, RTOL64, "library vs textbook formula")


def test_full_noise_reads_only_the_lower_triangle_consistently(rng):
    """A symmetric full Gamma equals the same Gamma passed as a diagonal when it is diagonal."""
    J, P, M = 6, 4, 5
    U, G, y = make_problem(J, P, M, rng)
    d = rng.uniform(0.2, 2.0, M)
    for formulation in FORMULATIONS:
        a = ekinet.kalman_update(U, G, y, np.diag(d), formulation=formulation)
        b = ekinet.kalman_update(U, G, y, d, formulation=formulation)
        c = ekinet.kalman_update(U, G, y, 0.7, formulation=formulation)
        e = ekinet.kalman_update(U, G, y, np.full(M, 0.7), formulation=formulation)
        assert_update_close(a, b, U, RTOL64, "full diag vs diagonal")
        assert_update_close(c, e, U, RTOL64, "scalar vs constant diagonal")


# --------------------------------------------------------------------------------------------------------------
# the subspace property
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("perturbation", ["none", "seeded"])
@pytest.mark.parametrize("formulation", FORMULATIONS)
def test_subspace_property(formulation, perturbation, rng):
    """Without randomisation every member stays in ubar_0 + span{u_0^j - ubar_0} (P >> J), whatever the
    (nonlinear) forward map and the data perturbations; a randomisation leaves the subspace."""
    J, P, M = 6, 120, 15
    U0 = rng.standard_normal((J, P))
    A = rng.standard_normal((P, M)) / np.sqrt(P)
    y = rng.standard_normal(M)
    ubar0 = U0.mean(axis=0)
    directions = U0 - ubar0
    U = U0
    for n in range(6):
        G = np.sin(U @ A) + 0.1 * (U @ A) ** 2
        U = ekinet.kalman_update(U, G, y, 0.05, formulation=formulation,
                                 rng=None if perturbation == "none" else 100 + n)
    moved = np.max(np.linalg.norm(U - U0, axis=1))
    assert moved > 1e-2  # the updates did something
    residual = orthogonal_complement_residual(U, ubar0, directions)
    assert residual <= 1e-10 * np.max(np.linalg.norm(U0, axis=1)), residual
    # control: EKI(R) leaves the initial subspace (so the check above can fail)
    R = ekinet.randomize(U, 0.1, rng=1)
    assert orthogonal_complement_residual(R, ubar0, directions) > 0.1


# --------------------------------------------------------------------------------------------------------------
# linear problems: least squares, ridge / posterior
# --------------------------------------------------------------------------------------------------------------


def _full_rank_ensemble(rng, J, P, centre, scale):
    U = centre + scale * rng.standard_normal((J, P))
    assert np.linalg.matrix_rank(U - U.mean(axis=0)) == P
    return U


def _well_conditioned(rng, M, P):
    """An M x P matrix with singular values evenly spread in [1, 2]."""
    Q1, _ = np.linalg.qr(rng.standard_normal((M, P)))
    Q2, _ = np.linalg.qr(rng.standard_normal((P, P)))
    return (Q1 * np.linspace(1.0, 2.0, P)) @ Q2


def _mean_error_coefficients(U, u_star):
    """w with ubar - u_star = dU^T w (exists when the anomalies span the direction to u_star)."""
    dU = U - U.mean(axis=0)
    w = np.linalg.lstsq(dU.T, U.mean(axis=0) - u_star, rcond=None)[0]
    assert np.allclose(dU.T @ w, U.mean(axis=0) - u_star, rtol=1e-12, atol=1e-12)
    return w


@pytest.mark.parametrize("noise_kind", ["scalar", "full"])
@pytest.mark.parametrize("formulation", FORMULATIONS)
@pytest.mark.parametrize("P,M", [(3, 3), (3, 8), (5, 12)])
def test_linear_deterministic_eki_converges_to_least_squares(P, M, formulation, noise_kind, rng):
    """G(u) = A u, no perturbation, h = 1, J = 3P > P + 1 with a full-rank initial ensemble. With
    u_LS the Gamma-weighted least-squares minimiser, K (y - A u_LS) = 0, so the mean error and the anomalies are
    multiplied by the same matrices: ubar_n - u_LS = dU_n^T w with w fixed (exactly). The ensemble collapses
    (C_n ~ (A^T Gamma^{-1} A)^{-1} / (2n)), hence the mean converges to u_LS, like n^{-1/2}: 16 times more
    iterations divide the error by about 4."""
    J = 3 * P
    A = _well_conditioned(rng, M, P)
    u_true = rng.standard_normal(P)
    S = np.eye(M) if noise_kind == "scalar" else random_spd(rng, M, condition=5.0)
    L = np.linalg.cholesky(S)
    y = A @ u_true + 0.5 * L @ rng.standard_normal(M)
    noise = 1.0 if noise_kind == "scalar" else S
    u_ls = np.linalg.lstsq(np.linalg.solve(L, A), np.linalg.solve(L, y), rcond=None)[0]

    U = _full_rank_ensemble(rng, J, P, u_true, 2.0)
    w = _mean_error_coefficients(U, u_ls)
    e0 = np.linalg.norm(U.mean(axis=0) - u_ls)
    errors, spreads = {}, {}
    for n in range(1, 1601):
        U = ekinet.kalman_update(U, U @ A.T, y, noise, formulation=formulation)
        if n in (100, 1600):
            error = U.mean(axis=0) - u_ls
            errors[n], spreads[n] = np.linalg.norm(error) / e0, ekinet.ensemble_spread(U)
            dU = U - U.mean(axis=0)
            assert np.linalg.norm(error - dU.T @ w) <= 1e-8 * np.linalg.norm(error)
    assert 8 < spreads[100] / spreads[1600] < 32  # collapse like 1/n
    assert 3.0 < errors[100] / errors[1600] < 5.0, errors  # the mean converges like n^{-1/2}
    assert errors[1600] < 0.05, errors
    # the limit is the least-squares point, not the truth (the data noise moved them apart)
    if M > P:
        assert np.linalg.norm(U.mean(axis=0) - u_ls) < 0.5 * np.linalg.norm(u_ls - u_true)


def test_linear_eki_stays_in_a_deficient_initial_span(rng):
    """With J <= P the limit is the least-squares point within ubar_0 + span (here a line, J = 2, P = 3): the
    mean error stays a fixed combination of the collapsing anomalies."""
    P, M = 3, 6
    A = _well_conditioned(rng, M, P)
    y = rng.standard_normal(M)
    U = rng.standard_normal((2, P))
    ubar0, d = U.mean(axis=0), U[0] - U.mean(axis=0)
    t = np.linalg.lstsq((A @ d)[:, None], y - A @ ubar0, rcond=None)[0]
    u_line = ubar0 + t * d  # least squares over ubar0 + t d
    w = _mean_error_coefficients(U, u_line)
    e0 = np.linalg.norm(U.mean(axis=0) - u_line)
    for _ in range(400):
        U = ekinet.kalman_update(U, U @ A.T, y, 1.0)
    error = U.mean(axis=0) - u_line
    dU = U - U.mean(axis=0)
    assert np.linalg.norm(error - dU.T @ w) <= 1e-8 * max(np.linalg.norm(error), 1e-300)
    assert np.linalg.norm(error) < 0.1 * e0
    assert orthogonal_complement_residual(U, ubar0, d[None, :]) < 1e-12
    u_ls = np.linalg.lstsq(A, y, rcond=None)[0]
    assert np.linalg.norm(U.mean(axis=0) - u_ls) > 0.1  # the unrestricted minimiser is not reachable


@pytest.mark.parametrize("backend", ["native", "reference"])
@pytest.mark.parametrize("formulation", FORMULATIONS)
@pytest.mark.parametrize("step", [0.3, 1.0])
def test_linear_update_is_exactly_the_ridge_solution_of_the_ensemble_prior(step, formulation, backend, rng):
    """For G(u) = A u and no perturbation, u_j' = u_j + C A^T (A C A^T + Gamma/h)^{-1} (y - A u_j) with C the
    ensemble covariance (1/J): by Woodbury, u_j' = argmin_u h |y - A u|^2_Gamma + |u - u_j|^2_{C^{-1}}
    (Tikhonov / ridge / Gaussian posterior mean) when C is invertible (J > P)."""
    J, P, M = 12, 4, 7
    A = rng.standard_normal((M, P))
    y = rng.standard_normal(M)
    Gamma = 0.2 * random_spd(rng, M)
    U = _full_rank_ensemble(rng, J, P, 0.0, 1.0)
    got = ekinet.kalman_update(U, U @ A.T, y, Gamma, step=step, formulation=formulation, backend=backend)
    dU = U - U.mean(axis=0)
    C = dU.T @ dU / J
    Ci = np.linalg.inv(C)
    H = Ci + step * A.T @ np.linalg.solve(Gamma, A)
    expected = np.linalg.solve(H, (U @ Ci + step * (A.T @ np.linalg.solve(Gamma, y))[None, :]).T).T
    assert_update_close(got, expected, U, RTOL64, "Kalman update vs ridge solution")


def test_perturbed_update_of_a_large_gaussian_ensemble_samples_the_posterior(rng):
    """One perturbed-observation update (h = 1) of J = 20000 draws of N(m0, C0) through a linear model: the
    updated ensemble's mean and covariance approximate the Gaussian posterior's (Monte-Carlo error about
    1/sqrt(J) = 0.007 of the prior scale; tolerances of 0.05 are 7 standard errors)."""
    J, P, M = 20000, 3, 5
    A = rng.standard_normal((M, P))
    m0 = np.array([0.5, -1.0, 2.0])
    C0 = random_spd(rng, P, condition=4.0)
    Gamma = 0.5 * np.eye(M)
    y = rng.standard_normal(M)
    U = m0 + rng.standard_normal((J, P)) @ np.linalg.cholesky(C0).T
    post = ekinet.kalman_update(U, U @ A.T, y, Gamma, rng=7)
    S = A @ C0 @ A.T + Gamma
    mean_post = m0 + C0 @ A.T @ np.linalg.solve(S, y - A @ m0)
    cov_post = C0 - C0 @ A.T @ np.linalg.solve(S, A @ C0)
    scale = np.sqrt(np.max(np.diag(C0)))
    assert np.max(np.abs(post.mean(axis=0) - mean_post)) < 0.05 * scale
    assert np.max(np.abs(np.cov(post.T, bias=True) - cov_post)) < 0.05 * scale**2
    # the deterministic update under-spreads (covariance (I - K A) C (I - K A)^T), the perturbed one does not
    det = ekinet.kalman_update(U, U @ A.T, y, Gamma)
    assert np.trace(np.cov(det.T)) < np.trace(cov_post) - 0.05 * scale**2


# --------------------------------------------------------------------------------------------------------------
# the counter-based generator
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("formulation", FORMULATIONS)
@pytest.mark.parametrize("backend", ["native", "reference"])
def test_seeded_perturbation_is_reproducible(backend, formulation, rng):
    U, G, y = make_problem(8, 5, 6, rng)
    kw = dict(formulation=formulation, backend=backend, step=0.5)
    a = ekinet.kalman_update(U, G, y, 0.2, rng=3, **kw)
    b = ekinet.kalman_update(U, G, y, 0.2, rng=3, **kw)
    c = ekinet.kalman_update(U, G, y, 0.2, rng=4, **kw)
    d = ekinet.kalman_update(U, G, y, 0.2, **kw)
    np.testing.assert_array_equal(a, b)
    assert np.max(np.abs(a - c)) > 1e-3
    assert np.max(np.abs(a - d)) > 1e-3
    # a numpy Generator: same state, same result; it is advanced by each call
    g1, g2 = np.random.default_rng(9), np.random.default_rng(9)
    e = ekinet.kalman_update(U, G, y, 0.2, rng=g1, **kw)
    np.testing.assert_array_equal(e, ekinet.kalman_update(U, G, y, 0.2, rng=g2, **kw))
    assert np.max(np.abs(e - ekinet.kalman_update(U, G, y, 0.2, rng=g1, **kw))) > 1e-3


def test_native_and_reference_use_the_same_perturbations(rng):
    """Native and reference with the same seed agree (float64, seeded eta), which needs the same draws."""
    U, G, y = make_problem(9, 4, 7, rng)
    for seed in (0, 1, 2**40 + 3, 2**63 - 1):
        a = ekinet.kalman_update(U, G, y, 0.3, rng=seed, backend="native")
        b = ekinet.kalman_update(U, G, y, 0.3, rng=seed, backend="reference")
        assert_update_close(a, b, U, RTOL64, f"seed {seed}")


INDICES = np.concatenate([np.arange(300, dtype=np.uint64),
                          np.array([2**32 - 1, 2**32, 2**53 + 1, 2**63, 2**64 - 1], dtype=np.uint64),
                          np.random.default_rng(0).integers(0, 2**63, 200, dtype=np.uint64)])


@pytest.mark.parametrize("stream", [1, 2, 3])
@pytest.mark.parametrize("seed", [0, 1, 12345, 2**63 - 1, 2**64 - 1])
def test_core_standard_normal_equals_reference(seed, stream):
    core = np.array([_core.standard_normal(seed, stream, int(i)) for i in INDICES])
    reference = ekinet.reference.rng.standard_normal(np, seed, stream, INDICES)
    np.testing.assert_allclose(core, reference, rtol=1e-13, atol=1e-14)
    # and the same as the pure-Python transcription of random.hpp's comment
    for i in INDICES[::37]:
        assert core[list(INDICES).index(i)] == pytest.approx(counter_normal_int(seed, stream, int(i)), rel=1e-13,
                                                              abs=1e-14)


def test_draws_look_standard_normal():
    """1e5 draws of one stream: mean 0 and standard deviation 1 (standard errors 0.0032 and 0.0022; the
    tolerances are > 6 of them), the 1.96 quantile, kurtosis 3; streams and seeds are uncorrelated."""
    z = counter_normals(42, 1, 100, 1000).ravel()
    ref = ekinet.reference.rng.normal_matrix(np, 42, 1, 100, 1000).ravel()
    np.testing.assert_allclose(ref, z, rtol=1e-13, atol=1e-14)
    assert abs(z.mean()) < 0.02
    assert abs(z.std() - 1.0) < 0.015
    assert abs(np.mean(np.abs(z) < 1.959964) - 0.95) < 0.005
    assert abs(np.mean(z**4) - 3.0) < 0.1
    assert abs(np.corrcoef(z[:-1], z[1:])[0, 1]) < 0.02
    other_stream = counter_normals(42, 2, 100, 1000).ravel()
    other_seed = counter_normals(43, 1, 100, 1000).ravel()
    assert abs(np.corrcoef(z, other_stream)[0, 1]) < 0.02
    assert abs(np.corrcoef(z, other_seed)[0, 1]) < 0.02
    assert np.all(np.isfinite(z)) and np.max(np.abs(z)) < 7


def test_native_draws_look_standard_normal():
    """The native generator's draws (through randomize of a zero ensemble: out = 0 + 1 * z, stream 3) are the
    counter-based draws and look standard normal."""
    z = ekinet.randomize(np.zeros((200, 500)), 1.0, rng=5, backend="native")
    np.testing.assert_allclose(z, counter_normals(5, 3, 200, 500), rtol=1e-13, atol=1e-14)
    assert abs(z.mean()) < 0.02
    assert abs(z.std() - 1.0) < 0.015
    assert abs(np.mean(z.mean(axis=0) ** 2) * 200 - 1.0) < 0.3  # column means have variance 1/J


# --------------------------------------------------------------------------------------------------------------
# failed members
# --------------------------------------------------------------------------------------------------------------


def _with_failures(G, rows=(2, 5)):
    G = G.copy()
    G[rows[0], 1] = np.nan
    G[rows[1], :] = np.inf
    return G


@pytest.mark.parametrize("perturbation", PERTURBATIONS)
@pytest.mark.parametrize("noise_kind", NOISE_KINDS)
@pytest.mark.parametrize("formulation", ["auto", *FORMULATIONS])
def test_failed_members_native_equals_reference(formulation, noise_kind, perturbation, rng):
    J, P, M = 9, 6, 5
    U, G, y = make_problem(J, P, M, rng)
    G = _with_failures(G)
    noise = make_noise(noise_kind, M, rng)
    kwargs = perturbation_kwargs(perturbation, J, M, rng)
    native, info = ekinet.kalman_update(U, G, y, noise, formulation=formulation, backend="native",
                                        return_info=True, **kwargs)
    reference, rinfo = ekinet.kalman_update(U, G, y, noise, formulation=formulation, backend="reference",
                                            return_info=True, **kwargs)
    assert info["failed_members"] == 2 and rinfo["failed_members"] == 2
    assert info["formulation"] == "ensemble"  # failed members are re-drawn in ensemble space
    assert np.all(np.isfinite(native))
    assert_update_close(native, reference, U, RTOL64, "failed members: native vs reference")


@pytest.mark.parametrize("backend", ["native", "reference"])
@pytest.mark.parametrize("perturbation", ["none", "given"])
@pytest.mark.parametrize("noise_kind", NOISE_KINDS)
def test_failed_members_are_dropped_and_redrawn(noise_kind, perturbation, backend, rng):
    J, P, M = 10, 8, 6
    U, G, y = make_problem(J, P, M, rng)
    failed = [2, 5]
    survivors = [j for j in range(J) if j not in failed]
    G_bad = _with_failures(G, failed)
    noise = make_noise(noise_kind, M, rng)
    kwargs = perturbation_kwargs(perturbation, J, M, rng)
    got = ekinet.kalman_update(U, G_bad, y, noise, backend=backend, **kwargs)
    kwargs_s = {"perturbation": kwargs["perturbation"][survivors]} if kwargs else {}
    alone = ekinet.kalman_update(U[survivors], G[survivors], y, noise, backend=backend, **kwargs_s)
    # the survivors' update is the update of the survivors alone: the failed rows did not poison it
    assert_update_close(got[survivors], alone, U[survivors], RTOL64, "survivors vs survivors alone")
    # the re-drawn members are finite, distinct, and lie in the affine span of the updated survivors
    redrawn = got[failed]
    assert np.all(np.isfinite(redrawn))
    assert np.linalg.norm(redrawn[0] - redrawn[1]) > 1e-6
    assert np.min(np.linalg.norm(redrawn - U[failed], axis=1)) > 1e-6
    mean_s = alone.mean(axis=0)
    assert orthogonal_complement_residual(redrawn, mean_s, alone - mean_s) < 1e-10 * np.max(np.abs(U))
    # their spread is that of the survivors (re-drawn "around" them): within a factor of 10
    spread_s = np.sqrt(ekinet.ensemble_spread(alone))
    distance = np.linalg.norm(redrawn - mean_s, axis=1)
    assert np.all(distance < 10 * spread_s) and np.all(distance > 0.01 * spread_s)


@pytest.mark.parametrize("backend", ["native", "reference"])
def test_redraw_depends_on_the_seed(backend, rng):
    U, G, y = make_problem(8, 5, 4, rng)
    G = _with_failures(G)
    eta = 0.1 * rng.standard_normal((8, 4))
    a = ekinet.kalman_update(U, G, y, 0.5, backend=backend, perturbation=eta)
    b = ekinet.kalman_update(U, G, y, 0.5, backend=backend, perturbation=eta)
    np.testing.assert_array_equal(a, b)
    c = ekinet.kalman_update(U, G, y, 0.5, backend=backend, rng=1)
    d = ekinet.kalman_update(U, G, y, 0.5, backend=backend, rng=2)
    assert np.max(np.abs(c[[2, 5]] - d[[2, 5]])) > 1e-6


@pytest.mark.parametrize("backend", ["native", "reference"])
def test_unperturbed_update_takes_its_redraws_from_the_rng(backend, rng):
    U, G, y = make_problem(8, 5, 4, rng)
    plain = ekinet.kalman_update(U, G, y, 0.5, backend=backend)
    np.testing.assert_allclose(ekinet.kalman_update(U, G, y, 0.5, backend=backend, rng=3, perturb=False), plain,
                               rtol=1e-12, atol=1e-12)
    G = _with_failures(G)
    c = ekinet.kalman_update(U, G, y, 0.5, backend=backend, rng=1, perturb=False)
    d = ekinet.kalman_update(U, G, y, 0.5, backend=backend, rng=2, perturb=False)
    assert np.max(np.abs(c[[2, 5]] - d[[2, 5]])) > 1e-6
    np.testing.assert_array_equal(np.delete(c, [2, 5], axis=0), np.delete(d, [2, 5], axis=0))
    with pytest.raises(ValueError, match="perturb=False means no eta, but a perturbation was given"):
        ekinet.kalman_update(U, G, y, 0.5, backend=backend, perturbation=np.zeros((8, 4)), perturb=False)


@pytest.mark.parametrize("backend", ["native", "reference"])
def test_failed_members_raise_when_asked(backend, rng):
    U, G, y = make_problem(6, 3, 4, rng)
    G[3, 2] = np.nan
    with pytest.raises(ValueError, match=r"\bG\b.*NaN/Inf"):
        ekinet.kalman_update(U, G, y, 1.0, backend=backend, on_failure="raise")


@pytest.mark.parametrize("backend", ["native", "reference"])
@pytest.mark.parametrize("n_failed", [5, 6])
def test_fewer_than_two_survivors_raise_floating_point_error(n_failed, backend, rng):
    U, G, y = make_problem(6, 3, 4, rng)
    G[:n_failed, 0] = np.nan
    with pytest.raises(FloatingPointError, match=r"at least 2"):
        ekinet.kalman_update(U, G, y, 1.0, backend=backend)


def test_numerical_error_is_a_floating_point_error(rng):
    assert issubclass(ekinet.NumericalError, FloatingPointError)
    U, G, y = make_problem(4, 3, 4, rng)
    G[1:, :] = np.inf
    with pytest.raises(ekinet.NumericalError, match=r"only 1 of 4 members"):
        ekinet.kalman_update(U, G, y, 1.0, backend="native")


# --------------------------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------------------------

BACKENDS = ["native", "reference"]


@pytest.fixture
def problem(rng):
    return make_problem(5, 4, 3, rng)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("change,match", [
    (lambda U, G, y: (U, G[:4], y), r"\bG has shape \(4, 3\)"),
    (lambda U, G, y: (U, G[:, :, None], y), r"\bG has shape"),
    (lambda U, G, y: (U, G, y[:2]), r"\by has shape \(2,\)"),
    (lambda U, G, y: (U, G, np.ones((3, 1))), r"\by has shape"),
    (lambda U, G, y: (U[None], G, y), r"\bU has shape"),
    (lambda U, G, y: (U[:1], G[:1], y), r"\bU has 1 member"),
], ids=["G-rows", "G-3d", "y-length", "y-2d", "U-3d", "J-is-1"])
def test_shape_errors(change, match, backend, problem):
    U, G, y = change(*problem)
    with pytest.raises(ValueError, match=match):
        ekinet.kalman_update(U, G, y, 1.0, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("noise_cov,match", [
    (np.ones(4), r"noise_cov has shape \(4,\)"),
    (np.eye(4), r"noise_cov has shape \(4, 4\)"),
    (np.ones((3, 4)), r"noise_cov has shape \(3, 4\)"),
    (np.ones((3, 3, 3)), r"noise_cov has shape"),
])
def test_noise_shape_errors(noise_cov, match, backend, problem):
    U, G, y = problem
    with pytest.raises(ValueError, match=match):
        ekinet.kalman_update(U, G, y, noise_cov, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_asymmetric_or_non_numeric_noise_cov_is_refused(backend, problem):
    """The native solve reads one triangle of Gamma and the reference both: an asymmetric matrix would give
    backend-dependent answers, so it is refused; rounding-level asymmetry is not. Strings and None are not
    variances (a string "0.1" must not pass as one)."""
    U, G, y = problem
    M = G.shape[1]
    gamma = np.eye(M)
    gamma[0, 1] = 0.9
    with pytest.raises(ValueError, match=r"noise_cov is not symmetric: 1 pairs \(i, j\) differ"):
        ekinet.kalman_update(U, G, y, gamma, backend=backend)
    tiny = np.diag([1.0] + [1e-8] * (M - 1))  # relative to its own diagonal, not to the largest entry
    tiny[1, 0] = 1e-10
    with pytest.raises(ValueError, match=r"noise_cov is not symmetric"):
        ekinet.kalman_update(U, G, y, tiny, backend=backend)
    nearly = np.eye(M) * 2.0
    nearly[0, 1] = 1e-12
    ekinet.kalman_update(U, G, y, nearly, backend=backend)
    for bad in ("abc", "0.1", None):
        with pytest.raises(TypeError, match=r"noise_cov = .* has dtype"):
            ekinet.kalman_update(U, G, y, bad, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_perturbation_shape_error(backend, problem):
    U, G, y = problem
    with pytest.raises(ValueError, match=r"perturbation has shape \(5, 2\)"):
        ekinet.kalman_update(U, G, y, 1.0, perturbation=np.zeros((5, 2)), backend=backend)
    with pytest.raises(ValueError, match=r"perturbation has shape \(4, 3\)"):
        ekinet.kalman_update(U, G, y, 1.0, perturbation=np.zeros((4, 3)), backend=backend)
    with pytest.raises(ValueError, match=r"perturbation.*rng|rng.*perturbation"):
        ekinet.kalman_update(U, G, y, 1.0, perturbation=np.zeros((5, 3)), rng=1, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dtype_errors(backend, problem):
    U, G, y = problem
    with pytest.raises(TypeError, match=r"\bU has dtype int64"):
        ekinet.kalman_update(np.arange(20).reshape(5, 4), G, y, 1.0, backend=backend)
    with pytest.raises(TypeError, match=r"\bG has dtype float64 but U is float32"):
        ekinet.kalman_update(U.astype(np.float32), G, y, 1.0, backend=backend)
    with pytest.raises(TypeError, match=r"\bG has dtype int64"):
        ekinet.kalman_update(U, np.ones((5, 3), dtype=np.int64), y, 1.0, backend=backend)
    with pytest.raises(TypeError, match=r"perturbation has dtype float32 but U is float64"):
        ekinet.kalman_update(U, G, y, 1.0, perturbation=np.zeros((5, 3), np.float32), backend=backend)
    with pytest.raises(TypeError, match=r"\by has dtype"):
        ekinet.kalman_update(U, G, np.array(["a", "b", "c"]), 1.0, backend=backend)
    with pytest.raises(TypeError, match=r"\brng\b"):
        ekinet.kalman_update(U, G, y, 1.0, rng="seed", backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_inputs_are_rejected(bad, backend, problem):
    U, G, y = problem
    U_bad = U.copy()
    U_bad[1, 2] = bad
    with pytest.raises(ValueError, match=r"\bU contains 1 NaN/Inf"):
        ekinet.kalman_update(U_bad, G, y, 1.0, backend=backend)
    y_bad = y.copy()
    y_bad[0] = bad
    with pytest.raises(ValueError, match=r"\by contains 1 NaN/Inf"):
        ekinet.kalman_update(U, G, y_bad, 1.0, backend=backend)
    eta = np.zeros((5, 3))
    eta[4, 0] = bad
    with pytest.raises(ValueError, match=r"perturbation contains 1 NaN/Inf"):
        ekinet.kalman_update(U, G, y, 1.0, perturbation=eta, backend=backend)
    with pytest.raises(ValueError, match=r"noise_cov"):
        ekinet.kalman_update(U, G, y, np.array([1.0, bad, 1.0]), backend=backend)
    with pytest.raises(ValueError, match=r"noise_cov"):
        ekinet.kalman_update(U, G, y, bad if bad > 0 else -bad, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_noise_must_be_positive_definite(backend, problem, rng):
    U, G, y = problem
    Q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    indefinite = (Q * np.array([1.0, 0.5, -0.1])) @ Q.T
    with pytest.raises(ValueError, match=r"noise_cov.*positive definite"):
        ekinet.kalman_update(U, G, y, indefinite, backend=backend)
    with pytest.raises(ValueError, match=r"noise_cov.*positive definite"):
        ekinet.kalman_update(U, G, y, np.zeros((3, 3)), backend=backend)
    for diagonal in ([1.0, 0.0, 1.0], [1.0, -2.0, 1.0]):
        with pytest.raises(ValueError, match=r"noise_cov.*positive"):
            ekinet.kalman_update(U, G, y, np.array(diagonal), backend=backend)
    for scalar in (0.0, -1.0, np.float64(-3.0), np.array(-1.0)):
        with pytest.raises(ValueError, match=r"noise_cov.*positive"):
            ekinet.kalman_update(U, G, y, scalar, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("step", [0.0, -1.0, np.inf, np.nan])
def test_step_must_be_positive(step, backend, problem):
    U, G, y = problem
    with pytest.raises(ValueError, match=r"step"):
        ekinet.kalman_update(U, G, y, 1.0, step=step, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_unknown_options(backend, problem):
    U, G, y = problem
    with pytest.raises(ValueError, match=r"formulation = 'woodbury'"):
        ekinet.kalman_update(U, G, y, 1.0, formulation="woodbury", backend=backend)
    with pytest.raises(ValueError, match=r"on_failure = 'ignore'"):
        ekinet.kalman_update(U, G, y, 1.0, on_failure="ignore", backend=backend)
    with pytest.raises(ValueError, match=r"rng = -1"):
        ekinet.kalman_update(U, G, y, 1.0, rng=-1, backend=backend)


def test_unknown_backend(problem):
    U, G, y = problem
    with pytest.raises(ValueError, match=r"backend = 'gpu'"):
        ekinet.kalman_update(U, G, y, 1.0, backend="gpu")


def _native_call(ctx, U, G, y, U_out, *, eta=None, formulation="auto", on_failure="redraw", step=1.0,
                 output="ensemble"):
    return _core.kalman_update(ctx, view(U), view(G), view(y), "scalar", 1.0, None,
                               None if eta is None else view(eta), None, step, formulation, on_failure, 0, output,
                               view(U_out))


def test_native_layer_checks_its_arguments(cpu_context, problem):
    """The C++ core validates on its own (the Python layer is not the only guard)."""
    U, G, y = problem
    out = np.empty_like(U)
    report = _native_call(cpu_context, U, G, y, out)
    assert report["formulation"] in ("ensemble", "observation")
    np.testing.assert_allclose(out, ekinet.kalman_update(U, G, y, 1.0, backend="reference"), rtol=1e-12)
    with pytest.raises(ValueError, match=r"kalman_update: G has shape \(4, 3\) but \(5, 3\)"):
        _native_call(cpu_context, U, np.ascontiguousarray(G[:4]), y, out)
    with pytest.raises(ValueError, match=r"kalman_update: y has shape \(1, 2\)"):
        _native_call(cpu_context, U, G, np.ascontiguousarray(y[:2]), out)
    with pytest.raises(ValueError, match=r"U_out has shape"):
        _native_call(cpu_context, U, G, y, np.empty((5, 3)))
    with pytest.raises(ValueError, match=r"U_out has shape \(5, 4\) but \(1, 4\) was expected \(one row for the mean"):
        _native_call(cpu_context, U, G, y, out, output="mean")
    with pytest.raises(ValueError, match=r"U_out \(the updated mean\) shares memory with U"):
        _native_call(cpu_context, U, G, y, U[:1], output="mean")
    with pytest.raises(ValueError, match=r"U_out shares memory with U without being the same array"):
        rows = np.vstack([U, U[-1:]])  # U_out one row below U in one buffer
        _native_call(cpu_context, rows[:-1], G, y, rows[1:])
    with pytest.raises(ValueError, match=r"output = 'x'"):
        _native_call(cpu_context, U, G, y, out, output="x")
    with pytest.raises(ValueError, match=r"perturbation has shape"):
        _native_call(cpu_context, U, G, y, out, eta=np.zeros((5, 2)))
    with pytest.raises(TypeError, match=r"\bG has dtype float32 but the ensemble is float64"):
        _native_call(cpu_context, U, G.astype(np.float32), y, out)
    with pytest.raises(TypeError, match=r"U_out has dtype float32"):
        _native_call(cpu_context, U, G, y, out.astype(np.float32))
    with pytest.raises(ValueError, match=r"formulation = 'x'"):
        _native_call(cpu_context, U, G, y, out, formulation="x")
    with pytest.raises(ValueError, match=r"on_failure = 'x'"):
        _native_call(cpu_context, U, G, y, out, on_failure="x")
    with pytest.raises(ValueError, match=r"step"):
        _native_call(cpu_context, U, G, y, out, step=-1.0)
    with pytest.raises(ValueError, match=r"U has 1 member"):
        _native_call(cpu_context, U[:1], G[:1], y, out[:1])
    with pytest.raises(TypeError, match=r"unsupported dtype int64"):
        _core.View(0, "int64", "cpu", 0, 1, 1, 1, None)
    with pytest.raises(ValueError, match=r"noise_cov.*positive definite"):
        M = G.shape[1]
        _core.kalman_update(cpu_context, view(U), view(G), view(y), "full", 0.0, view(-np.eye(M)), None, None, 1.0,
                            "auto", "redraw", 0, "ensemble", view(out))


# --------------------------------------------------------------------------------------------------------------
# the inputs are not modified
# --------------------------------------------------------------------------------------------------------------


def test_native_view_keeps_its_array_alive(cpu_context):
    """A view passed to the core holds its array: a temporary (view(np.ascontiguousarray(a)) as an argument)
    is not freed, and its memory not reused by the next allocation, before the call reads it. Found on a GPU,
    where CuPy's pool handed a dead ensemble's memory to the next argument."""
    array = np.arange(6.0).reshape(2, 3)
    alive = weakref.ref(array)
    native = view(array)
    del array
    gc.collect()
    assert alive() is not None
    del native
    gc.collect()
    assert alive() is None
    mean = np.empty((1, 3))
    _core.ensemble_mean(cpu_context, view(np.ascontiguousarray(np.arange(6.0).reshape(3, 2).T)), view(mean))
    np.testing.assert_array_equal(mean, [[0.5, 2.5, 4.5]])


def test_native_view_of_numpy_layouts(cpu_context):
    """view() reads a NumPy array's layout in C++ (_core.host_view): rows at a stride longer than a row, a 1-D
    array as one row; and it refuses what the core cannot take, naming the problem."""
    mean = np.empty((1, 2))
    _core.ensemble_mean(cpu_context, view(np.arange(12.0).reshape(3, 4)[:, 1:3]), view(mean))  # row stride 4
    np.testing.assert_array_equal(mean, [[5.0, 6.0]])
    row = np.empty(3)
    _core.ensemble_mean(cpu_context, view(np.array([1.0, 2.0, 3.0])), view(row))  # 1-D in and out: one row
    np.testing.assert_array_equal(row, [1.0, 2.0, 3.0])
    with pytest.raises(TypeError, match=r"unsupported dtype int32"):
        view(np.zeros((2, 2), np.int32))
    with pytest.raises(ValueError, match=r"contiguous rows"):
        view(np.zeros((2, 6))[:, ::2])
    with pytest.raises(ValueError, match=r"1-D or 2-D"):
        view(np.zeros((2, 2, 2)))


class _CupyLike:
    """The attributes of a CuPy array that _core.device_view reads, over a NumPy array's memory."""

    def __init__(self, array, device):
        self.shape, self.strides, self.dtype = array.shape, array.strides, array.dtype
        self.data = types.SimpleNamespace(ptr=array.__array_interface__["data"][0])
        self.device = types.SimpleNamespace(id=device)


def test_native_device_view_reads_cupy_attributes(cpu_context):
    """_core.device_view (view() of a CuPy array) reads the layout, dtype and device from the array's attributes:
    the core then names the device (here against a CPU context), and the view refuses what the core cannot take."""
    with pytest.raises(ValueError, match=r"U is on cuda:3 but the context runs on cpu"):
        _core.ensemble_mean(cpu_context, _core.device_view(_CupyLike(np.zeros((3, 2)), 3)), view(np.empty((1, 2))))
    with pytest.raises(TypeError, match=r"unsupported dtype int64"):
        _core.device_view(_CupyLike(np.zeros((2, 2), np.int64), 0))
    with pytest.raises(ValueError, match=r"contiguous rows"):
        _core.device_view(_CupyLike(np.zeros((2, 6))[:, ::2], 0))
    with pytest.raises(ValueError, match=r"1-D or 2-D"):
        _core.device_view(_CupyLike(np.zeros((2, 2, 2)), 0))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("formulation", ["auto", *FORMULATIONS])
@pytest.mark.parametrize("case", ["plain", "seeded", "failed", "full-noise"])
def test_inputs_are_not_modified(case, formulation, backend, rng):
    J, P, M = 7, 5, 4
    U, G, y = make_problem(J, P, M, rng)
    noise = random_spd(rng, M) if case == "full-noise" else 0.5
    if case == "failed":
        G[3] = np.nan
    eta = 0.1 * rng.standard_normal((J, M))
    copies = [a.copy() for a in (U, G, y, eta, np.asarray(noise))]
    kw = {"rng": 3} if case == "seeded" else {"perturbation": eta}
    out = ekinet.kalman_update(U, G, y, noise, formulation=formulation, backend=backend, **kw)
    assert out is not U and not np.shares_memory(out, U)
    for original, copy in zip((U, G, y, eta, np.asarray(noise)), copies):
        np.testing.assert_array_equal(original, copy)
    assert np.max(np.abs(out - U)) > 0


def test_non_contiguous_and_fortran_inputs(rng):
    """Strided and column-major inputs give the same result as contiguous ones."""
    J, P, M = 6, 5, 4
    U, G, y = make_problem(J, P, M, rng)
    expected = ekinet.kalman_update(U, G, y, 0.4)
    U_f, G_f = np.asfortranarray(U), np.asfortranarray(G)
    assert_update_close(ekinet.kalman_update(U_f, G_f, y, 0.4), expected, U, RTOL64, "fortran")
    big = np.zeros((J, 2 * P))
    big[:, ::2] = U
    wide_y = np.zeros(2 * M)
    wide_y[::2] = y
    assert_update_close(ekinet.kalman_update(big[:, ::2], G, wide_y[::2], 0.4), expected, U, RTOL64, "strided")
    assert_update_close(ekinet.kalman_update(U[::-1], G[::-1], y, 0.4), expected[::-1], U[::-1], RTOL64, "reversed")
    assert_update_close(ekinet.kalman_update(U.tolist(), G, y, 0.4), expected, U, RTOL64, "list")
    # rows that overlap (a sliding window) or repeat (a broadcast, row stride 0) are read as copies
    windows = np.lib.stride_tricks.sliding_window_view(np.arange(J + P, dtype=np.float64), P)[:J]
    assert_update_close(ekinet.kalman_update(windows, G, y, 0.4), ekinet.kalman_update(windows.copy(), G, y, 0.4),
                        windows, RTOL64, "overlapping rows")
    broadcast = np.broadcast_to(G[:1], G.shape)
    for backend in ("native", "reference"):
        np.testing.assert_allclose(ekinet.ensemble_mean(np.broadcast_to(U[:1], U.shape), backend=backend), U[0])
        assert ekinet.kalman_update(U, broadcast, y, 0.4, backend=backend).shape == U.shape


# --------------------------------------------------------------------------------------------------------------
# robustness: never a silent NaN
# --------------------------------------------------------------------------------------------------------------


def _finite_or_clear_error(U, G, y, noise, **kwargs):
    """The update either returns finite numbers (a rescue must come with an ekinet.NumericalWarning and be
    counted in the report) or raises a FloatingPointError / ValueError with a message."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            out, info = ekinet.kalman_update(U, G, y, noise, return_info=True, **kwargs)
        except (FloatingPointError, ValueError) as error:
            assert str(error)
            return "raised"
    assert np.all(np.isfinite(out)), f"non-finite result returned silently ({info}, warnings {caught})"
    rescued = info["cholesky_jitter_retries"] + info["eigen_fallbacks"]
    warned = any(issubclass(w.category, ekinet.NumericalWarning) for w in caught)
    assert bool(rescued) == warned
    return "finite"


@pytest.mark.parametrize("backend", BACKENDS)
def test_tiny_noise_rank_deficient_observation_space(backend, rng):
    """noise_cov = 1e-300 with M > J: C^ww + Gamma/h is numerically singular in observation space; the result is
    finite and the rescue is reported with a NumericalWarning."""
    U, G, y = make_problem(5, 8, 20, rng)
    with pytest.warns(ekinet.NumericalWarning, match=r"ill-conditioned"):
        out, info = ekinet.kalman_update(U, G, y, 1e-300, formulation="observation", backend=backend,
                                         return_info=True)
    assert np.all(np.isfinite(out))
    assert info["cholesky_jitter_retries"] + info["eigen_fallbacks"] >= 1
    # with (essentially) no noise the update fits the data in the ensemble's output space as well as it can:
    # the mean residual is the part of y - Gbar orthogonal to span(dG) (up to the jitter's bias)
    assert np.all(np.abs(out - U) < 1e3 * (1 + np.abs(U)))


def test_reference_cholesky_whose_solve_overflows_is_rescued_by_jitter():
    """As in the native solve (C++ RobustSpdSolve.CholeskyWhoseSolveOverflowsIsRescuedByJitter): Cholesky accepts
    the pivot sqrt(1e-30) of diag(1, 1e-30), but 1e10 / 1e-30 overflows float32, so the jittered system answers."""
    from ekinet.reference._common import new_report, robust_spd_solve

    report = new_report("observation", 1.0)
    x = robust_spd_solve(np.diag(np.float32([1, 1e-30])), np.float32([[1], [1e10]]), report)
    jitter = np.sqrt(np.finfo(np.float32).eps) * 0.5
    assert report["cholesky_jitter_retries"] == 1 and report["eigen_fallbacks"] == 0
    np.testing.assert_allclose(x[:, 0], [1 / (1 + jitter), 1e10 / jitter], rtol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("formulation", FORMULATIONS)
@pytest.mark.parametrize("dtype,noise,g_scale", [
    (np.float64, 1e-300, 1.0),
    (np.float64, 1e-320, 1.0),  # subnormal variance: 1/gamma overflows
    (np.float64, 1.0, 1e160),  # outputs so large that C^ww / K overflow
    (np.float32, 1e-30, 1.0),
    (np.float32, 1e-40, 1.0),  # Gamma^{-1/2} dG overflows float32 in ensemble space
    (np.float32, 1.0, 1e20),
    (np.float32, 1e-300, 1.0),
], ids=["f64-1e-300", "f64-1e-320", "f64-G1e160", "f32-1e-30", "f32-1e-40", "f32-G1e20", "f32-1e-300"])
def test_extreme_scales_never_return_nan_silently(dtype, noise, g_scale, formulation, backend, rng):
    U, G, y = make_problem(5, 8, 20, rng)
    U, G, y = U.astype(dtype), (g_scale * G).astype(dtype), y.astype(dtype)
    _finite_or_clear_error(U, G, y, noise, formulation=formulation, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("formulation", FORMULATIONS)
def test_collapsed_ensemble(formulation, backend, rng):
    """Identical members (dU = 0, dG = 0): the update is the identity, finite, with no rescue."""
    U = np.tile(rng.standard_normal(4), (5, 1))
    G = np.tile(rng.standard_normal(6), (5, 1))
    out = ekinet.kalman_update(U, G, np.zeros(6), 0.1, formulation=formulation, backend=backend)
    np.testing.assert_allclose(out, U, rtol=0, atol=1e-14)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("formulation", FORMULATIONS)
def test_overflowing_output_covariance_gives_the_right_update_or_raises(formulation, backend, rng):
    """Outputs of size 1e155 make C^ww (about 1e310) overflow float64 although the update is well defined:
    the Kalman update is invariant under (G, y, Gamma) -> (s G, s y, s^2 Gamma), so with s = 1e155 and
    Gamma = 1e300 it equals the update of (G, y, 1e-10), which is O(1). The library must either return that
    update or raise; returning U unchanged (a silently lost update) is wrong."""
    U, G, y = make_problem(5, 8, 20, rng)
    exact = ekinet.kalman_update(U, G, y, 1e-10, formulation=formulation, backend="reference")
    assert np.max(np.abs(exact - U)) > 0.1
    s = 1e155
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # NumPy's overflow warnings in the reference
        try:
            got = ekinet.kalman_update(U, s * G, s * y, 1e300, formulation=formulation, backend=backend)
        except FloatingPointError as error:
            assert "Kalman gain" in str(error) or "overflow" in str(error)
            return
    assert np.all(np.isfinite(got))
    assert np.max(np.abs(got - exact)) <= 1e-3 * np.max(np.abs(exact - U)), "update lost or wrong after overflow"

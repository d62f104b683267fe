"""Ensemble statistics, EKI(R) randomisation, and the EKI ask/tell optimiser and minimize() on a small black-box
problem (eki-math sections 3-6)."""

import numpy as np
import pytest
from conftest import counter_normals

import ekinet

BACKENDS = ["native", "reference"]

# --------------------------------------------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-13), (np.float32, 1e-5)])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("J,P", [(2, 1), (3, 7), (50, 4), (8, 300)])
def test_mean_and_spread(J, P, backend, dtype, rtol, rng):
    U = (3.0 + rng.standard_normal((J, P))).astype(dtype)
    U64 = U.astype(np.float64)
    mean = ekinet.ensemble_mean(U, backend=backend)
    assert mean.shape == (P,) and mean.dtype == dtype
    np.testing.assert_allclose(mean, U64.mean(axis=0), rtol=rtol)
    spread = ekinet.ensemble_spread(U, backend=backend)
    expected = np.trace(np.atleast_2d(np.cov(U64.T, bias=True)))
    assert spread == pytest.approx(expected, rel=10 * rtol)
    assert spread == pytest.approx(np.sum((U64 - U64.mean(axis=0)) ** 2) / J, rel=10 * rtol)


def test_mean_and_spread_native_equals_reference(rng):
    U = rng.standard_normal((9, 13))
    np.testing.assert_allclose(ekinet.ensemble_mean(U, backend="native"),
                               ekinet.ensemble_mean(U, backend="reference"), rtol=1e-14)
    assert ekinet.ensemble_spread(U, backend="native") == pytest.approx(
        ekinet.ensemble_spread(U, backend="reference"), rel=1e-13)
    assert ekinet.ensemble_spread(np.tile(U[0], (4, 1))) == 0.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_statistics_bad_input(backend):
    with pytest.raises(ValueError, match=r"\bU has 1 member"):
        ekinet.ensemble_mean(np.zeros((1, 3)), backend=backend)
    with pytest.raises(ValueError, match=r"\bU has shape \(3,\)"):
        ekinet.ensemble_spread(np.zeros(3), backend=backend)
    with pytest.raises(TypeError, match=r"\bU has dtype int64"):
        ekinet.ensemble_mean(np.zeros((3, 3), dtype=np.int64), backend=backend)
    for statistic in (ekinet.ensemble_mean, ekinet.ensemble_spread):
        with pytest.raises(ValueError, match=r"\bU contains 1 NaN/Inf"):
            statistic(np.array([[0.0, 1.0], [np.nan, 2.0], [3.0, 4.0]]), backend=backend)


# --------------------------------------------------------------------------------------------------------------
# randomisation
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("prior_std", [1.0, 0.3, "per-parameter"])
def test_randomize_is_mean_plus_scaled_draws(prior_std, backend, rng):
    """u_j <- ubar + scale * prior_std * z_j with z the randomisation stream (3) of the seed: the new mean is
    ubar plus the sample mean of the draws."""
    J, P = 6, 5
    U = rng.standard_normal((J, P))
    std = rng.uniform(0.1, 2.0, P) if prior_std == "per-parameter" else prior_std
    out = ekinet.randomize(U, 0.2, prior_std=std, rng=17, backend=backend)
    xi = np.asarray(std) * counter_normals(17, 3, J, P)
    np.testing.assert_allclose(out, U.mean(axis=0) + 0.2 * xi, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(out.mean(axis=0), U.mean(axis=0) + 0.2 * xi.mean(axis=0), rtol=1e-12, atol=1e-14)


def test_randomize_native_equals_reference(rng):
    U = rng.standard_normal((7, 4)).astype(np.float32)
    std = np.array([0.5, 1.0, 2.0, 0.1], dtype=np.float32)
    for seed in (0, 5, 2**62):
        a = ekinet.randomize(U, 0.3, prior_std=std, rng=seed, backend="native")
        b = ekinet.randomize(U, 0.3, prior_std=std, rng=seed, backend="reference")
        assert a.dtype == b.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    c = ekinet.randomize(U, 0.3, rng=1)
    d = ekinet.randomize(U, 0.3, rng=2)
    assert np.max(np.abs(c - d)) > 1e-3
    np.testing.assert_array_equal(c, ekinet.randomize(U, 0.3, rng=1))


@pytest.mark.parametrize("backend", BACKENDS)
def test_randomize_per_parameter_prior_std_scales_each_column(backend, rng):
    """J = 4000 members: each column's standard deviation is scale * prior_std[k] (standard error 1.1%; 6%
    tolerance)."""
    U = rng.standard_normal((4000, 4))
    std = np.array([0.01, 0.1, 1.0, 5.0])
    out = ekinet.randomize(U, 2.0, prior_std=std, rng=3, backend=backend)
    np.testing.assert_allclose(out.std(axis=0), 2.0 * std, rtol=0.06)
    assert np.all(np.abs(out.mean(axis=0) - U.mean(axis=0)) < 6 * 2.0 * std / np.sqrt(4000))


@pytest.mark.parametrize("backend", BACKENDS)
def test_randomize_with_given_xi(backend, rng):
    U = rng.standard_normal((5, 3))
    xi = rng.standard_normal((5, 3))
    out = ekinet.randomize(U, 0.7, xi=xi, backend=backend)
    np.testing.assert_allclose(out, U.mean(axis=0) + 0.7 * xi, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(ekinet.randomize(U, 0.0, rng=4, backend=backend), np.tile(U.mean(axis=0), (5, 1)),
                               rtol=1e-14)


@pytest.mark.parametrize("backend", BACKENDS)
def test_randomize_bad_input(backend, rng):
    U = rng.standard_normal((5, 3))
    U_copy = U.copy()
    with pytest.raises(ValueError, match=r"scale = -1"):
        ekinet.randomize(U, -1.0, backend=backend)
    with pytest.raises(ValueError, match=r"prior_std has 2 values"):
        ekinet.randomize(U, 1.0, prior_std=[1.0, 2.0], backend=backend)
    for std in (-1.0, [1.0, np.nan, 1.0], [1.0, 1.0, np.inf]):
        with pytest.raises(ValueError, match=r"prior_std holds 1 negative or non-finite"):
            ekinet.randomize(U, 1.0, prior_std=std, backend=backend)
    with pytest.raises(ValueError, match=r"scale = inf must be a non-negative finite number"):
        ekinet.randomize(U, np.inf, backend=backend)
    with pytest.raises(ValueError, match=r"scale = '0.3' must be a non-negative finite number"):
        ekinet.randomize(U, "0.3", backend=backend)
    assert ekinet.randomize(U, np.array(0.3), backend=backend).shape == U.shape  # a 0-d array is a number
    with pytest.raises(ValueError, match=r"xi contains 1 NaN/Inf"):
        ekinet.randomize(U, 1.0, xi=np.where(np.arange(15).reshape(5, 3) == 4, np.nan, 0.0), backend=backend)
    for seed in (-1, 2**64):
        with pytest.raises(ValueError, match=r"must be a seed in \[0, 2\*\*64\)"):
            ekinet.randomize(U, 1.0, rng=seed, backend=backend)
    fresh = [ekinet.randomize(U, 1.0, rng=None, backend=backend) for _ in range(2)]  # OS entropy: differs
    assert not np.array_equal(*fresh)
    with pytest.raises(ValueError, match=r"U has no columns"):
        ekinet.randomize(np.zeros((5, 0)), 1.0, backend=backend)
    with pytest.raises(ValueError, match=r"xi has shape \(5, 2\)"):
        ekinet.randomize(U, 1.0, xi=np.zeros((5, 2)), backend=backend)
    with pytest.raises(TypeError, match=r"xi has dtype float32"):
        ekinet.randomize(U, 1.0, xi=np.zeros((5, 3), np.float32), backend=backend)
    bad = U.copy()
    bad[0, 0] = np.inf
    with pytest.raises(ValueError, match=r"\bU contains 1 NaN/Inf"):
        ekinet.randomize(bad, 1.0, backend=backend)
    np.testing.assert_array_equal(U, U_copy)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("backend", BACKENDS)
def test_randomize_around_a_mean_draws_what_randomize_draws(backend, dtype, rng):
    """randomize(U) is randomize_around(mean of U): the same counter-based draws for the same seed."""
    U = rng.standard_normal((6, 5)).astype(dtype)
    std = rng.uniform(0.1, 2.0, 5)
    out = ekinet.randomize_around(U.mean(axis=0), 6, 0.4, prior_std=std, rng=9, backend=backend)
    assert out.shape == (6, 5) and out.dtype == dtype
    np.testing.assert_allclose(out, ekinet.randomize(U, 0.4, prior_std=std, rng=9, backend=backend),
                               rtol=10 * np.finfo(dtype).eps, atol=10 * np.finfo(dtype).eps)
    np.testing.assert_allclose(out, U.mean(axis=0) + 0.4 * std * counter_normals(9, 3, 6, 5),
                               rtol=10 * np.finfo(dtype).eps, atol=10 * np.finfo(dtype).eps)
    # more members than the mean came from: the first rows are the same draws
    more = ekinet.randomize_around(U.mean(axis=0), 9, 0.4, prior_std=std, rng=9, backend=backend)
    np.testing.assert_array_equal(more[:6], out)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("backend", BACKENDS)
def test_centred_draws_keep_the_mean_and_the_anomalies(backend, dtype, rng):
    """centred=True removes the draws' sample mean: the rows' mean is the given mean (randomize: the ensemble's
    mean), and the anomalies are those of the plain draws."""
    U = rng.standard_normal((7, 5)).astype(dtype)
    mean = U.mean(axis=0)
    std = rng.uniform(0.1, 2.0, 5)
    tolerance = dict(rtol=20 * np.finfo(dtype).eps, atol=20 * np.finfo(dtype).eps)
    plain = ekinet.randomize_around(mean, 7, 0.4, prior_std=std, rng=9, backend=backend)
    assert np.abs(plain.mean(axis=0) - mean).max() > 0.01  # the offset that centring removes
    for centred in (ekinet.randomize_around(mean, 7, 0.4, prior_std=std, rng=9, centred=True, backend=backend),
                    ekinet.randomize(U, 0.4, prior_std=std, rng=9, centred=True, backend=backend)):
        assert centred.dtype == dtype
        np.testing.assert_allclose(centred.mean(axis=0), mean, **tolerance)
        np.testing.assert_allclose(centred - centred.mean(axis=0), plain - plain.mean(axis=0), **tolerance)
    xi = rng.standard_normal((7, 5)).astype(dtype)
    given = ekinet.randomize(U, 0.4, xi=xi, centred=True, backend=backend)
    np.testing.assert_allclose(given, mean + 0.4 * (xi - xi.mean(axis=0)), **tolerance)


@pytest.mark.parametrize("backend", BACKENDS)
def test_randomize_around_bad_input(backend):
    mean = np.zeros(3)
    with pytest.raises(ValueError, match=r"mean has shape \(1, 3\); one value per parameter"):
        ekinet.randomize_around(mean[None], 4, 1.0, backend=backend)
    np.testing.assert_array_equal(ekinet.randomize_around(mean + 1, 1, 0.5, centred=True, backend=backend),
                                  [mean + 1])  # one member centred on the mean is the mean
    for members in (0, 2.7, True):
        with pytest.raises(ValueError, match=rf"members = {members!r} must be a positive integer"):
            ekinet.randomize_around(mean, members, 1.0, backend=backend)
    with pytest.raises(ValueError, match=r"scale = -1"):
        ekinet.randomize_around(mean, 4, -1.0, backend=backend)
    with pytest.raises(ValueError, match=r"prior_std has 2 values"):
        ekinet.randomize_around(mean, 4, 1.0, prior_std=[1.0, 2.0], backend=backend)
    with pytest.raises(TypeError, match=r"mean has dtype int64"):
        ekinet.randomize_around(np.zeros(3, np.int64), 4, 1.0, backend=backend)
    with pytest.raises(ValueError, match=r"\bmean contains 1 NaN/Inf"):
        ekinet.randomize_around(np.array([0.0, np.nan, 1.0]), 4, 1.0, backend=backend)


# --------------------------------------------------------------------------------------------------------------
# EKI on a black-box problem: y(t) = a exp(-b t) + c from 30 noisy points, u = (log a, log b, c)
# --------------------------------------------------------------------------------------------------------------

T_OBS = np.linspace(0.0, 5.0, 30)
TRUTH = np.array([np.log(2.0), np.log(0.7), 0.5])
NOISE_STD = 0.01


def decay(U):
    """The black box: (J, 3) parameters to (J, 30) outputs, in the parameters' dtype."""
    U = np.atleast_2d(U)
    V = U.astype(np.float64)
    return (np.exp(V[:, [0]]) * np.exp(-np.exp(V[:, [1]]) * T_OBS[None, :]) + V[:, [2]]).astype(U.dtype)


@pytest.fixture
def decay_problem():
    rng = np.random.default_rng(2024)
    y = decay(TRUTH)[0] + NOISE_STD * rng.standard_normal(T_OBS.size)
    U0 = 0.5 * rng.standard_normal((50, 3))
    return U0, y


def _misfit(u, y):
    r = decay(u)[0] - y
    return 0.5 * np.sum(r**2) / NOISE_STD**2


def _run(U0, y, iterations=30, **options):
    opt = ekinet.EKI(U0, noise_cov=NOISE_STD**2, rng=1, **options)
    misfits = [_misfit(opt.mean, y)]
    for _ in range(iterations):
        if opt.finished:
            break
        opt.tell(decay(opt.ask()), y)
        misfits.append(_misfit(opt.mean, y))
    return opt, np.array(misfits)


# factories: schedulers hold state (the controller's pseudo-time), so each test builds its own
CONFIGS = {
    "kalman-constant": lambda: dict(scheduler=ekinet.ConstantStep(1.0)),
    "kalman-deterministic-observation": lambda: dict(perturb=False, formulation="observation"),
    "kalman-controller": lambda: dict(scheduler=ekinet.DataMisfitController(terminal_time=1.0)),
    "loss-adaptive": lambda: dict(method="loss", scheduler=ekinet.AdaptiveStep(0.5)),
    "kalman-momentum": lambda: dict(momentum=True),
    "loss-momentum": lambda: dict(method="loss", scheduler=ekinet.AdaptiveStep(0.5), momentum=True),
    "kalman-randomized": lambda: dict(randomization=ekinet.Randomization(scale=0.01, every=5, decay=0.5)),
    "kalman-reference": lambda: dict(backend="reference"),
    "kalman-float32": lambda: dict(),
}


@pytest.mark.parametrize("config", list(CONFIGS))
def test_eki_fits_the_exponential_decay(config, decay_problem):
    """The mean-particle misfit falls by orders of magnitude (from about 1e5) to the noise level (the
    least-squares misfit of this data is about 10; M / 2 = 15) and the mean is near the truth."""
    U0, y = decay_problem
    if config == "kalman-float32":
        U0, y = U0.astype(np.float32), y.astype(np.float32)
    options = CONFIGS[config]()
    opt, misfits = _run(U0, y, **options)
    assert misfits[0] > 1e4
    assert misfits[-1] < 1e-3 * misfits[0], misfits
    assert misfits[-1] < 2 * T_OBS.size, misfits
    np.testing.assert_allclose(opt.mean, TRUTH, atol=0.05)
    assert np.all(np.isfinite(opt.ensemble))
    history = opt.history
    assert len(history) == len(misfits) - 1
    for n, record in enumerate(history):
        assert record["iteration"] == n
        assert record["step"] > 0 and record["spread"] >= 0
        assert {"best_loss", "best_member", "mean_member_loss", "formulation", "failed_members"} <= set(record)
        assert record["best_loss"] <= record["mean_member_loss"]
    # the best member of the last tell is a row of the ensemble that was evaluated
    assert opt.best.shape == (3,)
    assert history[-1]["best_loss"] < history[0]["best_loss"]
    arrays = opt.history_arrays()
    np.testing.assert_array_equal(arrays["step"], [r["step"] for r in history])


def test_history_records_step_spread_and_best_loss(decay_problem):
    U0, y = decay_problem
    opt = ekinet.EKI(U0, noise_cov=NOISE_STD**2, scheduler=ekinet.ConstantStep(0.5), rng=3)
    V = opt.ask()
    G = decay(V)
    opt.tell(G, y, mean_output=decay(V.mean(axis=0))[0])
    record = opt.history[0]
    assert record["mean_particle_loss"] == pytest.approx(_misfit(V.mean(axis=0), y), rel=1e-10)
    values = 0.5 * np.sum((G - y) ** 2, axis=1) / NOISE_STD**2
    assert record["step"] == 0.5
    assert record["spread"] == pytest.approx(ekinet.ensemble_spread(V), rel=1e-12)
    assert record["best_member"] == int(np.argmin(values))
    assert record["best_loss"] == pytest.approx(values.min(), rel=1e-10)
    assert record["mean_member_loss"] == pytest.approx(values.mean(), rel=1e-10)
    np.testing.assert_array_equal(opt.best, V[np.argmin(values)])


def test_data_misfit_controller_steps_and_stops(decay_problem):
    """h = min(max(M / (2 mean Phi), sqrt(M / (2 var Phi))), T - t): the first step from the prior misfits, the
    steps add up to the terminal time, then tell raises RuntimeError."""
    U0, y = decay_problem
    controller = ekinet.DataMisfitController(terminal_time=1.0)
    opt = ekinet.EKI(U0, noise_cov=NOISE_STD**2, scheduler=controller, rng=0)
    phi = 0.5 * np.sum((decay(U0) - y) ** 2, axis=1) / NOISE_STD**2
    M = T_OBS.size
    expected_first = min(max(M / (2 * phi.mean()), np.sqrt(M / (2 * phi.var()))), 1.0)
    for _ in range(100):
        if opt.finished:
            break
        opt.tell(decay(opt.ask()), y)
    steps = [r["step"] for r in opt.history]
    assert steps[0] == pytest.approx(expected_first, rel=1e-12)
    assert 1 < len(steps) < 100
    assert sum(steps) == pytest.approx(1.0, rel=1e-12)
    assert opt.finished
    ensemble = opt.ensemble.copy()
    with pytest.raises(RuntimeError, match=r"terminal time"):
        opt.tell(decay(opt.ask()), y)
    np.testing.assert_array_equal(opt.ensemble, ensemble)
    with pytest.raises(RuntimeError, match=r"reached its terminal time 1.0: no step is left"):
        controller.next_step(phi, M)


def _coefficient(momentum, n):
    """The Nesterov coefficient after update n (1-based): (n-1)/(n+2), or a constant from the second on."""
    return (n - 1) / (n + 2) if momentum is True else (0.0 if n == 1 else momentum)


@pytest.mark.parametrize("momentum", [True, 0.7])
def test_momentum_extrapolates_where_the_model_is_evaluated(decay_problem, momentum):
    """MEKI: after update n (1-based) the model is evaluated at v = u_n + c (u_n - u_{n-1})."""
    U0, y = decay_problem
    opt = ekinet.EKI(U0, noise_cov=NOISE_STD**2, momentum=momentum, perturb=False)
    ensembles = [opt.ensemble.copy()]
    np.testing.assert_array_equal(opt.ask(), U0)
    for n in range(1, 4):
        opt.tell(decay(opt.ask()), y)
        ensembles.append(opt.ensemble.copy())
        c = _coefficient(momentum, n)
        np.testing.assert_allclose(opt.ask(), ensembles[n] + c * (ensembles[n] - ensembles[n - 1]), rtol=1e-13,
                                   atol=1e-13)
    assert np.max(np.abs(opt.ask() - opt.ensemble)) > 0


def test_restart_momentum_evaluates_at_the_ensemble_and_counts_n_from_zero(decay_problem):
    """After restart_momentum() the model is evaluated at u itself, and the coefficients start again at
    0, 1/4, 2/5, ... as for a new run from the current ensemble."""
    U0, y = decay_problem
    opt = ekinet.EKI(U0, noise_cov=NOISE_STD**2, momentum=True, perturb=False)
    for _ in range(3):
        opt.tell(decay(opt.ask()), y)
    assert np.max(np.abs(opt.ask() - opt.ensemble)) > 0
    opt.restart_momentum()
    np.testing.assert_array_equal(opt.ask(), opt.ensemble)
    fresh = ekinet.EKI(opt.ensemble.copy(), noise_cov=NOISE_STD**2, momentum=True, perturb=False)
    for _ in range(3):
        opt.tell(decay(opt.ask()), y)
        fresh.tell(decay(fresh.ask()), y)
        np.testing.assert_allclose(opt.ask(), fresh.ask(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("momentum", [True, 0.6])
@pytest.mark.parametrize("method", ["kalman", "loss"])
def test_momentum_with_a_redraw_gives_every_member_the_velocity_of_the_mean(method, momentum, decay_problem):
    """MEKI(R): the update computes only the mean; the members are redrawn around it (the draws of randomize())
    and evaluated at those draws plus c (ubar_n - ubar_{n-1}), a velocity shared by all, not their own."""
    U0, y = decay_problem
    spec = ekinet.Randomization(scale=0.05, every=1, prior_std=[0.5, 1.0, 2.0])
    scheduler = ekinet.ConstantStep(0.5) if method == "kalman" else ekinet.AdaptiveStep(0.5)
    opt = ekinet.EKI(U0, noise_cov=NOISE_STD**2, method=method, scheduler=scheduler, momentum=momentum,
                     randomization=spec, rng=4)
    generator = np.random.default_rng(4)
    V, previous_mean = U0.copy(), U0.mean(axis=0)
    for n in range(1, 6):
        np.testing.assert_allclose(opt.ask(), V, rtol=1e-12, atol=1e-13)
        G = decay(V)
        opt.tell(G, y)
        if method == "kalman":
            U = ekinet.kalman_update(V, G, y, NOISE_STD**2, rng=generator, step=0.5)
        else:
            U, _ = ekinet.loss_update(V, G, (G - y) / NOISE_STD**2, step=0.5, rng=generator)
        mean = U.mean(axis=0)
        np.testing.assert_allclose(opt.updated_mean, mean, rtol=1e-10, atol=1e-12)
        members = ekinet.randomize(U, spec.gamma(n), prior_std=spec.prior_std, rng=generator)
        np.testing.assert_allclose(opt.ensemble, members, rtol=1e-10, atol=1e-12)
        V = members + _coefficient(momentum, n) * (mean - previous_mean)
        previous_mean = mean
    assert np.max(np.abs(opt.ask() - opt.ensemble)) > 0


@pytest.mark.parametrize("momentum", [0, 1, 1.5, -0.2, "yes", None])
def test_momentum_must_be_a_switch_or_a_coefficient_below_one(decay_problem, momentum):
    with pytest.raises(ValueError, match=r"momentum = .* must be False, True .* or a constant coefficient"):
        ekinet.EKI(decay_problem[0], momentum=momentum)


def test_randomization_keeps_the_ensemble_spread(decay_problem):
    """EKI(R): without randomisation the ensemble collapses; randomising every update around the mean with
    scale s keeps a spread of about s^2 P prior_std^2."""
    U0, y = decay_problem
    plain, _ = _run(U0, y, iterations=15)
    spec = ekinet.Randomization(scale=0.05, every=1, prior_std=1.0)
    randomized, misfits = _run(U0, y, iterations=15, randomization=spec)
    s_plain = ekinet.ensemble_spread(plain.ensemble)
    s_random = ekinet.ensemble_spread(randomized.ensemble)
    assert s_plain < 1e-4
    assert 0.25 * 3 * 0.05**2 < s_random < 4 * 3 * 0.05**2
    assert misfits[-1] < 1e-2 * misfits[0]
    # the explicit call uses gamma(n) = scale * decay^n
    spec = ekinet.Randomization(scale=0.1, decay=0.5)
    assert spec.gamma(3) == pytest.approx(0.0125)
    opt = ekinet.EKI(U0, noise_cov=NOISE_STD**2, randomization=spec, rng=0)
    before = opt.mean.copy()
    after = opt.randomize(scale=0.0)
    np.testing.assert_allclose(after, np.tile(before, (50, 1)), rtol=1e-13)


@pytest.mark.parametrize("every", [1, 3])
@pytest.mark.parametrize("method", ["kalman", "loss"])
def test_randomized_updates_compute_only_the_mean_and_equal_the_full_update(method, every, decay_problem):
    """EKI(R) asks the update for the mean only when every member is redrawn right after it; the result is the
    full update followed by randomize(), with the same draws (the generator is consumed in the same order).
    updated_mean is the full update's mean, exactly: the centre of the redraw, or the ensemble mean."""
    U0, y = decay_problem
    spec = ekinet.Randomization(scale=0.05, every=every, decay=0.9, prior_std=[0.5, 1.0, 2.0])
    scheduler = ekinet.ConstantStep(0.5) if method == "kalman" else ekinet.AdaptiveStep(0.5)
    opt = ekinet.EKI(U0, noise_cov=NOISE_STD**2, method=method, scheduler=scheduler, randomization=spec, rng=4)
    generator = np.random.default_rng(4)
    U = U0.copy()
    for n in range(1, 7):
        G = decay(opt.ask())
        np.testing.assert_allclose(opt.ask(), U, rtol=1e-12, atol=1e-13)
        opt.tell(G, y)
        if method == "kalman":
            U = ekinet.kalman_update(U, G, y, NOISE_STD**2, rng=generator, step=0.5)
        else:
            U, _ = ekinet.loss_update(U, G, (G - y) / NOISE_STD**2, step=0.5, rng=generator)
        np.testing.assert_allclose(opt.updated_mean, U.mean(axis=0), rtol=1e-10, atol=1e-12)
        if n % every == 0:
            U = ekinet.randomize(U, spec.gamma(n), prior_std=spec.prior_std, rng=generator)
    np.testing.assert_allclose(opt.ensemble, U, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("momentum, every, restart", [(False, 1, False), (0.6, 1, True), (True, 3, False),
                                                        (0.6, None, False)])
def test_state_restores_an_optimiser_that_continues_exactly(momentum, every, restart, decay_problem):
    """state() / restore() (the Trainer's checkpoints): a fresh optimiser restored from another's state continues
    with the same members, draws and momentum. Members redrawn around the update's centre are kept as the centre
    alone and drawn again on restore."""
    U0, y = decay_problem
    spec = None if every is None else ekinet.Randomization(scale=0.05, every=every, prior_std=[0.5, 1.0, 2.0])
    options = dict(noise_cov=NOISE_STD**2, momentum=momentum, randomization=spec, rng=4)
    opt = ekinet.EKI(U0, **options)
    for n in range(4):
        opt.tell(decay(opt.ask()), y)
        if restart and n == 1:
            opt.restart_momentum()
    arrays, info = opt.state()
    assert ("U" in arrays) == (every != 1)  # a redraw after every update keeps only the centre
    assert ("V" in arrays) == (every != 1 and bool(momentum))
    fresh = ekinet.EKI(U0 + 1.0, **options)
    fresh.restore({k: v.copy() for k, v in arrays.items()}, info)
    np.testing.assert_array_equal(fresh.ensemble, opt.ensemble)
    for _ in range(4):
        np.testing.assert_array_equal(fresh.ask(), opt.ask())
        G = decay(opt.ask())
        opt.tell(G, y)
        fresh.tell(G, y)
    np.testing.assert_array_equal(fresh.ensemble, opt.ensemble)


def test_restore_needs_members_or_a_centre_and_the_draw_they_were_saved_with(decay_problem):
    U0, y = decay_problem
    opt = ekinet.EKI(U0, noise_cov=NOISE_STD**2, randomization=ekinet.Randomization(every=1), rng=0)
    opt.tell(decay(opt.ask()), y)
    arrays, info = opt.state()
    with pytest.raises(ValueError, match=r"neither members \(U\) nor the centre"):
        ekinet.EKI(U0).restore({}, info)
    other = dict(info, drawn_from=ekinet.EKI(U0, rng=1).state()[1]["rng"])
    with pytest.raises(ValueError, match="did not end at the saved RNG state"):
        ekinet.EKI(U0, randomization=ekinet.Randomization(every=1)).restore(arrays, other)
    with pytest.raises(ValueError, match="needs the randomisation they were drawn with"):
        ekinet.EKI(U0).restore(arrays, info)


@pytest.mark.parametrize("method", ["kalman", "loss"])
def test_failed_members_in_the_optimiser_are_redrawn(method, decay_problem):
    """A forward model that fails (NaN) for some members, with the default on_failure="redraw": eki-math
    section 5 says a failed member must not poison the update; it is dropped, re-drawn and recorded."""
    U0, y = decay_problem
    opt = ekinet.EKI(U0, noise_cov=NOISE_STD**2, method=method, rng=0)
    G = decay(opt.ask())
    G[[3, 17]] = np.nan
    opt.tell(G, y)
    assert opt.history[0]["failed_members"] == 2
    assert np.all(np.isfinite(opt.ensemble))
    assert np.isfinite(opt.history[0]["mean_member_loss"])
    assert opt.history[0]["best_member"] not in (3, 17)


def test_failed_members_in_the_optimiser_raise_when_asked(decay_problem):
    U0, y = decay_problem
    opt = ekinet.EKI(U0, noise_cov=NOISE_STD**2, on_failure="raise")
    G = decay(opt.ask())
    G[5, 2] = np.inf
    with pytest.raises(ValueError, match=r"NaN/Inf"):
        opt.tell(G, y)


def test_loss_method_with_explicit_gradients(decay_problem):
    """method="loss" with grad= from ekinet.losses (here the squared loss) gives the same updates as y alone."""
    U0, y = decay_problem
    a = ekinet.EKI(U0, noise_cov=NOISE_STD**2, method="loss", rng=0)
    b = ekinet.EKI(U0, noise_cov=NOISE_STD**2, method="loss", rng=0)
    for _ in range(3):
        G = decay(a.ask())
        values, grad = ekinet.losses.squared(G, y, noise_cov=NOISE_STD**2)
        a.tell(G, grad=grad, loss_values=values)
        b.tell(decay(b.ask()), y)
    np.testing.assert_allclose(a.ensemble, b.ensemble, rtol=1e-12, atol=1e-12)
    assert a.history[-1]["best_loss"] == pytest.approx(b.history[-1]["best_loss"], rel=1e-12)


def test_minimize(decay_problem):
    U0, y = decay_problem
    calls = []
    result = ekinet.minimize(decay, U0, y, noise_cov=NOISE_STD**2, iterations=12, progress=False, rng=5,
                             callback=lambda opt: calls.append(opt.iteration))
    assert isinstance(result, ekinet.MinimizeResult)
    assert calls == list(range(1, 13))
    losses = np.array([r["mean_particle_loss"] for r in result.history])
    assert len(losses) == 12
    # recorded before each update, at the mean of the members evaluated
    assert losses[0] == pytest.approx(_misfit(U0.mean(axis=0), y), rel=1e-10)
    assert losses[-1] < 1e-3 * losses[0]
    # decreasing, up to the small fluctuations of the perturbed observations at the noise level
    assert np.all(np.diff(losses) <= 0.05 * losses[:-1]), losses
    assert _misfit(result.mean, y) < 1.05 * losses[-1]
    np.testing.assert_allclose(result.mean, TRUTH, atol=0.05)
    np.testing.assert_array_equal(result.ensemble, result.optimizer.ensemble)
    # one member at a time gives the same run
    single = ekinet.minimize(lambda u: decay(u)[0], U0, y, noise_cov=NOISE_STD**2, iterations=12, progress=False,
                             rng=5, batched=False)
    np.testing.assert_allclose(single.mean, result.mean, rtol=1e-12, atol=1e-12)


def test_minimize_with_the_loss_method_and_controller(decay_problem):
    U0, y = decay_problem
    result = ekinet.minimize(decay, U0, y, noise_cov=NOISE_STD**2, iterations=50, progress=False,
                             scheduler=ekinet.DataMisfitController(), rng=0)
    assert result.optimizer.finished and len(result.history) < 50  # stopped at the terminal time
    losses = [r["mean_particle_loss"] for r in result.history]
    assert losses[-1] < 1e-3 * losses[0] * 100
    loss_result = ekinet.minimize(decay, U0, y, noise_cov=NOISE_STD**2, iterations=40, progress=False,
                                  method="loss", scheduler=ekinet.AdaptiveStep(0.5))
    assert loss_result.history[-1]["mean_particle_loss"] < 2 * T_OBS.size


def test_bad_options(decay_problem):
    U0, y = decay_problem
    for iterations in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match=r"iterations = .* must be a positive integer"):
            ekinet.minimize(decay, U0, y, iterations=iterations, progress=False)
    J = U0.shape[0]
    for forward, match in ((lambda U: np.zeros((J, T_OBS.size)), rf"shape \({J}, {T_OBS.size}\) for {J + 1} rows"),
                           (lambda U: U[:2], rf"for {J + 1} rows of parameters \(the {J} members and their mean\)"),
                           (lambda U: U[:, 0], r"shape \(\d+,\) for")):
        with pytest.raises(ValueError, match=match):
            ekinet.minimize(forward, U0, y, progress=False)
    with pytest.raises(ValueError, match=r"batched=False\) returned outputs of shape \(\)"):
        ekinet.minimize(lambda u: u[0], U0, y, batched=False, progress=False)
    with pytest.raises(ValueError, match=r"method = 'sgd'"):
        ekinet.EKI(U0, method="sgd")
    with pytest.raises(ValueError, match=r"method = 'gradient'"):
        ekinet.minimize(decay, U0, y, method="gradient", progress=False)
    with pytest.raises(ValueError, match=r"AdaptiveStep"):
        ekinet.EKI(U0, method="kalman", scheduler=ekinet.AdaptiveStep(1.0))
    with pytest.raises(ValueError, match=r"\bU0 has 1 member"):
        ekinet.EKI(U0[:1])
    for noise_cov in (-1.0, 0.0, float("nan")):
        with pytest.raises(ValueError, match=r"noise_cov = .* must be a positive, finite variance"):
            ekinet.EKI(U0, noise_cov=noise_cov)
    with pytest.raises(ValueError, match=r"\bU0 contains 1 NaN/Inf"):
        ekinet.EKI(np.where(np.arange(U0.size).reshape(U0.shape) == 0, np.nan, U0))
    with pytest.raises(ValueError, match=r"step = 0"):
        ekinet.ConstantStep(0.0)
    with pytest.raises(ValueError, match=r"step = -1"):
        ekinet.AdaptiveStep(-1.0)
    with pytest.raises(ValueError, match=r"terminal_time = 0"):
        ekinet.DataMisfitController(terminal_time=0.0)
    opt = ekinet.EKI(U0)
    with pytest.raises(ValueError, match=r"needs the data y"):
        opt.tell(decay(opt.ask()))
    loss_opt = ekinet.EKI(U0, method="loss")
    with pytest.raises(ValueError, match=r"needs grad="):
        loss_opt.tell(decay(loss_opt.ask()))
    for option in ("formulation", "on_failure", "backend"):  # named when the optimiser is made, not at tell()
        with pytest.raises(ValueError, match=rf"{option} = 'x' is not one of"):
            ekinet.EKI(U0, **{option: "x"})


def test_a_tell_that_raises_changes_nothing(decay_problem):
    U0, y = decay_problem
    scheduler = ekinet.DataMisfitController()
    opt = ekinet.EKI(U0, noise_cov=NOISE_STD**2, scheduler=scheduler, rng=3)
    G = decay(opt.ask())
    rng_state = opt._rng.bit_generator.state
    with pytest.raises(TypeError, match="G has dtype float32"):  # raised by the update, after the step was chosen
        opt.tell(G.astype(np.float32), y)
    with pytest.raises(ValueError, match="no member has a finite misfit"):
        opt.tell(np.full_like(G, np.nan), y)
    assert scheduler.time == 0.0 and opt.iteration == 0 and opt.history == []
    assert opt._rng.bit_generator.state == rng_state
    opt.tell(G, y)  # then the same update as a fresh optimiser's
    fresh = ekinet.EKI(U0, noise_cov=NOISE_STD**2, scheduler=ekinet.DataMisfitController(), rng=3)
    np.testing.assert_array_equal(fresh.tell(decay(fresh.ask()), y), opt.ensemble)
    loss_opt = ekinet.EKI(U0, method="loss", scheduler=ekinet.DataMisfitController())
    with pytest.raises(ValueError, match="DataMisfitController chooses the step from the members' misfits"):
        loss_opt.tell(G, grad=G - y)


def test_a_failed_mean_particle_is_recorded_as_nan_and_the_run_goes_on(decay_problem):
    U0, y = decay_problem

    def fails_at_the_mean(U):
        G = decay(U)
        G[-1] = np.nan  # minimize evaluates the members and, in the last row, their mean
        return G

    result = ekinet.minimize(fails_at_the_mean, U0, y, noise_cov=NOISE_STD**2, iterations=3, progress=False)
    assert len(result.history) == 3 and all(np.isnan(r["mean_particle_loss"]) for r in result.history)
    opt = ekinet.EKI(U0, noise_cov=NOISE_STD**2)
    opt.tell(decay(opt.ask()), y)  # no mean output: the first record has no mean_particle_loss
    V = opt.ask()
    opt.tell(decay(V), y, mean_output=decay(V.mean(axis=0, keepdims=True))[0])
    arrays = opt.history_arrays()
    assert np.isnan(arrays["mean_particle_loss"][0]) and np.isfinite(arrays["mean_particle_loss"][1])

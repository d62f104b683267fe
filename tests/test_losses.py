"""Losses of the outputs and their gradients (eki-math section 2): native against reference, gradients against
central finite differences, label / one-hot and shape equivalences, invalid input."""

import numpy as np
import pytest
from conftest import make_noise, noise_matrix

import ekinet
from ekinet import losses

BACKENDS = ["native", "reference"]
J, B, C = 4, 3, 5  # members, examples, outputs per example


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _case(name, rng, dtype=np.float64):
    """(function, outputs (J, B, C'), targets, keyword arguments) for each loss."""
    if name.startswith("squared"):
        kind = name.split("-")[1]
        Z = rng.standard_normal((J, B, C))
        Y = rng.standard_normal((B, C))
        noise = make_noise(kind, B * C, rng)
        noise = noise if np.isscalar(noise) else noise.astype(dtype)
        return losses.squared, Z.astype(dtype), Y.astype(dtype), {"noise_cov": noise}
    if name == "cross_entropy":
        Z = _softmax(rng.standard_normal((J, B, C)))
        Y = _softmax(2 * rng.standard_normal((B, C)))  # soft targets (probabilities)
        return losses.cross_entropy, Z.astype(dtype), Y.astype(dtype), {}
    if name == "cross_entropy_onehot":
        Z = _softmax(rng.standard_normal((J, B, C)))
        Y = np.eye(C)[rng.integers(0, C, B)]
        return losses.cross_entropy, Z.astype(dtype), Y.astype(dtype), {}
    if name == "cross_entropy_logits":
        Z = 3 * rng.standard_normal((J, B, C))
        Y = _softmax(2 * rng.standard_normal((B, C)))
        return losses.cross_entropy_logits, Z.astype(dtype), Y.astype(dtype), {}
    if name == "gaussian_nll":
        k = 2
        mu = rng.standard_normal((J, B, k))
        sigma = rng.uniform(0.3, 2.0, (J, B, k))
        Y = rng.standard_normal((B, k))
        return losses.gaussian_nll, np.concatenate([mu, sigma], axis=2).astype(dtype), Y.astype(dtype), {}
    raise ValueError(name)


CASES = ["squared-scalar", "squared-diagonal", "squared-full", "cross_entropy", "cross_entropy_onehot",
         "cross_entropy_logits", "gaussian_nll"]


def _direct(name, Z, Y, kwargs):
    """The losses written out in the test (float64): values per member, gradient of the outputs' shape."""
    Z = Z.astype(np.float64)
    Y = Y.astype(np.float64)
    if name.startswith("squared"):
        Gamma = noise_matrix(kwargs["noise_cov"], Z[0].size)
        r = Z.reshape(J, -1) - Y.reshape(-1)
        g = np.linalg.solve(Gamma, r.T).T
        return 0.5 * np.sum(r * g, axis=1), g.reshape(Z.shape)
    if name.startswith("cross_entropy") and name != "cross_entropy_logits":
        return -np.sum(Y * np.log(Z), axis=(1, 2)), -Y / Z
    if name == "cross_entropy_logits":
        log_p = Z - Z.max(axis=2, keepdims=True)
        log_p = log_p - np.log(np.exp(log_p).sum(axis=2, keepdims=True))
        return -np.sum(Y * log_p, axis=(1, 2)), Y.sum(axis=1)[None, :, None] * np.exp(log_p) - Y
    k = Y.shape[1]
    mu, sigma = Z[..., :k], Z[..., k:]
    values = np.sum(0.5 * np.log(2 * np.pi * sigma**2) + (Y - mu) ** 2 / (2 * sigma**2), axis=(1, 2))
    return values, np.concatenate([(mu - Y) / sigma**2, 1 / sigma - (Y - mu) ** 2 / sigma**3], axis=2)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", CASES)
def test_values_and_gradients_match_the_definitions(name, backend, rng):
    fn, Z, Y, kwargs = _case(name, rng)
    values, grad = fn(Z, Y, backend=backend, **kwargs)
    assert values.shape == (J,) and grad.shape == Z.shape
    expected_values, expected_grad = _direct(name, Z, Y, kwargs)
    np.testing.assert_allclose(values, expected_values, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("name", CASES)
def test_native_matches_reference(name, rng):
    fn, Z, Y, kwargs = _case(name, rng)
    v_native, g_native = fn(Z, Y, backend="native", **kwargs)
    v_ref, g_ref = fn(Z, Y, backend="reference", **kwargs)
    assert v_native.dtype == np.float64 and g_native.dtype == np.float64
    np.testing.assert_allclose(v_native, v_ref, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(g_native, g_ref, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("name", CASES)
def test_native_matches_reference_float32(name, rng):
    """float32 against the float64 result on the same inputs: values and gradients are sums of at most B C
    terms (or a Cholesky solve with a condition number <= 10 for the full Gamma), so a relative error of
    1e-5 (about 80 eps32) is generous; atol covers values that cancel to near zero."""
    fn, Z, Y, kwargs = _case(name, rng, dtype=np.float32)
    values, grad = fn(Z, Y, backend="native", **kwargs)
    assert values.dtype == np.float32 and grad.dtype == np.float32
    kwargs64 = {k: (v.astype(np.float64) if isinstance(v, np.ndarray) else v) for k, v in kwargs.items()}
    v64, g64 = fn(Z.astype(np.float64), Y.astype(np.float64), backend="reference", **kwargs64)
    scale_v, scale_g = np.max(np.abs(v64)), np.max(np.abs(g64))
    np.testing.assert_allclose(values, v64, rtol=1e-5, atol=1e-5 * scale_v)
    np.testing.assert_allclose(grad, g64, rtol=1e-5, atol=1e-5 * scale_g)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", CASES)
def test_gradients_are_finite_differences_of_the_values(name, backend, rng):
    """Central differences (float64, relative step 1e-6: truncation error O(1e-12) relative, rounding
    O(1e-10)), one output coordinate at a time; all members are perturbed together since member j's value
    depends on member j's outputs only."""
    fn, Z, Y, kwargs = _case(name, rng)
    _, grad = fn(Z, Y, backend=backend, **kwargs)
    flat = Z.reshape(J, -1)
    fd = np.empty_like(flat)
    for m in range(flat.shape[1]):
        delta = 1e-6 * max(1.0, float(np.max(np.abs(flat[:, m]))))
        plus, minus = flat.copy(), flat.copy()
        plus[:, m] += delta
        minus[:, m] -= delta
        v_plus, _ = fn(plus.reshape(Z.shape), Y, backend=backend, **kwargs)
        v_minus, _ = fn(minus.reshape(Z.shape), Y, backend=backend, **kwargs)
        fd[:, m] = (v_plus - v_minus) / (2 * delta)
    np.testing.assert_allclose(grad.reshape(J, -1), fd, rtol=1e-6, atol=1e-7 * np.max(np.abs(fd)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_cross_entropy_zero_probability_with_zero_target_is_allowed(backend, rng):
    """-<y, log z> only involves the classes with y > 0: z = 0 elsewhere gives a finite value, gradient 0."""
    Z = _softmax(rng.standard_normal((J, B, C)))
    Z[:, :, 0] = 0.0
    Y = np.eye(C)[rng.integers(1, C, B)]
    values, grad = losses.cross_entropy(Z, Y, backend=backend)
    assert np.all(np.isfinite(values)) and np.all(np.isfinite(grad))
    np.testing.assert_array_equal(grad[:, :, 0], 0.0)
    np.testing.assert_allclose(values, -np.sum(np.log(np.sum(Z * Y, axis=2)), axis=1), rtol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fn", [losses.cross_entropy, losses.cross_entropy_logits], ids=["probs", "logits"])
def test_integer_labels_equal_one_hot_targets(fn, backend, rng):
    Z = _softmax(rng.standard_normal((J, B, C)))
    labels = np.array([3, 0, 4])
    onehot = np.eye(C)[labels]
    v_labels, g_labels = fn(Z, labels, backend=backend)
    v_onehot, g_onehot = fn(Z, onehot, backend=backend)
    np.testing.assert_allclose(v_labels, v_onehot, rtol=1e-14, atol=0)
    np.testing.assert_allclose(g_labels, g_onehot, rtol=1e-14, atol=0)
    # flat (J, B * C) outputs with (B,) labels: C is inferred as M // B
    v_flat, g_flat = fn(Z.reshape(J, -1), labels.astype(np.int32), backend=backend)
    np.testing.assert_allclose(v_flat, v_onehot, rtol=1e-14, atol=0)
    assert g_flat.shape == (J, B * C)
    np.testing.assert_allclose(g_flat, g_onehot.reshape(J, -1), rtol=1e-14, atol=0)
    # integer one-hot rows are targets, not labels
    v_int, g_int = fn(Z, onehot.astype(np.int64), backend=backend)
    np.testing.assert_allclose(v_int, v_onehot, rtol=1e-14, atol=0)
    np.testing.assert_allclose(g_int, g_onehot, rtol=1e-14, atol=0)
    # the one_hot helper
    np.testing.assert_array_equal(losses.one_hot(labels, C, dtype=np.float64), onehot)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gaussian_nll_of_a_tiny_sigma_stays_finite(backend):
    Z = np.array([[[0.0, 1e-16]], [[0.0, 1e-25]], [[2e-25, 1e-25]]], dtype=np.float32)  # (J, B = 1, [mu, sigma])
    values, grad = losses.gaussian_nll(Z, np.zeros((1, 1), np.float32), backend=backend)
    assert values.dtype == grad.dtype == np.float32
    assert np.all(np.isfinite(values)) and np.all(np.isfinite(grad))
    np.testing.assert_allclose(values[:2], 0.5 * np.log(2 * np.pi) + np.log([1e-16, 1e-25]), rtol=1e-5)
    np.testing.assert_allclose(grad[0, 0], [0.0, 1e16], rtol=1e-5)  # d/dsigma = (1 - w^2) / sigma, w = 0
    np.testing.assert_allclose(grad[2, 0], [2e25, -3e25], rtol=1e-5)  # w = -2
    values, grad = losses.gaussian_nll(np.array([[[3e-150, 1e-150]]]), np.zeros((1, 1)), backend=backend)
    np.testing.assert_allclose(values, 0.5 * np.log(2 * np.pi) + np.log(1e-150) + 4.5, rtol=1e-12)
    np.testing.assert_allclose(grad[0, 0], [3e150, -8e150], rtol=1e-12)  # w = -3: sigma^3 underflows in float64


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", CASES)
def test_flat_outputs_give_the_same_numbers(name, backend, rng):
    """(J, B, C) outputs with (B, C) targets and flat (J, M) outputs give the same values and gradients (for the
    Gaussian NLL the (B, k) targets fix the example layout of flat outputs)."""
    fn, Z, Y, kwargs = _case(name, rng)
    values, grad = fn(Z, Y, backend=backend, **kwargs)
    flat_targets = Y if name == "gaussian_nll" else Y.reshape(-1) if name.startswith("squared") else Y
    v_flat, g_flat = fn(Z.reshape(J, -1), flat_targets, backend=backend, **kwargs)
    assert g_flat.shape == (J, Z[0].size)
    np.testing.assert_allclose(v_flat, values, rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(g_flat, grad.reshape(J, -1), rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("backend", BACKENDS)
def test_squared_full_noise_equals_whitened_identity(backend, rng):
    """1/2 |y - z|^2_Gamma = 1/2 |L^{-1} (y - z)|^2 for Gamma = L L^T."""
    M = B * C
    Gamma = make_noise("full", M, rng)
    Z = rng.standard_normal((J, M))
    y = rng.standard_normal(M)
    L = np.linalg.cholesky(Gamma)
    values, _ = losses.squared(Z, y, noise_cov=Gamma, backend=backend)
    white, _ = losses.squared(np.linalg.solve(L, Z.T).T, np.linalg.solve(L, y), noise_cov=1.0, backend=backend)
    np.testing.assert_allclose(values, white, rtol=1e-11)


@pytest.mark.parametrize("backend", BACKENDS)
def test_invalid_input(backend, rng):
    P = _softmax(rng.standard_normal((J, B, C)))
    Y = np.eye(C)[[1, 2, 3]]
    for flat in (P, P.reshape(J, -1)[:, :B]):  # a (B, 1) column of labels is refused, not read as one-hot rows
        with pytest.raises(ValueError, match=r"integer labels of shape \(3, 1\)"):
            losses.cross_entropy_logits(flat, np.array([[1], [2], [3]]), backend=backend)
    bad = P.copy()
    bad[0, 0, 1] = 0.0
    with pytest.raises(ValueError, match=r"probabilities (are )?<= 0 where the target is non-zero"):
        losses.cross_entropy(bad, Y, backend=backend)
    bad[0, 0, 1] = -0.1
    with pytest.raises(ValueError, match=r"probabilities (are )?<= 0 where the target is non-zero"):
        losses.cross_entropy(bad, Y, backend=backend)
    out = np.concatenate([rng.standard_normal((J, B, 2)), rng.uniform(0.5, 1.0, (J, B, 2))], axis=2)
    targets = rng.standard_normal((B, 2))
    for sigma in (0.0, -1.0):
        bad = out.copy()
        bad[2, 1, 3] = sigma
        with pytest.raises(ValueError, match=r"standard deviations (are )?<= 0"):
            losses.gaussian_nll(bad, targets, backend=backend)
    with pytest.raises(ValueError, match=r"targets have 4 values"):
        losses.squared(rng.standard_normal((J, 5)), np.zeros(4), backend=backend)
    with pytest.raises(ValueError, match=r"targets have 3 values .* class labels must be integers \(got float64"):
        losses.cross_entropy_logits(P, np.array([0.5, 1.2, 2.9]), backend=backend)
    with pytest.raises(ValueError, match=r"targets have"):
        losses.gaussian_nll(out, rng.standard_normal((B, 3)), backend=backend)
    with pytest.raises(ValueError, match=r"targets have|width"):
        losses.cross_entropy_logits(P, np.eye(C + 1)[[0, 1, 2]], backend=backend)
    with pytest.raises(ValueError, match=r"labels span \[0, 5\], outside \[0, 5\)"):
        losses.cross_entropy(P, np.array([0, 5, 1]), backend=backend)
    with pytest.raises(ValueError, match=r"labels span \[-1, 1\], outside"):
        losses.cross_entropy_logits(P, np.array([0, -1, 1]), backend=backend)
    with pytest.raises(ValueError, match=r"outputs have shape \(0, 5\): no members or no outputs"):
        losses.squared(np.zeros((0, 5)), np.zeros(5), backend=backend)
    with pytest.raises(ValueError, match=r"integer labels of shape \(2,\)"):
        losses.cross_entropy(P, np.array([0, 1]), backend=backend)
    with pytest.raises(ValueError, match=r"outputs have shape \(5,\)"):
        losses.squared(np.zeros(5), np.zeros(5), backend=backend)
    with pytest.raises(TypeError, match=r"outputs has dtype int64"):
        losses.squared(np.zeros((J, 5), dtype=np.int64), np.zeros(5), backend=backend)
    Z = rng.standard_normal((J, 5))
    Z[1, 1] = np.nan
    with pytest.raises(ValueError, match=r"outputs contains 1 NaN/Inf"):
        losses.squared(Z, np.zeros(5), backend=backend)
    with pytest.raises(ValueError, match=r"targets contains 1 NaN/Inf"):
        losses.squared(np.zeros((J, 5)), np.array([0, 0, np.inf, 0, 0]), backend=backend)
    with pytest.raises(ValueError, match=r"noise_cov.*positive"):
        losses.squared(np.zeros((J, 5)), np.zeros(5), noise_cov=-1.0, backend=backend)
    with pytest.raises(ValueError, match=r"noise_cov.*positive definite"):
        losses.squared(np.zeros((J, 5)), np.zeros(5), noise_cov=-np.eye(5), backend=backend)
    with pytest.raises(ValueError, match=r"noise_cov has shape \(4,\)"):
        losses.squared(np.zeros((J, 5)), np.zeros(5), noise_cov=np.ones(4), backend=backend)


def test_unknown_backend_and_inputs_not_modified(rng):
    fn, Z, Y, kwargs = _case("gaussian_nll", rng)
    Z0, Y0 = Z.copy(), Y.copy()
    fn(Z, Y, backend="native")
    fn(Z, Y, backend="reference")
    np.testing.assert_array_equal(Z, Z0)
    np.testing.assert_array_equal(Y, Y0)
    with pytest.raises(ValueError, match=r"backend = 'cuda'"):
        fn(Z, Y, backend="cuda")


def test_losses_drive_the_loss_scheme(rng):
    """A loss gradient from ekinet.losses plugs into loss_update: a linear softmax classifier's cross-entropy
    decreases under the general-loss scheme."""
    n_features, classes, batch, members = 4, 3, 30, 40
    X = rng.standard_normal((batch, n_features))
    W_true = rng.standard_normal((n_features, classes)) * 2
    labels = np.argmax(X @ W_true, axis=1)
    U = rng.standard_normal((members, n_features * classes))

    def forward(U):
        return np.einsum("bf,jfc->jbc", X, U.reshape(members, n_features, classes))

    history = []
    for _ in range(60):
        values, grad = losses.cross_entropy_logits(forward(U), labels)
        history.append(values.mean())
        U, _ = ekinet.loss_update(U, forward(U).reshape(members, -1), grad.reshape(members, -1), step=0.5)
    assert history[-1] < 0.5 * history[0]
    assert np.all(np.isfinite(ekinet.ensemble_mean(U)))


def test_one_hot_checks_its_labels():
    np.testing.assert_array_equal(losses.one_hot(np.array([2, 0]), 3), [[0, 0, 1], [1, 0, 0]])
    with pytest.raises(ValueError, match=r"labels span \[-1, 0\], outside \[0, 3\)"):
        losses.one_hot(np.array([-1, 0]), 3)  # -1 would silently select the last class
    with pytest.raises(ValueError, match=r"pass \(B,\) integers"):
        losses.one_hot(np.array([0.0, 1.0]), 3)

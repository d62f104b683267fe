"""The CUDA backend on CuPy arrays against the NumPy reference, and DLPack input (PyTorch).

The CUDA tests are marked ``cuda`` and skipped, with the reason, when CuPy is not importable, ekinet was built
without CUDA, or no GPU is present. PyTorch tensors are tested there too (the generic DLPack path everywhere)."""

import numpy as np
import pytest
from conftest import (EPS32, NOISE_KINDS, assert_update_close, kalman_system_condition, make_noise, make_problem,
                      noise_matrix, perturbation_kwargs)
from test_kalman_update import C32 as KALMAN_C32
from test_kalman_update import RTOL64 as KALMAN_RTOL64

import ekinet


def _cuda_skip_reason():
    try:
        import cupy
    except Exception as error:  # ImportError, or a CuPy that cannot load its CUDA libraries
        return f"CuPy is not importable ({type(error).__name__}: {error})"
    if not ekinet.build_info()["cuda"]:
        return "ekinet was built without CUDA (build_info()['cuda'] is False)"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:
        return f"no usable CUDA device ({type(error).__name__}: {error})"
    if count == 0:
        return "no CUDA device is present"
    return None


CUDA_SKIP = _cuda_skip_reason()
cuda = pytest.mark.skipif(CUDA_SKIP is not None, reason=CUDA_SKIP or "")

SHAPES = [(2, 1, 1), (4, 50, 120), (60, 5, 3), (10, 200, 8), (30, 40, 30)]
SHAPE_IDS = [f"J{J}-P{P}-M{M}" for J, P, M in SHAPES]


@pytest.fixture
def cp():
    import cupy

    return cupy


def _to_gpu(cp, value):
    return cp.asarray(value) if isinstance(value, np.ndarray) else value


def _host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


# --------------------------------------------------------------------------------------------------------------
# Kalman update
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("perturbation", ["none", "given", "seeded"])
@pytest.mark.parametrize("noise_kind", NOISE_KINDS)
@pytest.mark.parametrize("formulation", ["ensemble", "observation", "auto"])
@pytest.mark.parametrize("J,P,M", SHAPES, ids=SHAPE_IDS)
def test_kalman_update_cuda_float64(J, P, M, formulation, noise_kind, perturbation, cp, rng):
    U, G, y = make_problem(J, P, M, rng)
    noise = make_noise(noise_kind, M, rng)
    kwargs = perturbation_kwargs(perturbation, J, M, rng)
    expected, info_cpu = ekinet.kalman_update(U, G, y, noise, step=0.5, formulation=formulation,
                                              backend="reference", return_info=True, **kwargs)
    gpu_kwargs = {k: _to_gpu(cp, v) for k, v in kwargs.items()}
    got, info = ekinet.kalman_update(cp.asarray(U), cp.asarray(G), cp.asarray(y), _to_gpu(cp, noise), step=0.5,
                                     formulation=formulation, backend="native", return_info=True, **gpu_kwargs)
    assert isinstance(got, cp.ndarray) and got.dtype == cp.float64 and got.shape == (J, P)
    assert info["formulation"] == info_cpu["formulation"]
    assert_update_close(_host(got), expected, U, KALMAN_RTOL64, "CUDA vs NumPy reference")
    # the reference running on CuPy agrees too
    on_gpu = ekinet.kalman_update(cp.asarray(U), cp.asarray(G), cp.asarray(y), _to_gpu(cp, noise), step=0.5,
                                  formulation=formulation, backend="reference", **gpu_kwargs)
    assert_update_close(_host(on_gpu), expected, U, KALMAN_RTOL64, "CuPy reference vs NumPy reference")


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("noise_kind", NOISE_KINDS)
@pytest.mark.parametrize("formulation", ["ensemble", "observation"])
@pytest.mark.parametrize("J,P,M", SHAPES, ids=SHAPE_IDS)
def test_kalman_update_cuda_float32(J, P, M, formulation, noise_kind, cp, rng):
    """Same tolerance model as the CPU float32 test (see test_kalman_update.C32)."""
    U, G, y = make_problem(J, P, M, rng, dtype=np.float32)
    noise = make_noise(noise_kind, M, rng, dtype=np.float32)
    noise64 = noise if np.isscalar(noise) else noise.astype(np.float64)
    expected = ekinet.kalman_update(U.astype(np.float64), G.astype(np.float64), y.astype(np.float64), noise64,
                                    step=0.5, formulation=formulation, backend="reference", rng=9)
    got = ekinet.kalman_update(cp.asarray(U), cp.asarray(G), cp.asarray(y), _to_gpu(cp, noise), step=0.5,
                               formulation=formulation, backend="native", rng=9)
    assert got.dtype == cp.float32
    kappa = kalman_system_condition(G, noise_matrix(noise64, M), 0.5, formulation)
    tolerance = KALMAN_C32 * EPS32 * (kappa * np.max(np.abs(expected - U)) + np.max(np.abs(U)))
    assert np.max(np.abs(_host(got).astype(np.float64) - expected)) <= tolerance


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("formulation", ["ensemble", "observation"])
def test_kalman_update_cuda_failed_members(formulation, cp, rng):
    U, G, y = make_problem(9, 6, 5, rng)
    G[2, 1], G[5] = np.nan, np.inf
    expected = ekinet.kalman_update(U, G, y, 0.3, rng=4, formulation=formulation, backend="reference")
    got, info = ekinet.kalman_update(cp.asarray(U), cp.asarray(G), cp.asarray(y), 0.3, rng=4,
                                     formulation=formulation, backend="native", return_info=True)
    assert info["failed_members"] == 2
    assert_update_close(_host(got), expected, U, KALMAN_RTOL64, "CUDA failed members")
    G[1:] = np.nan
    with pytest.raises(FloatingPointError, match=r"at least 2"):
        ekinet.kalman_update(cp.asarray(U), cp.asarray(G), cp.asarray(y), 0.3, backend="native")


@pytest.mark.cuda
@cuda
def test_cuda_argument_checks(cp, rng):
    U, G, y = make_problem(5, 4, 3, rng)
    Ug = cp.asarray(U)
    U_copy = U.copy()
    with pytest.raises(ValueError, match=r"\bG is not a CuPy \(GPU\) array like U"):
        ekinet.kalman_update(Ug, G, cp.asarray(y), 1.0)
    with pytest.raises(ValueError, match=r"\bG has shape \(4, 3\)"):
        ekinet.kalman_update(Ug, cp.asarray(G[:4]), cp.asarray(y), 1.0)
    with pytest.raises(TypeError, match=r"\bG has dtype float32 but U is float64"):
        ekinet.kalman_update(Ug, cp.asarray(G, dtype=cp.float32), cp.asarray(y), 1.0)
    bad = U.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match=r"\bU contains 1 NaN/Inf"):
        ekinet.kalman_update(cp.asarray(bad), cp.asarray(G), cp.asarray(y), 1.0, backend="native")
    with pytest.raises(ValueError, match=r"noise_cov.*positive definite"):
        ekinet.kalman_update(Ug, cp.asarray(G), cp.asarray(y), -cp.eye(3), backend="native")
    ekinet.kalman_update(Ug, cp.asarray(G), cp.asarray(y), 1.0, backend="native")
    np.testing.assert_array_equal(_host(Ug), U_copy)  # the input is not modified


# --------------------------------------------------------------------------------------------------------------
# loss update, losses, statistics, randomisation
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("adaptive", [True, False])
@pytest.mark.parametrize("J,P,M", SHAPES, ids=SHAPE_IDS)
def test_loss_update_cuda(J, P, M, adaptive, dtype, cp, rng):
    U, G, y = make_problem(J, P, M, rng, dtype=dtype)
    grad = (G - y).astype(dtype)
    if J > 2:
        G[1] = np.nan  # one failed member, re-drawn
    expected, h_expected = ekinet.loss_update(U.astype(np.float64), G.astype(np.float64), grad.astype(np.float64),
                                              step=0.3, adaptive=adaptive, rng=2, backend="reference")
    got, h = ekinet.loss_update(cp.asarray(U), cp.asarray(G), cp.asarray(grad), step=0.3, adaptive=adaptive, rng=2,
                                backend="native")
    assert isinstance(got, cp.ndarray) and got.dtype == dtype
    assert h == pytest.approx(h_expected, rel=1e-10 if dtype == np.float64 else 1e-4)
    if dtype == np.float64:
        assert_update_close(_host(got), expected, U, 1e-10, "CUDA loss_update")
    else:  # see test_loss_update.C32
        tolerance = 10 * EPS32 * J * (np.max(np.abs(U)) + np.max(np.abs(expected - U)))
        assert np.max(np.abs(_host(got).astype(np.float64) - expected)) <= tolerance
    V = ekinet.nesterov_extrapolate(got, cp.asarray(U), 0.25)
    np.testing.assert_allclose(_host(V), _host(got) + 0.25 * (_host(got) - U), rtol=1e-6, atol=1e-6)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-12), (np.float32, 1e-5)])
@pytest.mark.parametrize("name", ["squared-scalar", "squared-diagonal", "squared-full", "cross_entropy",
                                  "cross_entropy_logits", "gaussian_nll"])
def test_losses_cuda(name, dtype, rtol, cp, rng):
    from test_losses import _case

    fn, Z, Y, kwargs = _case(name, rng, dtype=dtype)
    values, grad = fn(Z.astype(np.float64), Y.astype(np.float64), backend="reference",
                      **{k: (v.astype(np.float64) if isinstance(v, np.ndarray) else v) for k, v in kwargs.items()})
    gpu_kwargs = {k: _to_gpu(cp, v) for k, v in kwargs.items()}
    v_gpu, g_gpu = fn(cp.asarray(Z), cp.asarray(Y), backend="native", **gpu_kwargs)
    assert isinstance(v_gpu, cp.ndarray) and v_gpu.dtype == dtype and g_gpu.shape == Z.shape
    np.testing.assert_allclose(_host(v_gpu), values, rtol=rtol, atol=rtol * np.max(np.abs(values)))
    np.testing.assert_allclose(_host(g_gpu), grad, rtol=rtol, atol=rtol * np.max(np.abs(grad)))
    if name.startswith("cross_entropy"):
        labels = cp.asarray(np.argmax(Y, axis=-1))
        onehot = cp.asarray(np.eye(Z.shape[-1], dtype=dtype)[np.argmax(Y, axis=-1)])
        a = fn(cp.asarray(Z), labels, backend="native")
        b = fn(cp.asarray(Z), onehot, backend="native")
        np.testing.assert_allclose(_host(a[0]), _host(b[0]), rtol=rtol)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_statistics_and_randomize_cuda(dtype, cp, rng):
    U = rng.standard_normal((20, 7)).astype(dtype)
    std = rng.uniform(0.1, 2.0, 7).astype(dtype)
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    Ug = cp.asarray(U)
    np.testing.assert_allclose(_host(ekinet.ensemble_mean(Ug)), U.astype(np.float64).mean(axis=0), rtol=rtol,
                               atol=rtol)
    assert ekinet.ensemble_spread(Ug) == pytest.approx(ekinet.ensemble_spread(U, backend="reference"), rel=rtol)
    for prior_std in (0.5, std):
        got = ekinet.randomize(Ug, 0.3, prior_std=_to_gpu(cp, prior_std), rng=11, backend="native")
        expected = ekinet.randomize(U, 0.3, prior_std=prior_std, rng=11, backend="reference")
        assert isinstance(got, cp.ndarray) and got.dtype == dtype
        np.testing.assert_allclose(_host(got), expected, rtol=rtol, atol=rtol)
    xi = rng.standard_normal((20, 7)).astype(dtype)
    got = ekinet.randomize(Ug, 0.3, xi=cp.asarray(xi), backend="native")
    np.testing.assert_allclose(_host(got), U.mean(axis=0) + 0.3 * xi, rtol=rtol, atol=rtol)


@pytest.mark.cuda
@cuda
def test_eki_runs_on_the_gpu(cp, rng):
    """The ask/tell optimiser keeps CuPy ensembles on the device and converges on a linear problem."""
    A = rng.standard_normal((12, 3))
    y = A @ np.array([1.0, -1.0, 0.5])
    opt = ekinet.EKI(cp.asarray(rng.standard_normal((30, 3))), noise_cov=1e-2, rng=0)
    for _ in range(30):
        V = opt.ask()
        assert isinstance(V, cp.ndarray)
        opt.tell(V @ cp.asarray(A.T), cp.asarray(y))
    np.testing.assert_allclose(_host(opt.mean), [1.0, -1.0, 0.5], atol=0.05)


# --------------------------------------------------------------------------------------------------------------
# DLPack (PyTorch)
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.cuda
@cuda
def test_dlpack_torch_tensors(rng):
    """PyTorch tensors in and out, on the CPU and on the GPU. Runs where PyTorch is installed, which in this
    project's set-up is the GPU machine (the PyPI PyTorch wheel is too heavy for CI); the generic DLPack path is
    tested everywhere by test_dlpack_producer_input."""
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    U, G, y = make_problem(6, 4, 5, rng)
    expected = ekinet.kalman_update(U, G, y, 0.5, rng=3)
    got = ekinet.kalman_update(torch.from_numpy(U), torch.from_numpy(G), torch.from_numpy(y), 0.5, rng=3)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float64 and got.device.type == "cpu"
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-14, atol=1e-14)
    grad = G - y
    U_new, _ = ekinet.loss_update(torch.from_numpy(U), torch.from_numpy(G), torch.from_numpy(grad), step=0.1)
    assert isinstance(U_new, torch.Tensor)
    np.testing.assert_allclose(U_new.numpy(), ekinet.loss_update(U, G, grad, step=0.1)[0], rtol=1e-14)
    values, g = ekinet.losses.squared(torch.from_numpy(G), torch.from_numpy(y))
    assert isinstance(values, torch.Tensor) and isinstance(g, torch.Tensor)
    np.testing.assert_allclose(g.numpy(), grad, rtol=1e-14)
    U_t = torch.from_numpy(U.copy())
    ekinet.kalman_update(U_t, torch.from_numpy(G), torch.from_numpy(y), 0.5)
    np.testing.assert_array_equal(U_t.numpy(), U)  # the input tensor is not modified
    if not torch.cuda.is_available():
        pytest.fail("PyTorch cannot see the CUDA device that CuPy sees")
    got = ekinet.kalman_update(*(torch.from_numpy(a).cuda() for a in (U, G, y)), 0.5, rng=3)
    assert isinstance(got, torch.Tensor) and got.device.type == "cuda"
    np.testing.assert_allclose(got.cpu().numpy(), expected, rtol=1e-10, atol=1e-12)


class _DLPackOnly:
    """A minimal DLPack producer that is not a NumPy array (as a framework tensor would be)."""

    def __init__(self, array):
        self._array = array

    def __dlpack__(self, **kwargs):
        return self._array.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._array.__dlpack_device__()


def test_dlpack_producer_input(rng):
    """Any CPU object with __dlpack__ is taken without a copy and gives the NumPy result."""
    U, G, y = make_problem(6, 4, 5, rng)
    expected = ekinet.kalman_update(U, G, y, 0.5, rng=3)
    got = ekinet.kalman_update(_DLPackOnly(U), _DLPackOnly(G), _DLPackOnly(y), 0.5, rng=3)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-14, atol=1e-14)
    values, grad = ekinet.losses.squared(_DLPackOnly(G), _DLPackOnly(y))
    np.testing.assert_allclose(np.asarray(grad), G - y, rtol=1e-14)
    with pytest.raises(TypeError, match=r"\bU has dtype int64"):
        ekinet.kalman_update(_DLPackOnly(np.ones((6, 4), dtype=np.int64)), G, y, 0.5)

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
@pytest.mark.parametrize("failures", [False, True])
@pytest.mark.parametrize("formulation", ["ensemble", "observation"])
def test_mean_output_and_randomize_around_cuda(formulation, failures, cp, rng):
    """output="mean" on the GPU equals the mean of the reference's full update; randomize_around draws the
    reference's numbers."""
    U, G, y = make_problem(12, 40, 6, rng)
    if failures:
        G[3, 1] = np.nan
    grad = G - y
    expected = ekinet.kalman_update(U, G, y, 0.3, rng=4, formulation=formulation, backend="reference")
    got = ekinet.kalman_update(cp.asarray(U), cp.asarray(G), cp.asarray(y), 0.3, rng=4, formulation=formulation,
                               backend="native", output="mean")
    assert isinstance(got, cp.ndarray) and got.shape == (40,)
    assert_update_close(_host(got), expected.mean(axis=0), U.mean(axis=0), KALMAN_RTOL64, "CUDA Kalman mean")
    expected, _ = ekinet.loss_update(U, G, grad, step=0.5, rng=2, backend="reference")
    got, _ = ekinet.loss_update(cp.asarray(U), cp.asarray(G), cp.asarray(grad), step=0.5, rng=2, backend="native",
                                output="mean")
    assert_update_close(_host(got), expected.mean(axis=0), U.mean(axis=0), KALMAN_RTOL64, "CUDA loss mean")
    std = rng.uniform(0.1, 2.0, 40)
    around = ekinet.randomize_around(got, 12, 0.3, prior_std=cp.asarray(std), rng=7, backend="native")
    np.testing.assert_allclose(_host(around), ekinet.randomize_around(_host(got), 12, 0.3, prior_std=std, rng=7,
                                                                      backend="reference"), rtol=1e-12, atol=1e-12)


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


def test_dlpack_torch_views_are_resolved_and_unreadable_dtypes_named(rng):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    U = rng.standard_normal((5, 3))
    negated = torch.from_numpy(U)._neg_view()  # a lazy negation: the exported buffer alone holds +U
    np.testing.assert_allclose(np.asarray(ekinet.ensemble_mean(negated)), -U.mean(axis=0), rtol=1e-14)
    with pytest.raises(TypeError, match="U could not be read through DLPack"):
        ekinet.ensemble_mean(torch.zeros((3, 2), dtype=torch.bfloat16))


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


# --------------------------------------------------------------------------------------------------------------
# the batched forward pass on the GPU (every kernel of the network path, cuBLAS strided batches, recurrent state)
# --------------------------------------------------------------------------------------------------------------


def _cuda_networks():
    """name -> (factory(dtype), J, B): every layer kind and activation, the paper's networks, an online step."""
    from test_nn import ACTIVATIONS, CONV_CASES, EDGE_NETWORKS, POOL_CASES, RECURRENT_CASES

    from ekinet import nn

    nets = {}
    for activation in ACTIVATIONS:
        hidden = "tanh" if activation == "softmax" else activation
        nets[f"dense-{activation}"] = (
            lambda dtype, a=activation, h=hidden: nn.Sequential([nn.Dense(6, h), nn.Dense(4, a)], (5,)), 5, 7)
    nets["dense-per-step-softmax"] = (
        lambda dtype: nn.Sequential([nn.Dense(4, "tanh"), nn.Dense(3, "softmax")], (6, 5)), 3, 4)
    for case, (shape, channels, kernel, stride, padding, activation) in CONV_CASES.items():
        def conv(dtype, shape=shape, channels=channels, kernel=kernel, stride=stride, padding=padding,
                 activation=activation):
            if activation == "heaviside" and dtype == "float32":
                activation = "relu"  # a float32 flip of the step near 0 is not an error (see test_nn)
            layer = nn.Conv2d(channels, kernel, stride=stride, padding=padding, activation=activation)
            return nn.Sequential([layer, nn.Conv2d(2, 1, activation="tanh"), nn.Flatten(), nn.Dense(3)], shape)
        nets[f"conv-{case}"] = (conv, 3, 4)
    for case, layers in POOL_CASES.items():
        nets[f"pool-{case}"] = (lambda dtype, layers=layers: nn.Sequential(layers, (2, 7, 8)), 3, 4)
    for case, (layers, shape) in RECURRENT_CASES.items():
        nets[f"recurrent-{case}"] = (lambda dtype, layers=layers, shape=shape: nn.Sequential(layers, shape), 5, 4)
    for case, factory in EDGE_NETWORKS.items():
        for J, B in ((1, 1), (5, 1)):
            nets[f"edge-{case}-J{J}-B{B}"] = (lambda dtype, factory=factory: factory(), J, B)
    nets["cnn-mnist"] = (lambda dtype: nn.from_string("cnn-mnist"), 3, 2)
    nets["rnn-mnist"] = (lambda dtype: nn.from_string("rnn-mnist"), 2, 3)
    for k in (1, 2, 3, 4):
        nets[f"dnn-{k}"] = (lambda dtype, k=k: nn.dnn(k), 3, 5)
    nets["lstm-regressor"] = (lambda dtype: nn.from_string("lstm:1-32-1", steps=20), 4, 6)
    # the online shape: many members, one example, one step (batched GEMMs of 2000 tiny products)
    nets["online-lstm-J2000"] = (lambda dtype: nn.Sequential([nn.LSTM(16), nn.Dense(1)], (1, 3)), 2000, 1)
    nets["online-rnn-J2000"] = (lambda dtype: nn.Sequential([nn.RNN(16), nn.Dense(1)], (1, 3)), 2000, 1)
    return nets


CUDA_NETWORKS = _cuda_networks()


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", list(CUDA_NETWORKS))
def test_forward_cuda(name, dtype, cp, rng):
    """The native forward pass on CuPy arrays against the float64 NumPy reference on the same (rounded) numbers
    (tolerances of test_nn), with zero and with given recurrent state, and the state it returns."""
    from test_nn import RTOL32, RTOL64, assert_close, inputs, random_state

    from ekinet import reference as ref

    factory, J, B = CUDA_NETWORKS[name]
    if dtype == "float32" and "heaviside" in name:
        pytest.skip("a float32 flip of the step near 0 is not an error; the step is checked in float64")
    net = factory(dtype)
    U, X = inputs(net, J, B, rng, dtype)
    rtol = RTOL64 if dtype == "float64" else RTOL32
    up = (lambda a: None if a is None else np.asarray(a, dtype=np.float64))
    for state in (None, random_state(net, J, B, rng, dtype)) if net.state_size else (None,):
        got, got_state = net.forward(cp.asarray(U), cp.asarray(X), state=None if state is None else cp.asarray(state),
                                     return_state=True, backend="native")
        assert isinstance(got, cp.ndarray) and got.dtype == np.dtype(dtype)
        assert got.shape == (J, B) + net.output_shape
        expected, expected_state = ref.forward(net, up(U), up(X), up(state))
        what = f"{name} ({'given' if state is not None else 'zero'} state)"
        assert_close(_host(got), expected, rtol, f"{what} outputs")
        assert got_state.shape == (J, B * net.state_size)
        assert_close(_host(got_state), expected_state, rtol, f"{what} state")


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("model, window", [("lstm:1-8-1", 1), ("rnn:1-8-1", 1), ("lstm:1-8-1", 3)])
def test_online_regression_on_cuda_equals_the_cpu(model, window, cp):
    """online_regression(device="cuda") keeps the ensemble, the state and the predictions on the GPU (one-step
    networks run whole) and gives the CPU's run in float64: the same draws, up to rounding; results as NumPy."""
    from ekinet import online

    y = np.sin(np.linspace(0, 12, 90)) + 0.1 * np.cos(np.linspace(0, 40, 90))
    runs = [online.online_regression(y, model, ensemble=30, passes=2, window=window, noise=1e-3, rng=4,
                                     dtype="float64", progress=False, device=device,
                                     randomization=ekinet.Randomization(scale=0.01, every=25))
            for device in ("cpu", "cuda")]
    assert isinstance(runs[1].predictions, np.ndarray) and isinstance(runs[1].ensemble, np.ndarray)
    assert runs[1].settings["device"] == "cuda"
    np.testing.assert_allclose(runs[1].predictions, runs[0].predictions, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(runs[1].spread, runs[0].spread, rtol=1e-6, atol=1e-10)
    np.testing.assert_allclose(runs[1].ensemble, runs[0].ensemble, rtol=1e-8, atol=1e-10)
    assert runs[1].final < runs[1].persistence_error


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("cells", [("lstm",), ("rnn",), ("lstm", "rnn")])
def test_forward_cuda_one_step_at_a_time_equals_the_sequence(cells, cp, rng):
    """Eight one-step calls (the whole-network path of online steps) carrying the device state equal one call
    over the 8 steps (the layer-by-layer path), outputs of every step and the final state, with 40 members and
    3 sequences; and so do the eight steps with Context.whole_networks off."""
    from test_nn import assert_close, inputs, random_state

    from ekinet import nn
    from ekinet._native import context_for

    def build(steps):
        layers = [(nn.LSTM if c == "lstm" else nn.RNN)(4, return_sequences=True) for c in cells]
        return nn.Sequential([nn.Dense(3, "tanh")] + layers + [nn.Dense(2)], (steps, 3))

    whole, step = build(8), build(1)
    U, X = inputs(whole, 40, 3, rng)
    U, X, state = cp.asarray(U), cp.asarray(X), cp.asarray(random_state(whole, 40, 3, rng))
    out, final = whole.forward(U, X, state=state, return_state=True, backend="native")
    context = context_for(cp)
    initial = state
    try:
        for whole_networks in (True, False):  # one launch a step, then layer by layer
            context.whole_networks = whole_networks
            state = initial
            for t in range(8):
                got, state = step.forward(U, X[:, t:t + 1], state=state, return_state=True, backend="native")
                assert_close(_host(got[:, :, 0]), _host(out[:, :, t]), 1e-12, f"step {t} ({whole_networks})")
            assert_close(_host(state), _host(final), 1e-12, f"state ({whole_networks})")
    finally:
        context.whole_networks = True


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("cells", [("lstm",), ("rnn",), ("lstm", "rnn")])
def test_forward_cuda_state_carried_across_halves(cells, cp, rng):
    """Steps 1..4 then 5..8 from the returned device state equal the 8 steps at once (state in and out on CUDA)."""
    from test_nn import assert_close, inputs, random_state

    from ekinet import nn

    def build(steps):
        layers = [(nn.LSTM if c == "lstm" else nn.RNN)(4, return_sequences=i + 1 < len(cells))
                  for i, c in enumerate(cells)]
        return nn.Sequential(layers + [nn.Dense(2)], (steps, 3))

    whole, half = build(8), build(4)
    U, X = inputs(whole, 3, 5, rng)
    U, X, initial = cp.asarray(U), cp.asarray(X), cp.asarray(random_state(whole, 3, 5, rng))
    out, state = whole.forward(U, X, state=initial, return_state=True, backend="native")
    _, middle = half.forward(U, X[:, :4], state=initial, return_state=True, backend="native")
    assert isinstance(middle, cp.ndarray)
    out2, state2 = half.forward(U, X[:, 4:], state=middle, return_state=True, backend="native")
    assert_close(_host(out2), _host(out), 1e-12, "outputs")
    assert_close(_host(state2), _host(state), 1e-12, "state")


@pytest.mark.cuda
@cuda
def test_forward_cuda_chunked_members_and_a_failed_member(cp, rng):
    """A CNN too large for the whole-network path (cnn-mnist's layers with a 600-unit head: 1 MB of float64
    parameters, more than a block's shared memory) runs layer by layer: with J = 70, B = 50 in float64, in two
    chunks of members (the workspace spills and regrows between them on a fresh context); every member equals
    the CPU's. U and X are temporaries of the call: their views keep them alive (before they did, CuPy's pool
    gave U's memory to X, and member 0 came out wrong). cnn-mnist itself runs whole per image, with nothing in
    the workspace but the NaN counter of X. A member with NaN parameters fails alone (NaN through relu,
    max-pooling, heaviside and softmax on the GPU)."""
    from test_nn import RTOL64, assert_close, inputs

    from ekinet import _core, nn

    net = nn.Sequential(list(nn.cnn_mnist().layers[:-1]) + [nn.Dense(600, "tanh"), nn.Dense(10)], (1, 28, 28))
    U, X = inputs(net, 70, 50, rng)
    expected = net.forward(U, X, backend="native")  # the CPU core
    context = _core.make_cuda_context(cp.cuda.Device().id)  # fresh: every buffer of the first chunk spills
    for attempt in range(2):  # then again after the workspace is released
        G = cp.empty((70, 50 * net.output_size))
        _core.forward(context, net._network, _native_view(cp.asarray(U)),
                      _native_view(cp.asarray(X.reshape(50, -1))), _native_view(G), None, None)
        context.synchronize()
        assert_close(_host(G).reshape(expected.shape), expected, RTOL64, f"chunked wide cnn ({attempt})")
        assert context.workspace_bytes > 2**20
        context.release_workspace()
        assert context.workspace_bytes == 0
    got = net.forward(cp.asarray(U), cp.asarray(X), backend="native")
    assert_close(_host(got), expected, RTOL64, "chunked wide cnn, cached context")

    net = nn.cnn_mnist()
    U, X = inputs(net, 70, 50, rng)
    expected = net.forward(U, X, backend="native")
    for attempt in range(2):  # the second call's reset turns the first one's spilled counter into the block
        G = cp.empty((70, 50 * net.output_size))
        _core.forward(context, net._network, _native_view(cp.asarray(U)),
                      _native_view(cp.asarray(X.reshape(50, -1))), _native_view(G), None, None)
        context.synchronize()
        assert_close(_host(G).reshape(expected.shape), expected, RTOL64, f"whole cnn-mnist ({attempt})")
    assert context.workspace_bytes <= 4096
    context.whole_networks = False  # layer by layer, as before the whole-network path: the same outputs
    for attempt in range(2):
        _core.forward(context, net._network, _native_view(cp.asarray(U)),
                      _native_view(cp.asarray(X.reshape(50, -1))), _native_view(G), None, None)
        context.synchronize()
        assert_close(_host(G).reshape(expected.shape), expected, RTOL64, f"layered cnn-mnist ({attempt})")
    assert context.workspace_bytes > 2**20

    net = nn.Sequential([nn.Conv2d(2, 3, activation="relu"), nn.MaxPool2d(2), nn.Flatten(), nn.Dense(4, "heaviside"),
                         nn.Dense(3, "softmax")], (1, 6, 6))
    U, X = inputs(net, 4, 3, rng)
    U[2, 0] = np.nan
    out = _host(net.forward(cp.asarray(U), cp.asarray(X), backend="native"))
    assert np.all(np.isnan(out[2]))
    assert np.all(np.isfinite(np.delete(out, 2, axis=0)))


@pytest.mark.cuda
@cuda
def test_forward_cuda_bad_input(cp, rng):
    """The checks of test_nn.test_forward_bad_input on device arrays (NaN counted on the GPU), and a host array
    mixed with device ones."""
    from test_nn import inputs

    from ekinet import nn

    net = nn.Sequential([nn.Conv2d(2, 3, activation="relu"), nn.Flatten(), nn.Dense(3)], (1, 5, 5))
    U, X = (cp.asarray(a) for a in inputs(net, 3, 4, rng, "float32"))
    P = net.parameter_count
    with pytest.raises(ValueError, match=r"X has shape \(4, 24\)"):
        net.forward(U, X.reshape(4, 25)[:, :24], backend="native")
    with pytest.raises(ValueError, match=rf"U has {P - 1} parameters per member"):
        net.forward(U[:, 1:], X, backend="native")
    bad = X.copy()
    bad[1, 0, 2, 2] = cp.nan
    bad[3, 0, 0, 0] = cp.inf
    with pytest.raises(ValueError, match=r"X contains 2 NaN/Inf value"):
        net.forward(U, bad, backend="native")
    with pytest.raises(TypeError, match=r"X has dtype float64 but U is float32"):
        net.forward(U, X.astype(cp.float64), backend="native")
    with pytest.raises(ValueError, match=r"X is not a CuPy \(GPU\) array like U; pass all arrays on one device"):
        net.forward(U, _host(X), backend="native")


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("name", ["dnn-2", "cnn-mnist", "rnn-mnist", "lstm-regressor", "dense-per-step-softmax"])
def test_reference_forward_on_cupy_equals_numpy(name, cp, rng):
    """The array-namespace reference runs on CuPy arrays (the fallback without the CUDA core) and gives the NumPy
    reference's numbers."""
    from test_nn import RTOL64, assert_close, inputs

    factory, J, B = CUDA_NETWORKS[name]
    net = factory("float64")
    U, X = inputs(net, J, B, rng)
    got = net.forward(cp.asarray(U), cp.asarray(X), backend="reference")
    assert isinstance(got, cp.ndarray)
    assert_close(_host(got), net.forward(U, X, backend="reference"), RTOL64, name)


@pytest.mark.cuda
@cuda
def test_trainer_on_the_gpu_learns(cp):
    """Trainer(device="cuda"): data, ensemble and updates on the device; it learns, as on the CPU: the same draws
    (counter-based) give the same run up to rounding; and its predictions come back as CuPy arrays."""
    from ekinet import datasets
    from ekinet.train import Trainer

    train, test = datasets.load_mnist_small("train"), datasets.load_mnist_small("test")
    final = {}
    for device in ("cpu", "cuda"):
        trainer = Trainer("mlp:784-16-10", train.subset(np.arange(1500)), test=test.subset(np.arange(500)),
                          ensemble=40, epochs=2, progress=False, device=device)
        final[device] = trainer.fit()[-1]
    assert isinstance(trainer.optimizer.ensemble, cp.ndarray)
    for metric in ("test_accuracy_mean", "test_accuracy_ensemble"):
        assert final["cuda"][metric] > 0.3  # chance is 0.1; the CPU run reaches 0.45
        assert abs(final["cuda"][metric] - final["cpu"][metric]) <= 0.02, metric
    assert isinstance(trainer.predict(test.x[:10]), cp.ndarray)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("hidden", [False, True], ids=["input-span", "hidden-span"])
def test_trainer_with_input_span_draws_learns_on_the_gpu_as_on_the_cpu(hidden, cp):
    """The input-span update on the device (the batch's basis from the same LAPACK eigenvectors as on the CPU,
    the CUDA core in the span's coordinates) gives the CPU's run up to rounding: after one epoch (15 updates)
    the mean particle's accuracy is the CPU run's within 3 points, far above chance. With hidden spans,
    784-128-10 at batches of 100 draws the readout's weights in the span of the centre's 128 hidden features."""
    from ekinet import datasets
    from ekinet.train import RandomizationSchedule, Trainer

    train, test = datasets.load_mnist_small("train"), datasets.load_mnist_small("test")
    runs = {}
    for device in ("cpu", "cuda"):
        trainer = Trainer("mlp:784-128-10" if hidden else "mlp:784-16-10", train.subset(np.arange(1500)),
                          test=test.subset(np.arange(500)), ensemble=40, epochs=1, progress=False, device=device,
                          randomization=RandomizationSchedule(input_span=True, hidden_span=hidden, centred=True))
        runs[device] = trainer.fit()[-1]["test_accuracy_mean"]
    assert runs["cuda"] > 0.3  # chance is 0.1; the CPU runs reach 0.43 (input span) and 0.40 (hidden span)
    assert abs(runs["cuda"] - runs["cpu"]) <= 0.03  # the Gram matrix is formed on each device: rounding differs


@pytest.mark.cuda
@cuda
def test_hidden_span_coordinates_on_cupy_equal_numpy(cp):
    """Subspace on CuPy arrays (the later layer mapped back into a strided view of the reused workspace by
    cupy.matmul(out=...)) gives NumPy's coordinates and outputs, and a second forward through the reused
    workspace gives the second members' outputs."""
    from test_input_span import network_and_batch

    from ekinet.input_span import InputSpan

    net, X = network_and_batch(batch=4, features=20, hidden_units=9)
    std = net.prior_std("float64", bias_std=0.1)
    centre = net.prior(1, rng=1, dtype="float64", bias_std=0.1)[0]
    host = InputSpan(net, std, hidden=True).subspace(X, centre=centre)
    device = InputSpan(net, cp.asarray(std), hidden=True).subspace(cp.asarray(X), centre=cp.asarray(centre))
    assert [(b.layer, b.rank) for b in device.blocks] == [(0, 4), (1, 4)]
    reduced_centre = host.reduce(centre)
    np.testing.assert_allclose(_host(device.reduce(cp.asarray(centre))), reduced_centre, rtol=1e-12, atol=1e-14)
    for seed in (2, 3):
        draws = np.random.default_rng(seed).standard_normal((6, host.parameter_count))
        V = reduced_centre + 0.3 * host.prior_std * draws
        got = device.forward(cp.asarray(V), backend="reference")
        assert isinstance(got, cp.ndarray)
        np.testing.assert_allclose(_host(got), host.forward(V, backend="reference"), rtol=1e-10, atol=1e-12)
        expanded = device.expand(cp.asarray(V), cp.asarray(centre), cp.asarray(reduced_centre))
        np.testing.assert_allclose(_host(expanded), host.expand(V, centre, reduced_centre), rtol=1e-12, atol=1e-14)


def _native_view(a):
    from ekinet._native import view

    return view(a)


# --------------------------------------------------------------------------------------------------------------
# the solve's rescues on cuSOLVER, streams
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("formulation", ["ensemble", "observation"])
@pytest.mark.parametrize("dtype,noise,g_scale", [
    (np.float64, 1e-300, 1.0), (np.float64, 1e-320, 1.0), (np.float64, 1.0, 1e160),
    (np.float32, 1e-30, 1.0), (np.float32, 1e-40, 1.0), (np.float32, 1.0, 1e20), (np.float32, 1e-300, 1.0),
], ids=["f64-1e-300", "f64-1e-320", "f64-G1e160", "f32-1e-30", "f32-1e-40", "f32-G1e20", "f32-1e-300"])
def test_cuda_extreme_scales_never_return_nan_silently(dtype, noise, g_scale, formulation, cp, rng):
    """cuSOLVER's potrf info > 0, the jittered retry and the syevd fallback: the result is finite with the rescue
    counted and warned about, or a clear FloatingPointError / ValueError (as on the CPU)."""
    import warnings

    U, G, y = make_problem(5, 8, 20, rng)
    U, G, y = U.astype(dtype), (g_scale * G).astype(dtype), y.astype(dtype)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            out, info = ekinet.kalman_update(cp.asarray(U), cp.asarray(G), cp.asarray(y), noise, return_info=True,
                                             formulation=formulation, backend="native")
        except (FloatingPointError, ValueError) as error:
            assert str(error)
            return
    assert np.all(np.isfinite(_host(out))), f"non-finite result returned silently ({info})"
    rescued = info["cholesky_jitter_retries"] + info["eigen_fallbacks"]
    assert bool(rescued) == any(issubclass(w.category, ekinet.NumericalWarning) for w in caught)


@pytest.mark.cuda
@cuda
def test_cuda_tiny_noise_is_rescued(cp, rng):
    """M > J with noise 1e-300: C^ww + Gamma/h is singular, cuSOLVER's potrf reports it (info > 0) and the
    jittered Cholesky or the eigen-decomposition gives a finite update."""
    U, G, y = make_problem(5, 8, 20, rng)
    with pytest.warns(ekinet.NumericalWarning, match=r"ill-conditioned"):
        out, info = ekinet.kalman_update(cp.asarray(U), cp.asarray(G), cp.asarray(y), 1e-300,
                                         formulation="observation", backend="native", return_info=True)
    assert info["cholesky_jitter_retries"] + info["eigen_fallbacks"] >= 1
    out = _host(out)
    assert np.all(np.isfinite(out)) and np.all(np.abs(out - U) < 1e3 * (1 + np.abs(U)))


@pytest.mark.cuda
@cuda
def test_cuda_streams(cp, rng):
    """Calls on a non-blocking CuPy stream, and on the null stream again after that stream is destroyed, give the
    null stream's results (the context follows the current stream and never touches a dead one)."""
    from ekinet import nn

    U, G, y = (cp.asarray(a) for a in make_problem(12, 30, 6, rng))
    net = nn.Sequential([nn.LSTM(4), nn.Dense(2)], (3, 2))
    W = cp.asarray(net.prior(7, rng=1, dtype="float64"))
    X = cp.asarray(rng.standard_normal((5, 3, 2)))
    expected = [_host(ekinet.kalman_update(U, G, y, 0.5, rng=3, formulation=f, backend="native"))
                for f in ("ensemble", "observation")]
    expected_out = _host(net.forward(W, X, backend="native"))
    for _ in range(3):
        stream = cp.cuda.Stream(non_blocking=True)
        with stream:
            got = [ekinet.kalman_update(U, G, y, 0.5, rng=3, formulation=f, backend="native")
                   for f in ("ensemble", "observation")]
            out = net.forward(W, X, backend="native")
            stream.synchronize()
        del stream  # destroyed: the next call must not synchronise its handle
        for a, b in zip(got, expected):
            np.testing.assert_allclose(_host(a), b, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(_host(out), expected_out, rtol=1e-12, atol=1e-12)
        again = ekinet.kalman_update(U, G, y, 0.5, rng=3, formulation="observation", backend="native")
        np.testing.assert_allclose(_host(again), expected[1], rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------------------------------
# more than 2^31 elements (64-bit indexing in every kernel, cuBLAS on a > 8 GiB operand)
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.cuda
@cuda
def test_cuda_more_than_2_31_elements(cp):
    """A float32 ensemble of J x P = 2048 x 1114112 (2.3e9 elements; the whole last row lies past 2^31): the
    mean, the spread, the randomisation's draws, both Kalman formulations, the in-place (blocked) update and the
    NaN count are checked on columns at both ends against the same operations on those columns alone or on the
    host. Needs about 40 GiB of free device memory."""
    from ekinet import _core
    from ekinet._native import context_for
    from ekinet.reference.rng import STREAM_RANDOMIZATION, standard_normal

    J, P, M = 2048, (1 << 20) + (1 << 16), 4
    assert (J - 1) * P > 2**31
    free, _ = cp.cuda.runtime.memGetInfo()
    if free < 40 * 2**30:
        pytest.skip(f"needs about 40 GiB of free device memory, {free / 2**30:.1f} GiB free")
    host_rng = np.random.default_rng(5)
    U = cp.random.RandomState(7).standard_normal((J, P), dtype=cp.float32)
    cols = np.array([0, 1, 2, P // 2, P - 3, P - 2, P - 1])
    U_cols = cp.ascontiguousarray(U[:, cp.asarray(cols)])
    G = cp.asarray(host_rng.standard_normal((J, M)), dtype=cp.float32)
    y = cp.asarray(host_rng.standard_normal(M), dtype=cp.float32)
    host_cols = _host(U_cols).astype(np.float64)
    mean_cols = host_cols.mean(axis=0)

    # column_mean
    np.testing.assert_allclose(_host(ekinet.ensemble_mean(U))[cols], mean_cols, rtol=1e-5, atol=1e-6)
    # centred sum of squares over every entry (two-pass in float64 on CuPy, row blocks to bound the temporary)
    mean64 = U.mean(axis=0, dtype=cp.float64)
    total = sum(float(cp.sum((U[r:r + 256].astype(cp.float64) - mean64) ** 2)) for r in range(0, J, 256))
    assert ekinet.ensemble_spread(U) == pytest.approx(total / J, rel=1e-6)
    del mean64

    # fill_normal with the column scale and the mean as offset: draws (r * P + c) of the randomisation stream
    std = cp.asarray(host_rng.uniform(0.5, 2.0, P), dtype=cp.float32)
    R = ekinet.randomize(U, 0.3, prior_std=std, rng=11, backend="native")
    rows = np.array([0, 1, J // 2, J - 2, J - 1])
    got = _host(R[cp.asarray(rows)][:, cp.asarray(cols)]).astype(np.float64)
    del R
    z = standard_normal(np, 11, STREAM_RANDOMIZATION, (rows[:, None] * P + cols[None, :]).astype(np.uint64))
    expected = mean_cols + 0.3 * _host(std)[cols].astype(np.float64) * z
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)

    # both formulations act on each column alone: the full update's columns equal the update of those columns
    for formulation in ("ensemble", "observation"):
        full = ekinet.kalman_update(U, G, y, 0.5, formulation=formulation, backend="native")
        part = ekinet.kalman_update(U_cols, G, y, 0.5, formulation=formulation, backend="native")
        got, want = _host(full[:, cp.asarray(cols)]).astype(np.float64), _host(part).astype(np.float64)
        del full
        scale = np.max(np.abs(want))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * scale, err_msg=formulation)
        if formulation == "ensemble":
            ensemble_cols = got
    # in place: a column block at a time through the bounded copy (64 MiB = 8192 columns here)
    V = U.copy()
    _core.kalman_update(context_for(cp), _native_view(V), _native_view(G), _native_view(y), "scalar", 0.5, None,
                        None, None, 1.0, "ensemble", "redraw", 0, "ensemble", _native_view(V))
    np.testing.assert_allclose(_host(V[:, cp.asarray(cols)]).astype(np.float64), ensemble_cols, rtol=1e-4,
                               atol=1e-4 * np.max(np.abs(ensemble_cols)))
    del V

    # the NaN count reaches the last entry
    U[J - 1, P - 1] = cp.nan
    with pytest.raises(ValueError, match=r"\bU contains 1 NaN/Inf value\b"):
        ekinet.kalman_update(U, G, y, 0.5, formulation="observation", backend="native")

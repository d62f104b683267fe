"""Batched ensemble networks (ekinet.nn): the native forward pass against the NumPy reference for every layer
and configuration and for the paper's networks, the recurrent state, the PyTorch parameter layout, the Glorot
prior, the string forms, and bad input.

Tolerances. float64: the native core and the reference evaluate the same formulas with the same operations, so
they agree to rounding: RTOL64 = 1e-10 of the largest output (observed: 0 to 1e-15). float32: the native float32
pass is compared with the float64 reference evaluated on the same float32 numbers (U, X, state cast up), so the
difference is the native pass's own float32 rounding. A dot product of length K has a rounding error of
typically sqrt(K) eps32 (at most K eps32) times the sum of the magnitudes of its terms, which with Glorot weights
is of the order of the output; the largest K here is 784 (sqrt(K) eps32 = 3.3e-6), and tanh, sigmoid, ReLU and the
max do not amplify errors. A few layers or 28 recurrent steps add such errors: RTOL32 = 2e-5 of the largest
output (observed: at most 3.4e-7, for DNN 1 and rnn-mnist).
"""

import numpy as np
import pytest

import ekinet
from ekinet import _core, nn
from ekinet import reference as ref
from ekinet.reference.forward import activate

RTOL64 = 1e-10
RTOL32 = 2e-5
DTYPES = ["float64", "float32"]
ACTIVATIONS = ["identity", "relu", "tanh", "sigmoid", "heaviside", "softmax"]


def _scale(a):
    a = np.asarray(a, dtype=np.float64)
    finite = a[np.isfinite(a)]
    return max(float(np.max(np.abs(finite))) if finite.size else 0.0, 1e-300)


def assert_close(got, expected, rtol, what=""):
    """Same shape, NaN in the same places, and max |got - expected| <= rtol * max |expected|."""
    got = np.asarray(got)
    expected = np.asarray(expected)
    assert got.shape == expected.shape, f"{what}: shape {got.shape} != {expected.shape}"
    nan_got, nan_expected = np.isnan(got), np.isnan(expected)
    assert np.array_equal(nan_got, nan_expected), f"{what}: NaN in different places"
    g, e = got[~nan_got].astype(np.float64), expected[~nan_expected].astype(np.float64)
    if g.size:
        error = float(np.max(np.abs(g - e)))
        assert error <= rtol * _scale(e), f"{what}: error {error:.3e} > {rtol:.1e} x scale {_scale(e):.3e}"


def inputs(net, J, B, rng, dtype="float64", bias_std=0.3, x_scale=1.0):
    """A seeded prior with non-zero biases (so bias handling is tested) and a standard normal batch."""
    U = net.prior(J, rng=rng, dtype=dtype, bias_std=bias_std)
    X = (x_scale * rng.standard_normal((B,) + net.input_shape)).astype(dtype)
    return U, X


def random_state(net, J, B, rng, dtype="float64"):
    return (0.5 * rng.standard_normal((J, B * net.state_size))).astype(dtype)


def check_native_equals_reference(net, U, X, state=None, dtype="float64", what=""):
    """Native outputs (and state) in `dtype` against the float64 reference on the same (rounded) numbers."""
    got, got_state = net.forward(U, X, state=state, return_state=True, backend="native")
    up = (lambda a: None if a is None else np.asarray(a, dtype=np.float64))
    expected, expected_state = ref.forward(net, up(U), up(X), up(state))
    rtol = RTOL64 if dtype == "float64" else RTOL32
    assert got.dtype == np.dtype(dtype)
    assert got.shape == (U.shape[0], X.shape[0]) + net.output_shape
    assert_close(got, expected, rtol, f"{what} outputs")
    assert got_state.shape == (U.shape[0], X.shape[0] * net.state_size)
    assert_close(got_state, expected_state, rtol, f"{what} state")
    # The public reference backend gives the reference's result in U's dtype.
    via_api, via_api_state = net.forward(U, X, state=state, return_state=True, backend="reference")
    assert via_api.dtype == np.dtype(dtype) and via_api.shape == got.shape
    assert_close(via_api, expected, rtol, f"{what} reference backend")
    assert_close(via_api_state, expected_state, rtol, f"{what} reference state")
    return got, expected


# --------------------------------------------------------------------------------------------------------------
# every layer type, native against reference
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_dense_each_activation(activation, dtype, rng):
    hidden = "tanh" if activation == "softmax" else activation
    net = nn.Sequential([nn.Dense(6, hidden), nn.Dense(4, activation)], input_shape=(5,))
    U, X = inputs(net, 4, 7, rng, dtype)
    if activation == "heaviside" and dtype == "float32":
        # A step: float32 rounding may flip a pre-activation within rounding of 0, so compare one layer and
        # only where the float64 pre-activation is clear of 0.
        net = nn.Sequential([nn.Dense(6, "heaviside")], input_shape=(5,))
        pre = nn.Sequential([nn.Dense(6)], input_shape=(5,))
        U, X = inputs(net, 4, 7, rng, dtype)
        got = net.forward(U, X)
        z = pre.forward(U.astype(np.float64), X.astype(np.float64))
        clear = np.abs(z) > 1e-4
        assert clear.mean() > 0.99
        assert np.array_equal(got[clear], (z[clear] > 0).astype(np.float32))
        return
    got, _ = check_native_equals_reference(net, U, X, dtype=dtype, what=activation)
    if activation == "softmax":
        np.testing.assert_allclose(got.sum(axis=-1), 1.0, rtol=1e-5)
    if activation == "heaviside":
        assert set(np.unique(got)) <= {0.0, 1.0}


def test_activations_of_the_reference_keep_nan():
    v = np.array([-2.0, -0.0, 0.0, 3.0, np.nan])
    np.testing.assert_array_equal(activate(np, v, "heaviside"), [0, 0, 0, 1, np.nan])
    np.testing.assert_array_equal(activate(np, v, "relu"), [0, 0, 0, 3, np.nan])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ["relu", "softmax"])
def test_dense_on_every_step_of_a_sequence(activation, dtype, rng):
    """Dense on (steps, features) input acts per step; softmax normalises each step."""
    net = nn.Sequential([nn.Dense(4, "tanh"), nn.Dense(3, activation)], input_shape=(6, 5))
    assert net.output_shape == (6, 3)
    U, X = inputs(net, 3, 4, rng, dtype)
    got, _ = check_native_equals_reference(net, U, X, dtype=dtype)
    if activation == "softmax":
        np.testing.assert_allclose(got.sum(axis=-1), 1.0, rtol=1e-5)
    # Step t of example b alone gives the same row.
    single = nn.Sequential([nn.Dense(4, "tanh"), nn.Dense(3, activation)], input_shape=(5,))
    np.testing.assert_allclose(single.forward(U, X[1, 2][None])[:, 0], got[:, 1, 2], rtol=1e-5)


CONV_CASES = {
    # (in_shape, channels, kernel, stride, padding, activation)
    "3x3": ((1, 6, 6), 2, 3, 1, 0, "relu"),
    "stride2-pad1-rect": ((3, 7, 5), 4, 3, 2, 1, "tanh"),
    "kernel-equals-padded-image": ((2, 3, 3), 3, 5, 1, 1, "sigmoid"),
    "1x1": ((2, 4, 4), 3, 1, 1, 0, "identity"),
    "stride3-kernel2": ((1, 9, 8), 2, 2, 3, 0, "heaviside"),
    "pad2-stride2": ((2, 5, 6), 3, 3, 2, 2, "relu"),
    # more output channels than the CPU computes at once (16 float, 8 double lanes), the last block part-full
    "channels20-pad1": ((2, 6, 7), 20, 3, 1, 1, "relu"),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv2d(case, dtype, rng):
    shape, channels, kernel, stride, padding, activation = CONV_CASES[case]
    if activation == "heaviside" and dtype == "float32":
        activation = "relu"  # the step is checked in float64 (a float32 flip near 0 is not an error)
    conv = nn.Conv2d(channels, kernel, stride=stride, padding=padding, activation=activation)
    net = nn.Sequential([conv], input_shape=shape)
    expected_hw = [(n + 2 * padding - kernel) // stride + 1 for n in shape[1:]]
    assert net.output_shape == (channels, *expected_hw)
    U, X = inputs(net, 3, 4, rng, dtype)
    check_native_equals_reference(net, U, X, dtype=dtype, what=case)
    # Stacked: a second convolution on the (channel-major) output, then Flatten and Dense.
    stacked = nn.Sequential([conv, nn.Conv2d(2, 1, activation="tanh"), nn.Flatten(), nn.Dense(3)], shape)
    U, X = inputs(stacked, 3, 4, rng, dtype)
    check_native_equals_reference(stacked, U, X, dtype=dtype, what=case + " stacked")


POOL_CASES = {
    "pool-first": [nn.MaxPool2d(2), nn.Flatten(), nn.Dense(3)],
    "pool-first-overlapping": [nn.MaxPool2d(3, stride=1), nn.Conv2d(2, 2, activation="relu")],
    "conv-pool": [nn.Conv2d(3, 3, activation="relu"), nn.MaxPool2d(2)],
    "conv-pool-stride": [nn.Conv2d(3, 2, padding=1), nn.MaxPool2d(3, stride=2), nn.Flatten(), nn.Dense(2, "sigmoid")],
    "conv-pool-wide": [nn.Conv2d(18, 2, activation="tanh"), nn.MaxPool2d(2, stride=1), nn.Conv2d(3, 2),
                       nn.MaxPool2d(2)],
    "pool-pool": [nn.MaxPool2d(2, stride=1), nn.MaxPool2d(2)],
    "flatten-images": [nn.Flatten(), nn.Dense(4, "relu"), nn.Dense(2)],
    "flatten-only": [nn.Flatten()],
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(POOL_CASES))
def test_maxpool_and_flatten(case, dtype, rng):
    net = nn.Sequential(POOL_CASES[case], input_shape=(2, 7, 8))
    U, X = inputs(net, 3, 4, rng, dtype)
    check_native_equals_reference(net, U, X, dtype=dtype, what=case)
    if case == "flatten-only":  # C order per example (NCHW): the batch itself
        np.testing.assert_array_equal(net.forward(U, X)[1], X.reshape(4, -1))
    if case == "pool-pool":
        windows = np.lib.stride_tricks.sliding_window_view(X, (2, 2), axis=(2, 3)).max(axis=(-2, -1))
        windows = np.lib.stride_tricks.sliding_window_view(windows, (2, 2), axis=(2, 3))[:, :, ::2, ::2]
        np.testing.assert_array_equal(net.forward(U, X)[0], windows.max(axis=(-2, -1)))


RECURRENT_CASES = {
    # name: (layers, input_shape)
    "rnn": ([nn.RNN(5), nn.Dense(2)], (6, 3)),
    "rnn-sequences": ([nn.RNN(5, return_sequences=True), nn.Dense(2)], (6, 3)),
    "lstm": ([nn.LSTM(5), nn.Dense(2)], (6, 3)),
    "lstm-sequences": ([nn.LSTM(5, return_sequences=True), nn.Dense(2, "tanh")], (6, 3)),
    "rnn-only-sequences": ([nn.RNN(4, return_sequences=True)], (5, 2)),
    "lstm-only": ([nn.LSTM(4)], (5, 2)),
    "stacked-rnn": ([nn.RNN(4, return_sequences=True), nn.RNN(3), nn.Dense(2)], (5, 2)),
    "stacked-lstm-sequences": ([nn.LSTM(4, return_sequences=True), nn.LSTM(3, return_sequences=True)], (5, 2)),
    "lstm-then-rnn": ([nn.LSTM(4, return_sequences=True), nn.RNN(3), nn.Dense(1)], (5, 2)),
    "rnn-then-lstm": ([nn.RNN(4, return_sequences=True), nn.LSTM(3), nn.Dense(1)], (5, 2)),
    "dense-per-step-then-lstm": ([nn.Dense(4, "relu"), nn.LSTM(3), nn.Dense(1)], (5, 2)),
    "sequences-flattened": ([nn.RNN(3, return_sequences=True), nn.Flatten(), nn.Dense(2)], (4, 2)),
    "one-step": ([nn.LSTM(3), nn.Dense(1)], (1, 2)),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("given_state", [False, True], ids=["zero-state", "given-state"])
@pytest.mark.parametrize("case", list(RECURRENT_CASES))
def test_recurrent(case, given_state, dtype, rng):
    layers, shape = RECURRENT_CASES[case]
    net = nn.Sequential(layers, shape)
    U, X = inputs(net, 3, 4, rng, dtype)
    state = random_state(net, 3, 4, rng, dtype) if given_state else None
    check_native_equals_reference(net, U, X, state, dtype=dtype, what=case)


def test_state_none_equals_zero_state(rng):
    net = nn.Sequential([nn.LSTM(4, return_sequences=True), nn.RNN(3)], (5, 2))
    U, X = inputs(net, 3, 4, rng)
    zero = np.zeros((3, 4 * net.state_size))
    for backend in ("native", "reference"):
        a, sa = net.forward(U, X, return_state=True, backend=backend)
        b, sb = net.forward(U, X, state=zero, return_state=True, backend=backend)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(sa, sb)


def test_recurrent_equations_by_hand():
    """One LSTM and one RNN unit (features 1, hidden 1) on two steps, written out with PyTorch's equations and
    gate order i, f, g, o; independent of the reference code."""
    sig = (lambda v: 1 / (1 + np.exp(-v)))
    net = nn.Sequential([nn.LSTM(1)], (2, 1))
    w_ih = np.array([0.5, -0.3, 0.8, 0.2])  # i, f, g, o
    w_hh = np.array([0.1, 0.4, -0.6, 0.3])
    b_ih = np.array([0.05, 0.2, -0.1, 0.0])
    b_hh = np.array([0.0, 0.1, 0.05, -0.2])
    u = np.concatenate([w_ih, w_hh, b_ih, b_hh])[None]
    x = np.array([[[1.5], [-0.7]]])
    h0, c0 = 0.3, -0.4
    h, c = h0, c0
    for t in range(2):
        z = w_ih * x[0, t, 0] + b_ih + w_hh * h + b_hh
        c = sig(z[1]) * c + sig(z[0]) * np.tanh(z[2])
        h = sig(z[3]) * np.tanh(c)
    for backend in ("native", "reference"):
        out, state = net.forward(u, x, state=np.array([[h0, c0]]), return_state=True, backend=backend)
        np.testing.assert_allclose(out[0, 0], [h], rtol=1e-14)
        np.testing.assert_allclose(state, [[h, c]], rtol=1e-14)

    net = nn.Sequential([nn.RNN(1, return_sequences=True)], (2, 1))
    u = np.array([[0.7, -0.5, 0.1, 0.2]])  # weight_ih, weight_hh, bias_ih, bias_hh
    h1 = np.tanh(0.7 * 1.5 + 0.1 - 0.5 * h0 + 0.2)
    h2 = np.tanh(0.7 * -0.7 + 0.1 - 0.5 * h1 + 0.2)
    for backend in ("native", "reference"):
        out, state = net.forward(u, x, state=np.array([[h0]]), return_state=True, backend=backend)
        np.testing.assert_allclose(out[0, 0, :, 0], [h1, h2], rtol=1e-14)
        np.testing.assert_allclose(state, [[h2]], rtol=1e-14)


@pytest.mark.parametrize("cells", [("lstm",), ("rnn",), ("lstm", "rnn")])
def test_state_carried_across_halves_equals_the_whole_sequence(cells, rng):
    """Running steps 1..4 and then 5..8 from the returned state equals running the 8 steps at once."""

    def build(steps):
        layers = [(nn.LSTM if c == "lstm" else nn.RNN)(4, return_sequences=i + 1 < len(cells))
                  for i, c in enumerate(cells)]
        return nn.Sequential(layers + [nn.Dense(2)], (steps, 3))

    whole, half = build(8), build(4)
    assert whole.parameter_count == half.parameter_count
    U, X = inputs(whole, 3, 5, rng)
    initial = random_state(whole, 3, 5, rng)
    for backend in ("native", "reference"):
        out, state = whole.forward(U, X, state=initial, return_state=True, backend=backend)
        _, middle = half.forward(U, X[:, :4], state=initial, return_state=True, backend=backend)
        out2, state2 = half.forward(U, X[:, 4:], state=middle, return_state=True, backend=backend)
        assert_close(out2, out, 1e-12, f"{backend} outputs")
        assert_close(state2, state, 1e-12, f"{backend} state")


def test_split_state_names_the_layers_blocks(rng):
    net = nn.Sequential([nn.LSTM(4, return_sequences=True), nn.RNN(3), nn.Dense(2)], (5, 2))
    assert net.state_size == 4 + 4 + 3
    U, X = inputs(net, 2, 3, rng)
    out, state = net.forward(U, X, return_state=True)
    parts = net.split_state(state)
    assert list(parts) == ["0.h", "0.c", "1.h"]
    assert [p.shape for p in parts.values()] == [(2, 3, 4), (2, 3, 4), (2, 3, 3)]
    # Layer 1's last hidden state is what the Dense layer read: out = h W^T + b.
    W, b = net.weights(U, 1, "2.weight"), net.weights(U, 1, "2.bias")
    np.testing.assert_allclose(out[1], parts["1.h"][1] @ W.T + b, rtol=1e-12)
    # Views: writing into them builds a state.
    fresh = np.zeros_like(state)
    net.split_state(fresh)["1.h"][...] = parts["1.h"]
    assert np.count_nonzero(fresh) == parts["1.h"].size


# --------------------------------------------------------------------------------------------------------------
# the paper's networks and edge shapes
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_dnn(k, dtype, rng):
    net = nn.dnn(k)
    U, X = inputs(net, 3, 5, rng, dtype)
    check_native_equals_reference(net, U, X, dtype=dtype, what=f"DNN {k}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_cnn_mnist(dtype, rng):
    net = nn.from_string("cnn-mnist")
    assert net.parameter_count == 6150
    U, X = inputs(net, 3, 2, rng, dtype)
    X = np.abs(X)  # pixel-like
    check_native_equals_reference(net, U, X, dtype=dtype, what="cnn-mnist")


@pytest.mark.parametrize("dtype", DTYPES)
def test_rnn_mnist_reads_rows_as_28_steps(dtype, rng):
    net = nn.from_string("rnn-mnist")
    assert net.input_shape == (28, 28) and net.output_shape == (10,)
    assert net.parameter_count == (128 * 28 + 128 * 128 + 256) + (2 * 128 * 128 + 256) + (128 * 10 + 10)
    U, X = inputs(net, 2, 3, rng, dtype)
    images = rng.uniform(0, 1, (3, 28, 28)).astype(dtype)
    check_native_equals_reference(net, U, images, dtype=dtype, what="rnn-mnist")
    # Flattened 784-pixel images are the same input.
    np.testing.assert_array_equal(net.forward(U, images.reshape(3, 784)), net.forward(U, images))


@pytest.mark.parametrize("dtype", DTYPES)
def test_lstm_regressor(dtype, rng):
    net = nn.from_string("lstm:1-32-1", steps=20)
    assert net.input_shape == (20, 1) and net.output_shape == (1,)
    assert net.parameter_count == 4 * 32 * (1 + 32 + 2) + 33
    U, X = inputs(net, 4, 6, rng, dtype)
    state = random_state(net, 4, 6, rng, dtype)
    check_native_equals_reference(net, U, X, state, dtype=dtype, what="lstm regressor")


EDGE_NETWORKS = {
    "mlp": lambda: nn.mlp([3, 4, 2], output_activation="softmax"),
    "conv": lambda: nn.Sequential([nn.Conv2d(2, 3, padding=1, activation="relu"), nn.MaxPool2d(2), nn.Flatten(),
                                   nn.Dense(2)], (1, 4, 4)),
    "lstm-one-step": lambda: nn.Sequential([nn.LSTM(3, return_sequences=True), nn.Dense(1)], (1, 2)),
    "rnn-one-step": lambda: nn.Sequential([nn.RNN(3, return_sequences=True), nn.RNN(2)], (1, 1)),
}


@pytest.mark.parametrize("J,B", [(1, 1), (1, 5), (5, 1)])
@pytest.mark.parametrize("name", list(EDGE_NETWORKS))
def test_edge_shapes(name, J, B, rng):
    net = EDGE_NETWORKS[name]()
    U, X = inputs(net, J, B, rng)
    state = random_state(net, J, B, rng) if net.state_size else None
    check_native_equals_reference(net, U, X, state, what=f"{name} J={J} B={B}")


def test_chunked_members_equal_the_reference(rng):
    """J = 70 members of cnn-mnist on B = 50 images in float64: 15.8 MB of workspace per member, so the native
    pass (1 GiB budget per chunk) runs them in chunks (67 + 3). The workspace stops growing below J = 70, which
    shows the chunking from the outside; the outputs still equal the reference (evaluated 10 members at a
    time)."""
    net = nn.cnn_mnist()
    J, B = 70, 50
    assert net.workspace_bytes(69, B, "float64") == net.workspace_bytes(J, B, "float64")
    assert net.workspace_bytes(2, B, "float64") < net.workspace_bytes(3, B, "float64")
    U, X = inputs(net, J, B, rng)
    got = net.forward(U, X)
    expected = np.concatenate([ref.forward(net, U[j:j + 10], X)[0] for j in range(0, J, 10)])
    assert_close(got, expected, RTOL64, "chunked cnn-mnist")
    assert len({row.tobytes() for row in got}) == J  # every member distinct: chunk offsets are right


@pytest.mark.parametrize("backend", ["native", "reference"])
def test_a_member_with_nan_parameters_fails_alone(backend, rng):
    net = nn.Sequential([nn.Conv2d(2, 3, activation="relu"), nn.MaxPool2d(2), nn.Flatten(), nn.Dense(4, "heaviside"),
                         nn.Dense(3, "softmax")], (1, 6, 6))
    U, X = inputs(net, 4, 3, rng)
    U[2, 0] = np.nan
    out = net.forward(U, X, backend=backend)
    assert np.all(np.isnan(out[2]))
    assert np.all(np.isfinite(np.delete(out, 2, axis=0)))


# --------------------------------------------------------------------------------------------------------------
# parameter layout (PyTorch's names, shapes and order)
# --------------------------------------------------------------------------------------------------------------


def _expect_layout(net, expected):
    """expected: [(name, shape)] in order; offsets are consecutive."""
    offset, layout = 0, {}
    for name, shape in expected:
        layout[name] = (offset, shape)
        offset += int(np.prod(shape))
    assert net.parameters == layout
    assert list(net.parameters) == [name for name, _ in expected]
    assert net.parameter_count == offset


def test_layout_matches_pytorch_linear_and_conv2d():
    # nn.Conv2d(3, 4, 5).weight (4, 3, 5, 5), bias (4,); nn.Linear(in, out).weight (out, in), bias (out,)
    net = nn.Sequential([nn.Conv2d(4, 5, stride=2, padding=1), nn.MaxPool2d(2), nn.Flatten(), nn.Dense(6),
                         nn.Dense(2)], (3, 16, 16))
    assert net.shapes == [(3, 16, 16), (4, 7, 7), (4, 3, 3), (36,), (6,), (2,)]
    _expect_layout(net, [("0.weight", (4, 3, 5, 5)), ("0.bias", (4,)), ("3.weight", (6, 36)), ("3.bias", (6,)),
                         ("4.weight", (2, 6)), ("4.bias", (2,))])


def test_layout_matches_pytorch_rnn_and_lstm():
    # nn.RNN(3, 5): weight_ih_l0 (5, 3), weight_hh_l0 (5, 5), bias_ih_l0 (5,), bias_hh_l0 (5,);
    # nn.LSTM(5, 7): weight_ih_l0 (28, 5), weight_hh_l0 (28, 7), bias_ih_l0 (28,), bias_hh_l0 (28,)
    net = nn.Sequential([nn.RNN(5, return_sequences=True), nn.LSTM(7), nn.Dense(2)], (9, 3))
    assert net.shapes == [(9, 3), (9, 5), (7,), (2,)]
    assert net.state_size == 5 + 2 * 7
    _expect_layout(net, [("0.weight_ih", (5, 3)), ("0.weight_hh", (5, 5)), ("0.bias_ih", (5,)), ("0.bias_hh", (5,)),
                         ("1.weight_ih", (28, 5)), ("1.weight_hh", (28, 7)), ("1.bias_ih", (28,)),
                         ("1.bias_hh", (28,)), ("2.weight", (2, 7)), ("2.bias", (2,))])


def test_weights_returns_the_members_tensor(rng):
    net = nn.Sequential([nn.Conv2d(2, 3), nn.Flatten(), nn.Dense(3)], (1, 5, 5))
    U = net.prior(4, rng=rng, dtype="float64", bias_std=1.0)
    for name, (offset, shape) in net.parameters.items():
        w = net.weights(U, 2, name)
        assert w.shape == shape
        np.testing.assert_array_equal(w.ravel(), U[2, offset:offset + w.size])
    np.testing.assert_array_equal(net.weights(U, -1, "2.bias"), U[3, -3:])
    # A view: the Dense weight (out, in) acts as x @ W.T (PyTorch's convention).
    W = net.weights(U, 0, "2.weight")
    assert np.shares_memory(W, U)
    with pytest.raises(ValueError, match=r"name = '2\.kernel' is not a parameter.*'2\.weight'"):
        net.weights(U, 0, "2.kernel")
    with pytest.raises(ValueError, match=r"member = 4 is out of range for an ensemble of 4"):
        net.weights(U, 4, "2.bias")
    with pytest.raises(ValueError, match=r"U has 5 parameters per member"):
        net.weights(U[:, :5], 0, "2.bias")


# --------------------------------------------------------------------------------------------------------------
# the prior
# --------------------------------------------------------------------------------------------------------------


def test_prior_is_seeded_and_reproducible():
    net = nn.mlp([6, 5, 3])
    a = net.prior(8, rng=3)
    assert a.shape == (8, net.parameter_count) and a.dtype == np.float32
    np.testing.assert_array_equal(a, net.prior(8, rng=3))
    np.testing.assert_array_equal(a, net.prior(8, rng=np.random.default_rng(3)))
    assert not np.array_equal(a, net.prior(8, rng=4))
    # The first members do not depend on J; float32 is the float64 draw rounded.
    np.testing.assert_array_equal(net.prior(3, rng=3), a[:3])
    np.testing.assert_array_equal(net.prior(8, rng=3, dtype="float64").astype(np.float32), a)
    # A Generator is advanced: two calls give different members.
    g = np.random.default_rng(0)
    assert not np.array_equal(net.prior(2, rng=g), net.prior(2, rng=g))
    # Members are independent: distinct rows, small correlation between members.
    big = net.prior(2, rng=1, dtype="float64")
    weights = slice(0, 30)
    assert abs(np.corrcoef(big[0, weights], big[1, weights])[0, 1]) < 0.6


def test_prior_glorot_std_per_layer_and_zero_biases():
    """Every weight tensor has std sqrt(2 / (fan_in + fan_out)) with PyTorch's fans (conv: kernel area
    included; recurrent: per tensor); biases are zero. With n >= 9000 draws per tensor the relative standard
    error of the sample std is <= 1/sqrt(2 n) = 0.75%; 4% is > 5 standard errors."""
    net = nn.Sequential([nn.Conv2d(8, 3, activation="relu"), nn.Flatten(), nn.Dense(20)], (3, 6, 6))
    rnn = nn.Sequential([nn.LSTM(16, return_sequences=True), nn.RNN(12), nn.Dense(5)], (4, 7))
    expected = {
        (net, "0.weight"): np.sqrt(2 / (3 * 9 + 8 * 9)),
        (net, "2.weight"): np.sqrt(2 / (128 + 20)),
        (rnn, "0.weight_ih"): np.sqrt(2 / (7 + 64)),
        (rnn, "0.weight_hh"): np.sqrt(2 / (16 + 64)),
        (rnn, "1.weight_ih"): np.sqrt(2 / (16 + 12)),
        (rnn, "1.weight_hh"): np.sqrt(2 / (12 + 12)),
        (rnn, "2.weight"): np.sqrt(2 / (12 + 5)),
    }
    priors = {n: n.prior(500, rng=11, dtype="float64") for n in (net, rnn)}
    for (n, name), std in expected.items():
        w = np.stack([n.weights(priors[n], j, name) for j in range(500)])
        assert abs(w.std() / std - 1) < 0.04, name
        assert abs(w.mean()) < 4 * std / np.sqrt(w.size), name
        offset, shape = n.parameters[name]
        np.testing.assert_allclose(n.prior_std("float64")[offset:offset + int(np.prod(shape))], std, rtol=1e-15)
    for n in (net, rnn):
        for name in n.parameters:
            if "bias" in name:
                assert not np.any(n.weights(priors[n], 0, name)), name
                assert not np.any(n.weights(priors[n], 499, name)), name


def test_prior_bias_std_and_prior_std():
    net = nn.mlp([50, 40, 3])
    U = net.prior(400, rng=2, dtype="float64", bias_std=0.5)
    b = np.stack([net.weights(U, j, "0.bias") for j in range(400)])
    assert abs(b.std() / 0.5 - 1) < 0.04
    std = net.prior_std("float32", bias_std=0.5)
    assert std.dtype == np.float32 and std.shape == (net.parameter_count,)
    np.testing.assert_allclose(std[net.parameters["0.bias"][0]], 0.5)
    np.testing.assert_allclose(std[0], np.sqrt(2 / 90), rtol=1e-6)
    # prior_std is what ekinet.randomize takes for EKI(R).
    R = ekinet.randomize(U, 0.1, prior_std=net.prior_std("float64"), rng=1)
    assert R.shape == U.shape
    with pytest.raises(ValueError, match=r"bias_std = -1"):
        net.prior(2, bias_std=-1)
    with pytest.raises(TypeError, match=r"dtype = int32"):
        net.prior(2, dtype="int32")
    with pytest.raises(ValueError, match=r"J = 0 must be positive"):
        net.prior(0)
    with pytest.raises(TypeError, match=r"rng must be None, an int seed"):
        net.prior(2, rng="seed")


# --------------------------------------------------------------------------------------------------------------
# string forms and constructors
# --------------------------------------------------------------------------------------------------------------


def test_string_forms():
    net = nn.from_string("mlp:784-100-10")
    assert net.input_shape == (784,) and net.output_shape == (10,)
    assert net.parameter_count == 784 * 100 + 100 + 100 * 10 + 10
    assert [l.activation for l in net.layers] == ["relu", "identity"]
    assert [l.activation for l in nn.from_string("mlp:784-100-10:tanh").layers] == ["tanh", "identity"]
    assert nn.from_string("cnn-mnist").parameter_count == 6150
    assert nn.from_string("rnn-mnist").parameter_count == 54538
    rnn = nn.from_string("rnn:1-32-1")
    assert rnn.input_shape == (1, 1) and rnn.output_shape == (1,)  # steps defaults to 1
    assert [type(l) for l in rnn.layers] == [nn.RNN, nn.Dense]
    assert nn.from_string("rnn:1-32-1", steps=50).input_shape == (50, 1)
    lstm = nn.from_string("lstm:3-8-4-2", steps=5)
    assert [repr(l) for l in lstm.layers] == ["LSTM(8, return_sequences=True)", "LSTM(4)", "Dense(2)"]
    sizes = {1: 7850, 2: 79510, 3: 266610, 4: 573910}
    for k, P in sizes.items():
        assert nn.dnn(k).parameter_count == P
        assert nn.from_string(f"dnn:{k}").parameter_count == P
    assert nn.dnn(1).layers == (nn.Dense(10),)
    assert nn.mlp([784, 300, 100, 10]).parameters == nn.dnn(3).parameters


@pytest.mark.parametrize("text", ["resnet50", "mlp", "mlp:784-x-10", "cnn-mnist:1", "dnn:5", "lstm:"])
def test_unknown_string_forms_list_the_known_ones(text):
    with pytest.raises(ValueError, match=r"known forms: mlp:784-100-10, .*cnn-mnist, rnn:1-32-1, lstm:1-32-1, "
                                         r"rnn-mnist"):
        nn.from_string(text)


def test_string_form_errors():
    with pytest.raises(ValueError, match=r"activation = 'gelu' is not one of"):
        nn.from_string("mlp:784-10-10:gelu")
    with pytest.raises(ValueError, match=r"steps applies to the 'rnn:\.\.\.' and 'lstm:\.\.\.' forms only"):
        nn.from_string("mlp:4-2", steps=3)
    with pytest.raises(ValueError, match=r"steps = 0 must be positive"):
        nn.from_string("rnn:1-4-1", steps=0)
    with pytest.raises(TypeError, match=r"text must be a string"):
        nn.from_string(784)
    with pytest.raises(ValueError, match=r"k = 0 is not one of 1, 2, 3, 4"):
        nn.dnn(0)


def test_repr_is_a_table_of_layers():
    text = repr(nn.cnn_mnist())
    assert text.splitlines()[0] == "Sequential(input_shape=(1, 28, 28), parameters=6150, state_size=0)"
    assert "layer" in text.splitlines()[1] and "output shape" in text.splitlines()[1]
    assert "Conv2d(16, kernel=3, activation='relu')  (16, 26, 26)" in text
    assert "MaxPool2d(4, stride=2)" in text and "Flatten()" in text
    assert text.splitlines()[-1].split()[-3:] == ["Dense(10)", "(10,)", "1930"]
    assert "RNN(128, return_sequences=True)" in repr(nn.rnn_mnist())


# --------------------------------------------------------------------------------------------------------------
# workspace
# --------------------------------------------------------------------------------------------------------------


def test_workspace_bytes_grows_with_members_and_examples():
    for net in (nn.dnn(2), nn.cnn_mnist(), nn.from_string("lstm:1-32-1", steps=10)):
        sizes = [net.workspace_bytes(J, B) for J, B in ((1, 1), (2, 1), (8, 1), (8, 4), (8, 16))]
        assert sizes[0] > 0
        assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes), sizes
        assert net.workspace_bytes(8, 16, "float64") > net.workspace_bytes(8, 16, "float32")
    with pytest.raises(TypeError, match=r"dtype = int64"):
        nn.dnn(1).workspace_bytes(2, 2, "int64")
    with pytest.raises(ValueError, match=r"B = 0 must be positive"):
        nn.dnn(1).workspace_bytes(2, 0)


POOL_FIRST = nn.Sequential([nn.MaxPool2d(2), nn.Flatten(), nn.Dense(5, "relu"), nn.Dense(2)], (3, 12, 12))
POOL_THEN_CONV = nn.Sequential([nn.MaxPool2d(2, stride=1), nn.Conv2d(2, 3), nn.Flatten(), nn.Dense(2)], (2, 9, 9))


def _workspace_after_forward(net, J, B):
    """The bytes a fresh CPU context holds after two forward passes of J members on B examples."""
    from ekinet._native import view

    U = net.prior(J, rng=0)
    X = np.random.default_rng(1).standard_normal((B, net.input_size)).astype(np.float32)
    G = np.empty((J, B * net.output_size), dtype=np.float32)
    state = np.zeros((J, B * net.state_size), dtype=np.float32) if net.state_size else None
    state_out = None if state is None else np.empty_like(state)  # alive while the core writes to it
    context = _core.make_cpu_context()
    for _ in range(2):
        _core.forward(context, net._network, view(U), view(X), view(G), None if state is None else view(state),
                      None if state is None else view(state_out))
    return context.workspace_bytes


@pytest.mark.parametrize("model", ["mlp:784-100-10", "cnn-mnist", "rnn-mnist", "lstm:3-8-2", POOL_FIRST,
                                   POOL_THEN_CONV], ids=["mlp", "cnn-mnist", "rnn-mnist", "lstm", "pool-first",
                                                         "pool-then-conv"])
@pytest.mark.parametrize("J, B", [(1, 1), (1, 5), (3, 2), (5, 7)])
def test_forward_stays_within_the_predicted_workspace(model, J, B):
    """A fresh context's workspace after forward passes (it grows to the high-water mark at each reset) is at most
    workspace_bytes(J, B): the prediction is an upper bound, on every path (the CPU's recurrent scratch per core
    included)."""
    net = nn.from_string(model) if isinstance(model, str) else model
    assert 0 < _workspace_after_forward(net, J, B) <= net.workspace_bytes(J, B)


@pytest.mark.parametrize("net", [POOL_FIRST, POOL_THEN_CONV], ids=["pool-first", "pool-then-conv"])
def test_pooling_the_shared_input_is_done_once_for_all_members(net):
    """Layers without parameters before the first that has some see the same input for every member: their
    output (and the CNHW copy of the batch) is computed once per chunk, so each added member costs only the
    outputs of the layers that depend on its parameters."""
    B = 16
    first_with_parameters = 1
    per_member = sum(B * int(np.prod(shape)) * 4 for shape in net.shapes[first_with_parameters + 1:])  # float32
    added = _workspace_after_forward(net, 65, B) - _workspace_after_forward(net, 1, B)
    assert added <= 64 * per_member + 4096, (added, per_member)
    assert net.workspace_bytes(65, B) - net.workspace_bytes(1, B) <= 64 * (per_member + 1024)  # + alignment


@pytest.mark.parametrize("model", ["mlp:784-100-10", "cnn-mnist", "lstm:3-8-2"])
def test_forward_reuses_its_workspace_across_calls(model):
    """A training loop's forward passes stop allocating after the first: its buffers are folded into one block at
    the second call's start (the workspace's high-water mark), which the later calls reuse without growing."""
    from ekinet._native import view

    net = nn.from_string(model)
    U = net.prior(4, rng=0)
    X = np.random.default_rng(1).standard_normal((6, net.input_size)).astype(np.float32)
    G = np.empty((4, 6 * net.output_size), dtype=np.float32)
    context = _core.make_cpu_context()
    sizes = []
    for _ in range(5):
        _core.forward(context, net._network, view(U), view(X), view(G), None, None)
        sizes.append(context.workspace_bytes)
    assert sizes[1] > 0 and sizes[1:] == sizes[1:2] * 4


@pytest.mark.parametrize("model", ["cnn-mnist", "lstm:1-8-1"])
def test_context_whole_networks_switch(model):
    """Context.whole_networks is on by default and can be turned off (CUDA then runs small networks layer by
    layer too, for benchmarks: test_cuda compares the two). The CPU always runs layer by layer: the same numbers."""
    from ekinet._native import view

    net = nn.from_string(model, **({"steps": 1} if model.startswith("lstm") else {}))
    U = net.prior(3, rng=0)
    X = np.random.default_rng(1).standard_normal((2, net.input_size)).astype(np.float32)
    context = _core.make_cpu_context()
    assert context.whole_networks
    outputs = []
    for whole in (True, False):
        context.whole_networks = whole
        assert context.whole_networks is whole
        G = np.empty((3, 2 * net.output_size), dtype=np.float32)
        _core.forward(context, net._network, view(U), view(X), view(G), None, None)
        outputs.append(G)
    np.testing.assert_array_equal(outputs[0], outputs[1])


# --------------------------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture
def small(rng):
    net = nn.Sequential([nn.Conv2d(2, 3, activation="relu"), nn.Flatten(), nn.Dense(3)], (1, 5, 5))
    U, X = inputs(net, 3, 4, rng, "float32")
    return net, U, X


@pytest.mark.parametrize("backend", ["native", "reference"])
def test_forward_bad_input(small, backend):
    net, U, X = small
    P = net.parameter_count

    def forward(U=U, X=X, **kwargs):
        return net.forward(U, X, backend=backend, **kwargs)

    with pytest.raises(ValueError, match=rf"X has shape \(4, 5, 5\) but \(B, 1, 5, 5\) or \(B, 25\) flattened"):
        forward(X=X[:, 0])
    with pytest.raises(ValueError, match=r"X has shape \(4, 24\)"):
        forward(X=X.reshape(4, 25)[:, :24])
    with pytest.raises(ValueError, match=r"X has shape \(0, 1, 5, 5\)"):
        forward(X=X[:0])
    with pytest.raises(ValueError, match=rf"U has {P - 1} parameters per member \(columns\) but the network has "
                                         rf"parameter_count = {P}"):
        forward(U=U[:, 1:])
    with pytest.raises(ValueError, match=rf"U has shape \({P},\); expected \(J, {P}\)"):
        forward(U=U[0])
    bad = X.copy()
    bad[1, 0, 2, 2] = np.nan
    with pytest.raises(ValueError, match=r"X contains 1 NaN/Inf value"):
        forward(X=bad)
    with pytest.raises(TypeError, match=r"X has dtype int64"):
        forward(X=X.astype(np.int64))
    with pytest.raises(TypeError, match=r"U has dtype int64"):
        forward(U=U.astype(np.int64))
    with pytest.raises(TypeError, match=r"X has dtype float64 but U is float32"):
        forward(X=X.astype(np.float64))
    with pytest.raises(ValueError, match=r"state has shape \(3, 1\); this network has no recurrent layers"):
        forward(state=np.zeros((3, 1), np.float32))
    with pytest.raises(ValueError, match=r"backend = 'gpu' is not one of"):
        net.forward(U, X, backend="gpu")
    # A (J, 0) state is accepted where there is none.
    out, state = forward(state=np.zeros((3, 0), np.float32), return_state=True)
    assert out.shape == (3, 4, 3) and state.shape == (3, 0)


@pytest.mark.parametrize("backend", ["native", "reference"])
def test_recurrent_state_bad_input(backend, rng):
    net = nn.Sequential([nn.LSTM(3), nn.Dense(1)], (4, 2))
    U, X = inputs(net, 2, 5, rng)
    with pytest.raises(ValueError, match=r"state has shape \(2, 6\); \(J, B \* state_size\) = \(2, 30\)"):
        net.forward(U, X, state=np.zeros((2, 6)), backend=backend)
    with pytest.raises(TypeError, match=r"state has dtype float32 but U is float64"):
        net.forward(U, X, state=np.zeros((2, 30), np.float32), backend=backend)


def test_bad_networks_are_value_errors():
    with pytest.raises(ValueError, match=r"layer 0 \(Dense\).*softmax is an output activation: only the last"):
        nn.Sequential([nn.Dense(4, "softmax"), nn.Dense(2)], (3,))
    with pytest.raises(ValueError, match=r"layer 0 \(Dense\) cannot take input of shape \(1, 5, 5\).*Flatten"):
        nn.Sequential([nn.Dense(4)], (1, 5, 5))
    with pytest.raises(ValueError, match=r"layer 1 \(Dense\) cannot take input of shape \(2, 3, 3\).*Flatten"):
        nn.Sequential([nn.Conv2d(2, 3), nn.Dense(4)], (1, 5, 5))
    with pytest.raises(ValueError, match=r"layer 0 \(Conv2d\).*the kernel is larger than the padded image"):
        nn.Sequential([nn.Conv2d(2, 6)], (1, 5, 5))
    with pytest.raises(ValueError, match=r"layer 1 \(MaxPool2d\).*the window is larger than the image"):
        nn.Sequential([nn.Conv2d(2, 3), nn.MaxPool2d(4)], (1, 5, 5))
    with pytest.raises(ValueError, match=r"layer 0 \(MaxPool2d\).*the window is larger than the image"):
        nn.Sequential([nn.MaxPool2d(4)], (1, 3, 3))
    with pytest.raises(ValueError, match=r"layer 0 \(Conv2d\).*the kernel is larger than the padded image"):
        nn.Sequential([nn.Conv2d(1, 6, stride=2)], (1, 5, 5))
    with pytest.raises(ValueError, match=r"layer 0 \(Conv2d\).*the kernel is larger than the padded image"):
        nn.Sequential([nn.Conv2d(1, 8, stride=2, padding=1)], (1, 5, 5))
    with pytest.raises(ValueError, match=r"layer 0 \(Conv2d\).*expected \(channels, height, width\)"):
        nn.Sequential([nn.Conv2d(2, 3)], (25,))
    with pytest.raises(ValueError, match=r"layer 1 \(LSTM\).*expected \(steps, features\)"):
        nn.Sequential([nn.RNN(3), nn.LSTM(2)], (4, 2))
    with pytest.raises(ValueError, match=r"input_shape\[1\] = 0 must be positive"):
        nn.Sequential([nn.Dense(2)], (3, 0))
    with pytest.raises(ValueError, match=r"layers is empty"):
        nn.Sequential([], (3,))
    with pytest.raises(TypeError, match=r"layers\[1\] is a dict, not a layer"):
        nn.Sequential([nn.Dense(2), {"kind": "dense"}], (3,))
    with pytest.raises(TypeError, match=r"layers must be a list of layers"):
        nn.Sequential(nn.Dense(2), (3,))


def test_bad_layer_arguments():
    with pytest.raises(ValueError, match=r"Dense: units = 0 must be positive"):
        nn.Dense(0)
    with pytest.raises(TypeError, match=r"Dense: units must be an integer, got float"):
        nn.Dense(2.5)
    with pytest.raises(ValueError, match=r"Dense: activation = 'gelu' is not one of 'identity', 'relu'"):
        nn.Dense(3, "gelu")
    with pytest.raises(ValueError, match=r"Conv2d: padding = -1 must be >= 0"):
        nn.Conv2d(2, 3, padding=-1)
    with pytest.raises(ValueError, match=r"Conv2d: stride = 0 must be positive"):
        nn.Conv2d(2, 3, stride=0)
    with pytest.raises(ValueError, match=r"Conv2d: activation = 'softmax' is not supported"):
        nn.Conv2d(2, 3, activation="softmax")
    with pytest.raises(ValueError, match=r"MaxPool2d: kernel = 0 must be positive"):
        nn.MaxPool2d(0)
    assert nn.MaxPool2d(3).stride == 3
    with pytest.raises(ValueError, match=r"RNN: hidden = 0 must be positive"):
        nn.RNN(0)
    with pytest.raises(ValueError, match=r"LSTM: hidden = -2 must be positive"):
        nn.LSTM(-2)
    with pytest.raises(TypeError, match=r"LSTM: return_sequences must be True or False"):
        nn.LSTM(3, return_sequences="yes")


# --------------------------------------------------------------------------------------------------------------
# the C++ core directly
# --------------------------------------------------------------------------------------------------------------


def test_core_refuses_softmax_on_a_convolution():
    """Softmax normalises a Dense output row; on channel-major convolution outputs it would mix examples."""
    with pytest.raises(ValueError, match=r"softmax is defined for Dense outputs only"):
        _core.network([{"kind": "conv2d", "units": 2, "kernel": 2, "activation": "softmax"}], [1, 3, 3])


WINDOW_LARGER_THAN_IMAGE = [
    pytest.param({"kind": "maxpool2d", "kernel": 4, "stride": 4}, [1, 3, 3], id="maxpool-4-on-3x3"),
    pytest.param({"kind": "maxpool2d", "kernel": 3, "stride": 2}, [1, 2, 5], id="maxpool-3-stride-2-on-2x5"),
    pytest.param({"kind": "conv2d", "units": 1, "kernel": 6, "stride": 2}, [1, 5, 5], id="conv-6-stride-2-on-5x5"),
]


@pytest.mark.parametrize("layer,input_shape", WINDOW_LARGER_THAN_IMAGE)
def test_core_refuses_windows_larger_than_the_image(layer, input_shape):
    with pytest.raises(ValueError, match=r"larger than the"):
        _core.network([layer], input_shape)

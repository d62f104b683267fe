"""ekinet.nn against PyTorch: a member's tensors (Sequential.weights) loaded into torch.nn.Linear, Conv2d,
MaxPool2d, Flatten, RNN and LSTM modules give the outputs and final states of ekinet's forward pass (float64, to
1e-10 of the largest output), which checks the parameter layout, the NCHW/batch-first conventions and the
recurrent equations (gate order i, f, g, o) against an independent implementation; Sequential.to_torch is
checked on the paper's networks.

PyTorch comes with the test extras (`pip install ".[test]"`), so these tests run on the CPU everywhere, CI
included.
"""

import numpy as np
import pytest

import torch

from ekinet import nn

RTOL = 1e-10
J, B = 3, 4


def _t(a):
    return torch.from_numpy(np.ascontiguousarray(np.asarray(a, dtype=np.float64)))


def assert_close(got, expected, what=""):
    got = np.asarray(got, dtype=np.float64)
    expected = expected.detach().numpy() if isinstance(expected, torch.Tensor) else np.asarray(expected)
    assert got.shape == expected.shape, f"{what}: shape {got.shape} != {expected.shape}"
    scale = max(float(np.max(np.abs(expected))), 1e-300)
    error = float(np.max(np.abs(got - expected)))
    assert error <= RTOL * scale, f"{what}: error {error:.3e} > {RTOL:.0e} x {scale:.3e}"


def _inputs(net, rng):
    U = net.prior(J, rng=rng, dtype="float64", bias_std=0.3)
    X = rng.standard_normal((B,) + net.input_shape)
    return U, X


def _load(module, net, U, j, index, names):
    """Copy member j's tensors "<index>.<name>" into module.<torch name>."""
    with torch.no_grad():
        for ours, theirs in names.items():
            getattr(module, theirs).copy_(_t(net.weights(U, j, f"{index}.{ours}")))
    return module


def _linear(net, U, j, index, features, units):
    return _load(torch.nn.Linear(features, units, dtype=torch.float64), net, U, j, index,
                 {"weight": "weight", "bias": "bias"})


def _activation(name, x):
    if name == "identity":
        return x
    if name == "heaviside":
        return torch.heaviside(x, torch.zeros((), dtype=x.dtype))
    if name == "softmax":
        return torch.softmax(x, dim=-1)
    return getattr(torch, name)(x)


@pytest.mark.parametrize("activation", ["identity", "relu", "tanh", "sigmoid", "heaviside", "softmax"])
def test_linear(activation, rng):
    net = nn.Sequential([nn.Dense(6, "tanh"), nn.Dense(4, activation)], (5,))
    U, X = _inputs(net, rng)
    out = net.forward(U, X)
    for j in range(J):
        first, second = _linear(net, U, j, 0, 5, 6), _linear(net, U, j, 1, 6, 4)
        with torch.no_grad():
            expected = _activation(activation, second(torch.tanh(first(_t(X)))))
        assert_close(out[j], expected, f"member {j}")


CONV_CASES = {
    # (in_shape, channels, kernel, stride, padding, pool kernel, pool stride)
    "3x3-pool2": ((1, 8, 8), 2, 3, 1, 0, 2, 2),
    "stride2-pad1-rect": ((3, 9, 7), 4, 3, 2, 1, 2, 1),
    "kernel5-pad2": ((2, 6, 6), 3, 5, 1, 2, 3, 2),
    "1x1": ((2, 4, 5), 3, 1, 1, 0, 2, 2),
}


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv2d_maxpool_flatten_linear(case, rng):
    shape, channels, kernel, stride, padding, pool, pool_stride = CONV_CASES[case]
    net = nn.Sequential([nn.Conv2d(channels, kernel, stride=stride, padding=padding, activation="relu"),
                         nn.MaxPool2d(pool, stride=pool_stride), nn.Flatten(), nn.Dense(3)], shape)
    U, X = _inputs(net, rng)
    out = net.forward(U, X)
    for j in range(J):
        conv = _load(torch.nn.Conv2d(shape[0], channels, kernel, stride=stride, padding=padding,
                                     dtype=torch.float64), net, U, j, 0, {"weight": "weight", "bias": "bias"})
        flat = int(np.prod(net.shapes[3]))
        model = torch.nn.Sequential(conv, torch.nn.ReLU(), torch.nn.MaxPool2d(pool, stride=pool_stride),
                                    torch.nn.Flatten(), _linear(net, U, j, 3, flat, 3))
        with torch.no_grad():
            assert_close(out[j], model(_t(X)), f"{case} member {j}")


def _recurrent_module(kind, features, hidden, net, U, j, index):
    cls = torch.nn.LSTM if kind == "lstm" else torch.nn.RNN
    module = cls(features, hidden, batch_first=True, dtype=torch.float64)
    names = {n: f"{n}_l0" for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
    return _load(module, net, U, j, index, names)


@pytest.mark.parametrize("kind", ["rnn", "lstm"])
@pytest.mark.parametrize("return_sequences", [False, True], ids=["last-step", "sequences"])
@pytest.mark.parametrize("given_state", [False, True], ids=["zero-state", "given-state"])
def test_rnn_and_lstm(kind, return_sequences, given_state, rng):
    layer = (nn.LSTM if kind == "lstm" else nn.RNN)(5, return_sequences=return_sequences)
    net = nn.Sequential([layer, nn.Dense(2)], (6, 3))
    U, X = _inputs(net, rng)
    state = rng.standard_normal((J, B * net.state_size)) if given_state else None
    out, state_out = net.forward(U, X, state=state, return_state=True)
    parts = net.split_state(state_out)
    initial = net.split_state(state) if given_state else None
    for j in range(J):
        module = _recurrent_module(kind, 3, 5, net, U, j, 0)
        linear = _linear(net, U, j, 1, 5, 2)
        with torch.no_grad():
            if given_state:
                h0 = _t(initial["0.h"][j])[None]
                hx = (h0, _t(initial["0.c"][j])[None]) if kind == "lstm" else h0
                sequence, last = module(_t(X), hx)
            else:
                sequence, last = module(_t(X))
            expected = linear(sequence if return_sequences else sequence[:, -1])
        assert_close(out[j], expected, f"member {j}")
        h_n = last[0] if kind == "lstm" else last
        assert_close(parts["0.h"][j], h_n[0], f"member {j} h")
        if kind == "lstm":
            assert_close(parts["0.c"][j], last[1][0], f"member {j} c")


def test_stacked_lstm_and_rnn_with_states(rng):
    net = nn.Sequential([nn.LSTM(4, return_sequences=True), nn.RNN(3), nn.Dense(2, "sigmoid")], (7, 2))
    U, X = _inputs(net, rng)
    state = rng.standard_normal((J, B * net.state_size))
    out, state_out = net.forward(U, X, state=state, return_state=True)
    initial, final = net.split_state(state), net.split_state(state_out)
    for j in range(J):
        lstm = _recurrent_module("lstm", 2, 4, net, U, j, 0)
        rnn = _recurrent_module("rnn", 4, 3, net, U, j, 1)
        linear = _linear(net, U, j, 2, 3, 2)
        with torch.no_grad():
            s1, (h1, c1) = lstm(_t(X), (_t(initial["0.h"][j])[None], _t(initial["0.c"][j])[None]))
            s2, h2 = rnn(s1, _t(initial["1.h"][j])[None])
            expected = torch.sigmoid(linear(s2[:, -1]))
        assert_close(out[j], expected, f"member {j}")
        assert_close(final["0.h"][j], h1[0], "0.h")
        assert_close(final["0.c"][j], c1[0], "0.c")
        assert_close(final["1.h"][j], h2[0], "1.h")


@pytest.mark.parametrize("name", ["dnn:1", "dnn:2", "dnn:3", "dnn:4", "cnn-mnist", "rnn-mnist", "lstm:1-32-1"])
def test_to_torch_on_the_papers_networks(name, rng):
    net = nn.from_string(name, steps=10) if name.startswith("lstm") else nn.from_string(name)
    U, X = _inputs(net, rng)
    out = net.forward(U, X)
    for j in range(J):
        model = net.to_torch(U[j])
        with torch.no_grad():
            assert_close(out[j], model(_t(X)), f"{name} member {j}")
    names = dict(net.to_torch(U[0]).named_parameters())
    if name.startswith("dnn") or name == "cnn-mnist":  # Linear and Conv2d keep ekinet's names
        assert {k: tuple(v.shape) for k, v in names.items()} == {k: s for k, (_, s) in net.parameters.items()}

"""The PyTorch gradient baselines (ekinet.baselines): mini-batch SGD and online gradient descent learn, start from
the ensemble's prior, and hand back parameters that ekinet's own forward pass evaluates to the same outputs.

PyTorch comes with the test extras (`pip install ".[test]"`), so these tests run on the CPU everywhere, CI
included, and on the GPU too where CUDA is available.
"""

import json

import numpy as np
import pytest

import torch

from ekinet import datasets, nn
from ekinet.baselines import online_gradient_descent, sgd_train
from ekinet.online import OnlineResult

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                   reason="CUDA is not available to PyTorch"))]


def _sine(n=400, period=25, noise=0.03, seed=0):
    t = np.arange(n)
    return np.sin(2 * np.pi * t / period) + noise * np.random.default_rng(seed).standard_normal(n)


@pytest.fixture(scope="module")
def mnist_small():
    train, test = datasets.load_mnist_small("train"), datasets.load_mnist_small("test")
    return train, test


@pytest.mark.parametrize("device", DEVICES)
def test_sgd_learns_mnist_small(mnist_small, device):
    train, test = mnist_small
    train, validation = train.split(0.1, rng=0)
    out = sgd_train("mlp:784-32-10", train, test, epochs=3, momentum=0.9, validation=validation, progress=False,
                    device=device)
    assert out["metric"] == "accuracy" and len(out["history"]) == 3
    assert out["test_accuracy"] == out["history"][-1]["test_accuracy"] > 0.85
    assert out["history"][-1]["validation_accuracy"] > 0.85
    losses = [record["train_loss"] for record in out["history"]]
    assert losses[-1] < losses[0]
    # the returned row is the trained module in ekinet's layout
    net = nn.from_string("mlp:784-32-10")
    logits = net.forward(out["u"][None], test.x[:50])[0]
    with torch.no_grad():
        assert next(out["module"].parameters()).device.type == device  # the trained module stays where it ran
        expected = out["module"].cpu()(torch.as_tensor(test.x[:50])).numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)


def test_sgd_regression_and_reproducibility():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((600, 5)).astype(np.float32)
    y = np.tanh(x @ rng.standard_normal(5)) + 0.05 * rng.standard_normal(600)
    data = datasets.Dataset(x, y, "toy", "regression")
    train, test = data.split(0.2, rng=0)
    out = sgd_train("mlp:5-16-1", train, test, epochs=20, batch_size=20, lr=0.05, progress=False)
    assert out["metric"] == "rmse" and out["test_rmse"] < 0.3 * np.std(test.y)
    again = sgd_train("mlp:5-16-1", train, test, epochs=20, batch_size=20, lr=0.05, progress=False)
    np.testing.assert_array_equal(again["u"], out["u"])


def test_sgd_bad_input(mnist_small):
    train, test = mnist_small
    with pytest.raises(ValueError, match="10 classes but the network outputs"):
        sgd_train("mlp:784-8-5", train, test, progress=False)
    with pytest.raises(ValueError, match="shape"):
        sgd_train("mlp:100-8-10", train, test, progress=False)
    with pytest.raises(TypeError, match="Dataset"):
        sgd_train("mlp:784-8-10", (train.x, train.y), test, progress=False)
    with pytest.raises(ValueError, match="momentum"):
        sgd_train("mlp:784-8-10", train, test, momentum=1.5, progress=False)


def test_online_gradient_descent_learns_a_sine():
    r = online_gradient_descent(_sine(), "lstm:1-16-1", passes=3, lr=0.1, rng=0, progress=False)
    assert isinstance(r, OnlineResult) and r.method == "OGD"
    assert r.predictions.shape == (3, 399) and np.all(r.spread == 0)
    assert np.all(np.isfinite(r.predictions))
    assert r.final < 0.5 * r.first, r.errors
    assert json.loads(json.dumps(r.to_dict()))["method"] == "OGD"


def test_online_gradient_descent_starts_from_the_prior_and_runs_windows():
    y = _sine(n=101)
    net = nn.from_string("lstm:1-8-1")
    r = online_gradient_descent(y, net, window=4, truncation=6, rng=5, progress=False)
    assert r.predictions.shape == (1, 100) and r.ensemble.shape == (1, net.parameter_count)
    scaled = ((y - y.min()) / (y.max() - y.min())).astype(np.float32)
    seq = nn.Sequential([nn.LSTM(8, return_sequences=True), nn.Dense(1)], (4, 1))
    first = seq.forward(net.prior(1, rng=5), scaled[None, :4, None]).reshape(4)  # member 0 of EKI's prior
    np.testing.assert_allclose(r.predictions[0, :4], first, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="truncation = 0"):
        online_gradient_descent(y, net, truncation=0, progress=False)


def test_online_gradient_descent_that_diverges_says_so():
    message = r"diverged: the loss at update \d+ of pass 1 is (nan|inf).*lr \(got"
    with pytest.raises(FloatingPointError, match=message):
        online_gradient_descent(_sine(n=120), "rnn:1-4-1", lr=1e6, rng=0, progress=False)

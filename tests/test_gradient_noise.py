"""docs/gradient_noise.py draws update directions with the mean and covariance of EKI(R)'s Monte Carlo estimate
(1/J) sum_k xi_k <xi_k, g>, xi_k ~ N(0, C); its conclusions rest on that match, so check it against the estimate
itself on a small linear layer."""

import importlib.util
import os

import numpy as np
import pytest
import torch

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")


def load(monkeypatch):
    """docs/gradient_noise.py as a module (it imports docs/gradient_estimate.py, so docs/ goes on sys.path)."""
    monkeypatch.syspath_prepend(DOCS)
    spec = importlib.util.spec_from_file_location("gradient_noise", os.path.join(DOCS, "gradient_noise.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_emulated_direction_has_the_monte_carlo_estimates_mean_and_spread(monkeypatch):
    script = load(monkeypatch)
    members, draws = 20, 4000
    layer = torch.nn.Linear(6, 3)
    rng = np.random.default_rng(0)
    for parameter in layer.parameters():
        parameter.grad = torch.from_numpy(rng.standard_normal(parameter.shape).astype(np.float32))
    root = {name: torch.from_numpy(rng.uniform(0.5, 2.0, p.shape).astype(np.float32))
            for name, p in layer.named_parameters()}
    names = [name for name, _ in layer.named_parameters()]

    def flat(tensors):
        return np.concatenate([tensors[name].numpy().ravel() for name in names]).astype(np.float64)

    g = flat({name: p.grad for name, p in layer.named_parameters()})
    c = flat(root) ** 2
    generator = torch.Generator().manual_seed(1)
    emulated = np.array([flat(script.noisy_direction(layer, root, members, generator)[0]) for _ in range(draws)])
    xi = rng.standard_normal((draws, members, g.size)) * np.sqrt(c)
    monte_carlo = np.einsum("dkp,dk->dp", xi, xi @ g) / members

    for sample in (emulated, monte_carlo):
        np.testing.assert_allclose(sample.mean(axis=0), c * g, atol=5 * np.sqrt(sample.var(axis=0) / draws).max())
    # Isserlis: the per-parameter variances are (c_p^2 g_p^2 + (g^T C g) c_p) / J.
    expected = (c**2 * g**2 + (g @ (c * g)) * c) / members
    np.testing.assert_allclose(emulated.var(axis=0), expected, rtol=0.15)
    np.testing.assert_allclose(monte_carlo.var(axis=0), expected, rtol=0.15)


def test_infinite_ensemble_gives_the_preconditioned_gradient(monkeypatch):
    script = load(monkeypatch)
    layer = torch.nn.Linear(4, 2)
    for parameter in layer.parameters():
        parameter.grad = torch.ones_like(parameter)
    root = {name: torch.full(p.shape, 0.5) for name, p in layer.named_parameters()}
    direction, cosine = script.noisy_direction(layer, root, float("inf"), torch.Generator())
    assert cosine == 1.0
    for name, d in direction.items():
        torch.testing.assert_close(d, torch.full(d.shape, 0.25))


@pytest.mark.parametrize("scale", [(1.0, 1.0), (2.0, 0.5)], ids=["span", "whitened"])
def test_input_span_directions_match_the_estimate_with_draws_in_the_span(scale, monkeypatch):
    """--input-span: the first layer's draws are xi Q diag(scale) Q^T (Q an orthonormal basis of the batch's
    inputs, scale 1 or --whiten's), where the batch's gradient lies; the emulated directions stay in the span and
    keep the estimate's mean and variances (Isserlis with the restricted covariance)."""
    script = load(monkeypatch)
    members, draws = 20, 4000
    module = torch.nn.Sequential(torch.nn.Linear(6, 3))
    rng = np.random.default_rng(2)
    span = torch.linalg.qr(torch.from_numpy(rng.standard_normal((6, 2)).astype(np.float32))).Q
    multipliers = torch.tensor(scale)
    module[0].weight.grad = torch.from_numpy(rng.standard_normal((3, 2)).astype(np.float32)) @ span.T
    module[0].bias.grad = torch.from_numpy(rng.standard_normal(3).astype(np.float32))
    root = {"0.weight": torch.full((3, 6), 0.7), "0.bias": torch.full((3,), 1.3)}
    generator = torch.Generator().manual_seed(3)
    directions = [script.noisy_direction(module, root, members, generator, {"0.weight": (span, multipliers)})[0]
                  for _ in range(draws)]
    weights = torch.stack([d["0.weight"] for d in directions])
    torch.testing.assert_close(weights - weights @ span @ span.T, torch.zeros_like(weights), atol=1e-5, rtol=0)
    emulated = np.array([np.concatenate([d["0.weight"].numpy().ravel(), d["0.bias"].numpy()]) for d in directions],
                        dtype=np.float64)
    root_covariance = (span @ torch.diag(multipliers) @ span.T).numpy().astype(np.float64)  # symmetric
    g = np.concatenate([module[0].weight.grad.numpy().ravel(), module[0].bias.grad.numpy()]).astype(np.float64)
    xi = rng.standard_normal((draws, members, 21))
    xi[..., :18] = 0.7 * xi[..., :18] @ np.kron(np.eye(3), root_covariance)
    xi[..., 18:] *= 1.3
    monte_carlo = np.einsum("dkp,dk->dp", xi, xi @ g) / members
    preconditioned = np.r_[0.49 * (g[:18].reshape(3, 6) @ root_covariance @ root_covariance).ravel(), 1.69 * g[18:]]
    for sample in (emulated, monte_carlo):
        np.testing.assert_allclose(sample.mean(axis=0), preconditioned,
                                   atol=5 * np.sqrt(sample.var(axis=0) / draws).max())
    np.testing.assert_allclose(emulated.var(axis=0), monte_carlo.var(axis=0), rtol=0.2, atol=1e-3)


def test_span_basis_and_damped_whitening(monkeypatch):
    """span(): an orthonormal basis of the inputs' span, unit multipliers without whitening; with it, the draws'
    variance falls as the direction's second moment grows, and a large alpha undoes the whitening."""
    script = load(monkeypatch)
    rng = np.random.default_rng(4)
    inputs = torch.from_numpy((rng.standard_normal((5, 3)) @ rng.standard_normal((3, 8)) * [1, 2, 3, 4, 5, 6, 7, 8])
                              .astype(np.float32))  # rank 3
    basis, multipliers = script.span(inputs)
    assert basis.shape == (8, 3)
    torch.testing.assert_close(basis.T @ basis, torch.eye(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(inputs @ basis @ basis.T, inputs, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(multipliers, torch.ones(3))
    _, whitened = script.span(inputs, whiten=0.1)
    moments = ((inputs @ basis) ** 2).sum(axis=0) / 5  # the SVD's order: decreasing second moments
    assert torch.all(moments[:-1] > moments[1:]) and torch.all(whitened[:-1] < whitened[1:])
    torch.testing.assert_close(whitened**2, 1.1 * moments.mean() / (moments + 0.1 * moments.mean()), rtol=1e-4,
                               atol=0)
    torch.testing.assert_close(script.span(inputs, whiten=1e6)[1], torch.ones(3), atol=1e-3, rtol=0)


def test_hidden_span_restricts_the_later_dense_layers_to_the_span_of_their_inputs(monkeypatch):
    """--hidden-span: the hooks keep each later Dense layer's input on the batch (the previous layer's
    activations), and only the layers asked for are spanned."""
    from ekinet import nn

    script = load(monkeypatch)
    net = nn.from_string("mlp:12-9-7-3")
    assert script.span_layers(net, True, False) == ["0.weight"]
    assert script.span_layers(net, True, True) == ["0.weight", "1.weight", "2.weight"]
    assert script.span_layers(net, False, True) == ["1.weight", "2.weight"]
    u = net.prior(1, rng=0)[0]
    module = net.to_torch(u)
    inputs = script.layer_inputs(module, ["1.weight"])
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((4, 12)).astype(np.float32))
    module(x)
    assert list(inputs) == ["1.weight"]
    torch.testing.assert_close(inputs["1.weight"], torch.relu(module[0](x)))


def test_preconditioner_of_a_convolutional_network_is_the_priors_std_per_weight(monkeypatch):
    """--model cnn-mnist: C^(1/2) must give each conv and dense weight of the torch module the Trainer's prior
    standard deviation, in the module's own shapes (a wrong mapping would precondition by the wrong layer's
    scale)."""
    from ekinet import nn

    script = load(monkeypatch)
    net = nn.Sequential([nn.Conv2d(3, 3, activation="relu"), nn.MaxPool2d(2, 2), nn.Flatten(), nn.Dense(2)],
                        input_shape=(1, 6, 6))
    module = net.to_torch(net.prior(1, rng=0)[0])
    root = script.preconditioner(net, module, bias_std=0.1)
    std = net.prior_std("float32", bias_std=0.1)
    flat = np.concatenate([root[name].numpy().ravel() for name, _ in module.named_parameters()])
    assert [root[name].shape for name, _ in module.named_parameters()] == [p.shape for p in module.parameters()]
    np.testing.assert_array_equal(flat, std)
    assert len(set(np.round(flat, 6))) >= 3  # the conv weights, the dense weights and the biases differ


def test_uniform_preconditioner_gives_every_parameter_one_std(monkeypatch):
    """--uniform-std: C^(1/2) is that one standard deviation for every weight and bias (C = sigma^2 I), so the
    noise-free direction is the gradient times sigma^2, gradient descent's own geometry; the readout scale still
    applies on top."""
    from ekinet import nn

    script = load(monkeypatch)
    net = nn.from_string("mlp:5-4-3")
    module = net.to_torch(net.prior(1, rng=0)[0])
    root = script.preconditioner(net, module, bias_std=0.1, uniform_std=0.2)
    for name, parameter in module.named_parameters():
        assert root[name].shape == parameter.shape
        torch.testing.assert_close(root[name], torch.full(parameter.shape, 0.2))
    scaled = script.preconditioner(net, module, bias_std=0.1, readout_scale=3.0, uniform_std=0.2)
    torch.testing.assert_close(scaled["1.weight"], torch.full((3, 4), 0.6))
    torch.testing.assert_close(scaled["0.weight"], torch.full((4, 5), 0.2))


def test_step_schedules(monkeypatch):
    """--schedule: "epoch" is the Trainer's step_decay per epoch; "linear" and "cosine" anneal from the step to
    zero over the run, halfway at half the step."""
    script = load(monkeypatch)
    assert script.step_at("epoch", 0.4, 0.5, 2, 0.9) == pytest.approx(0.1)
    for schedule in ("linear", "cosine"):
        assert script.step_at(schedule, 0.4, 0.5, 0, 0.0) == pytest.approx(0.4)
        assert script.step_at(schedule, 0.4, 0.5, 5, 0.5) == pytest.approx(0.2)
        assert script.step_at(schedule, 0.4, 0.5, 9, 1.0) == pytest.approx(0.0, abs=1e-12)
    assert script.step_at("cosine", 0.4, 0.5, 2, 0.25) > script.step_at("linear", 0.4, 0.5, 2, 0.25)


def test_conv_padding_pads_every_convolution_and_keeps_the_rest(monkeypatch):
    """--conv-padding 1 on cnn-mnist: every Conv2d padded, so the readout reads 12 x 6 x 6 features (P = 8550,
    against 6150 unpadded); the other layers and their settings unchanged."""
    from ekinet import nn

    script = load(monkeypatch)
    net = nn.cnn_mnist()
    padded = script.with_conv_padding(net, 1)
    assert [type(layer) for layer in padded.layers] == [type(layer) for layer in net.layers]
    assert [layer.padding for layer in padded.layers if isinstance(layer, nn.Conv2d)] == [1, 1, 1]

    def unpadded(layers):
        return [{k: v for k, v in layer.spec().items() if k != "padding"} for layer in layers]

    assert unpadded(padded.layers) == unpadded(net.layers)
    assert (net.parameter_count, padded.parameter_count) == (6150, 8550)


def test_nesterov_step_matches_the_meki_recursion_on_a_quadratic(monkeypatch):
    """--momentum c: the emulation's mean follows MEKI(R)'s u_{n+1} = v_n - h d(v_n), v_{n+1} = u_{n+1} +
    c (u_{n+1} - u_n); with c = 0 it is plain descent (v = u). On the quadratic 1/2 a u^2 (d = a u) the
    recursion is checked against the same written out in floats, and momentum must reach the minimum faster."""
    script = load(monkeypatch)
    a, h = 0.1, 1.0

    def run(coefficient, steps=30):
        points, iterates = {"w": torch.tensor([1.0], dtype=torch.float64)}, {"w": torch.tensor([1.0],
                                                                                              dtype=torch.float64)}
        u = v = 1.0
        for n in range(steps):
            c = coefficient if n else 0.0
            script.nesterov_step(points, iterates, {"w": a * points["w"]}, h, c)
            u_new = v - h * a * v
            u, v = u_new, u_new + c * (u_new - u)
            assert iterates["w"].item() == pytest.approx(u, rel=1e-12)
            assert points["w"].item() == pytest.approx(v, rel=1e-12)
        return abs(iterates["w"].item())

    assert run(0.0) == pytest.approx(0.9**30, rel=1e-12)
    assert run(0.5) < run(0.0) / 10

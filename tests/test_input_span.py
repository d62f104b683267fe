"""ekinet.input_span and EKI.ask(subspace=...): the span's coordinates reproduce the full network on the batch,
the draws lie in the span, one update in the span equals the full update of its members, and bad uses are
named."""

import numpy as np
import pytest

import ekinet
from ekinet import nn
from ekinet.input_span import InputSpan


def network_and_batch(batch=6, features=20, rng=None, duplicate=False, hidden_units=5):
    rng = rng or np.random.default_rng(0)
    net = nn.from_string(f"mlp:{features}-{hidden_units}-3")
    X = rng.standard_normal((batch, features))
    if duplicate:
        X[-1] = X[0]  # a dependent example: the span is one direction short of the batch
    return net, X


def test_the_spans_coordinates_reproduce_the_full_network_on_the_batch():
    net, X = network_and_batch()
    rng = np.random.default_rng(1)
    std = net.prior_std("float64", bias_std=0.1)
    sub = InputSpan(net, std).subspace(X)
    Q = sub.basis
    assert Q.shape == (20, 6) and sub.network.parameter_count == 5 * 6 + 5 + 5 * 3 + 3
    np.testing.assert_allclose(Q.T @ Q, np.eye(6), atol=1e-12)
    np.testing.assert_allclose(X @ Q @ Q.T, X, atol=1e-12)  # the basis spans the batch
    centre = net.prior(1, rng=rng, dtype="float64", bias_std=0.1)[0]
    reduced_centre = sub.reduce(centre)
    V = reduced_centre + 0.3 * sub.prior_std * rng.standard_normal((7, sub.network.parameter_count))
    U = sub.expand(V, centre, reduced_centre)
    np.testing.assert_allclose(sub.network.forward(V, sub.inputs), net.forward(U, X), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(sub.reduce(U), V, rtol=1e-10, atol=1e-12)  # reduce undoes expand
    offsets = (U - centre)[:, :100].reshape(-1, 20)  # the first layer's 5 x 20 weights
    np.testing.assert_allclose(offsets - offsets @ Q @ Q.T, 0, atol=1e-12)  # in the span only
    np.testing.assert_array_equal((U - centre)[:, 100:], (V - reduced_centre)[:, 30:])  # the rest as drawn
    assert np.allclose(sub.prior_std[:30], std[0]) and np.array_equal(sub.prior_std[30:], std[100:])


def test_a_dependent_example_lowers_the_rank_and_the_coordinates_still_hold():
    net, X = network_and_batch(duplicate=True)
    sub = InputSpan(net, net.prior_std("float64")).subspace(X)
    assert sub.basis.shape == (20, 5)
    np.testing.assert_allclose(X @ sub.basis @ sub.basis.T, X, atol=1e-10)
    U = net.prior(4, rng=2, dtype="float64")
    np.testing.assert_allclose(sub.network.forward(sub.reduce(U), sub.inputs), net.forward(U, X), atol=1e-10)


@pytest.mark.parametrize("chunk_elements", [None, 2 * 27], ids=["one-chunk", "chunks-of-2-members"])
def test_hidden_span_coordinates_reproduce_the_full_network_and_hold_the_centres_activations(chunk_elements,
                                                                                              monkeypatch):
    """hidden=True: a later Dense layer's draws lie in the span of the centre's inputs to it on the batch, the
    coordinates still reproduce the full network (mapped back in one chunk of members or several), and a
    direction outside that span leaves the centre's outputs unchanged (so it changes a member's at second order
    only)."""
    if chunk_elements:
        monkeypatch.setattr(ekinet.input_span, "_CHUNK_ELEMENTS", chunk_elements)  # layer 1 has 3 x 9 weights
    net, X = network_and_batch(batch=4, features=20, hidden_units=9)  # layer 1 reads 9 features of 4 examples
    rng = np.random.default_rng(1)
    std = net.prior_std("float64", bias_std=0.1)
    centre = net.prior(1, rng=rng, dtype="float64", bias_std=0.1)[0]
    sub = InputSpan(net, std, hidden=True).subspace(X, centre=centre)
    assert [(b.layer, b.rank) for b in sub.blocks] == [(0, 4), (1, 4)]
    assert sub.parameter_count == 9 * 4 + 9 + 3 * 4 + 3 < net.parameter_count
    activations = np.maximum(X @ centre[:180].reshape(9, 20).T + centre[180:189], 0)  # the centre's layer 0
    Q = sub.blocks[1].basis
    np.testing.assert_allclose(activations @ Q @ Q.T, activations, atol=1e-12)
    reduced_centre = sub.reduce(centre)
    V = reduced_centre + 0.3 * sub.prior_std * rng.standard_normal((6, sub.parameter_count))
    U = sub.expand(V, centre, reduced_centre)
    np.testing.assert_allclose(sub.forward(V), net.forward(U, X), rtol=1e-10, atol=1e-12)
    V2 = V[::-1] + 0.1  # again through the reused buffers
    U2 = sub.expand(V2, centre, reduced_centre)
    np.testing.assert_allclose(sub.forward(V2), net.forward(U2, X), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(sub.reduce(U), V, rtol=1e-10, atol=1e-12)
    offsets = (U - centre)[:, 189:216].reshape(-1, 9)  # layer 1's 3 x 9 weights
    np.testing.assert_allclose(offsets - offsets @ Q @ Q.T, 0, atol=1e-12)
    outside = rng.standard_normal((3, 9))
    outside -= outside @ Q @ Q.T
    moved = centre.copy()
    moved[189:216] += outside.ravel()
    np.testing.assert_allclose(net.forward(moved[None], X), net.forward(centre[None], X), atol=1e-12)
    assert not np.allclose(net.forward(moved[None], 2 * X), net.forward(centre[None], 2 * X))
    wide = InputSpan(net, std, hidden=True).subspace(np.vstack([X] * 3), centre=centre)  # 12 examples > 9
    assert [b.layer for b in wide.blocks] == [0]
    with pytest.raises(ValueError, match="hidden-span draws need the centre"):
        InputSpan(net, std, hidden=True).subspace(X)


@pytest.mark.parametrize("method", ["loss", "kalman"])
@pytest.mark.parametrize("centred, momentum, hidden", [(False, False, False), (True, False, False),
                                                       (True, 0.6, False), (False, False, True),
                                                       (True, 0.6, True)])
def test_an_update_in_the_span_equals_the_full_update_of_its_members(method, centred, momentum, hidden):
    """EKI.ask(subspace) draws around the last update's centre (under momentum, moved by c times the step of
    the centre); tell() maps the mean back: it equals the full update (output="mean") of the members expanded
    to the full parameters, and `best` is a full member. With hidden spans the subspace is built around
    EKI.next_centre, the same centre."""
    net, X = network_and_batch(batch=8, features=30, hidden_units=12 if hidden else 5)
    y = np.random.default_rng(3).standard_normal((8, 3))
    std = net.prior_std("float64", bias_std=0.1)
    span = InputSpan(net, std, hidden=hidden)
    U0 = net.prior(12, rng=4, dtype="float64", bias_std=0.1)
    scheduler = ekinet.AdaptiveStep(0.5) if method == "loss" else ekinet.ConstantStep(0.5)
    spec = ekinet.Randomization(scale=0.3, prior_std=std, centred=centred)
    opt = ekinet.EKI(U0, noise_cov=0.1, method=method, scheduler=scheduler, randomization=spec, rng=5,
                     momentum=momentum)
    means = [U0.mean(axis=0)]
    for n in range(4):
        c = momentum if momentum and n >= 2 else 0.0  # the coefficient is 0 after the first update
        centre = U0.mean(axis=0) if n == 0 else means[n] + c * (means[n] - means[n - 1])
        np.testing.assert_allclose(opt.next_centre, centre, rtol=1e-12, atol=1e-14)
        sub = span.subspace(X, centre=opt.next_centre)
        assert len(sub.blocks) == (2 if hidden else 1)
        V = opt.ask(subspace=sub)
        assert V.shape == (12, sub.parameter_count)
        if n == 0 and not hidden:  # the initial members themselves, mapped
            np.testing.assert_allclose(sub.forward(V), net.forward(U0, X), rtol=1e-10, atol=1e-12)
        elif centred:
            np.testing.assert_allclose(V.mean(axis=0), sub.reduce(centre), atol=1e-12)
        members = sub.expand(V, centre, sub.reduce(centre))
        G = net.forward(members, X).reshape(12, -1)
        np.testing.assert_allclose(sub.forward(V).reshape(12, -1), G, atol=1e-10)
        if method == "loss":
            expected, _ = ekinet.loss_update(members, G, G - y.reshape(-1), step=0.5, output="mean")
            opt.tell(G, grad=G - y.reshape(-1), loss_values=((G - y.reshape(-1)) ** 2).sum(axis=1))
        else:  # the same perturbed observations: a generator in the optimiser's state
            generator = np.random.default_rng()
            generator.bit_generator.state = opt._rng.bit_generator.state
            expected = ekinet.kalman_update(members, G, y.reshape(-1), 0.1, step=0.5, output="mean", rng=generator)
            opt.tell(G, y.reshape(-1))
        np.testing.assert_allclose(opt.updated_mean, expected, rtol=1e-9, atol=1e-12)
        means.append(opt.updated_mean)
        assert opt.best.shape == (net.parameter_count,)
        assert any(np.allclose(opt.best, m) for m in members)
    assert opt.ensemble.shape == U0.shape  # drawn around the centre from the full prior when asked for
    np.testing.assert_allclose(opt.ensemble.std(axis=0).mean(), 0.3 * std.mean(), rtol=0.3)


def test_looking_at_the_ensemble_between_updates_in_a_subspace_changes_nothing():
    net, X = network_and_batch(batch=8, features=30)
    y = np.random.default_rng(3).standard_normal(8 * 3)
    std = net.prior_std("float64", bias_std=0.1)
    span = InputSpan(net, std)
    U0 = net.prior(12, rng=4, dtype="float64", bias_std=0.1)
    runs = []
    for look in (False, True):
        opt = ekinet.EKI(U0, noise_cov=0.1, randomization=ekinet.Randomization(scale=0.3, prior_std=std), rng=5)
        for _ in range(3):
            sub = span.subspace(X, centre=opt.next_centre)
            V = opt.ask(subspace=sub)
            opt.tell(sub.forward(V).reshape(12, -1), y)
            if look:  # a draw around the centre from a stream of its own, the same at every read
                np.testing.assert_array_equal(opt.ensemble, opt.ensemble)
                assert opt.mean.shape == (net.parameter_count,)
        runs.append(opt.updated_mean)
    np.testing.assert_array_equal(runs[0], runs[1])
    shown = opt.ensemble  # a full update after subspace ones evaluates the members that were shown
    np.testing.assert_array_equal(opt.ask(), shown)


def test_bad_uses_are_named():
    net, X = network_and_batch()
    std = net.prior_std("float64")
    with pytest.raises(ValueError, match="first layer is Dense on flat inputs"):
        InputSpan(nn.from_string("cnn-mnist"), nn.from_string("cnn-mnist").prior_std())
    with pytest.raises(ValueError, match="one prior standard deviation for all of the first layer"):
        InputSpan(net, np.linspace(0.1, 1.0, net.parameter_count))
    with pytest.raises(ValueError, match="inputs are all zero"):
        InputSpan(net, std).subspace(np.zeros_like(X))
    with pytest.raises(ValueError, match=rf"X has shape \({X.shape[0]}, {X.shape[1] - 1}\); the first layer takes"):
        InputSpan(net, std).subspace(X[:, 1:])
    with pytest.raises(TypeError, match="X has dtype float32 but prior_std .* is float64"):
        InputSpan(net, std).subspace(X.astype(np.float32))
    with pytest.raises(ValueError, match="X contains 1 NaN/Inf"):
        InputSpan(net, std).subspace(np.where(np.arange(X.size).reshape(X.shape) == 3, np.nan, X))
    sub = InputSpan(net, std).subspace(X)
    U0 = net.prior(5, rng=0, dtype="float64")
    for options in ({}, {"randomization": ekinet.Randomization(every=2, prior_std=std)}):
        with pytest.raises(ValueError, match=r"redraw after every update \(Randomization\(every=1\)\)"):
            ekinet.EKI(U0, method="loss", **options).ask(subspace=sub)

"""Losses of network outputs and their gradients with respect to the outputs (eki-math section 2).

Outputs z are J x M (each member's outputs on the batch, examples one after another, `width` per example);
the functions return (values per member, gradient J x M).
"""

import math

from ._common import Noise, namespace


def loss_and_gradient(loss, Z, y, *, width=None, noise_cov=1.0):
    xp = namespace(Z, y)
    J, M = Z.shape
    width = M if width is None else int(width)
    if width < 1 or M % width:
        raise ValueError(f"width = {width} must divide the {M} outputs per member")
    if loss == "squared":
        return _squared(xp, Z, y, Noise(xp, noise_cov, M, Z.dtype))
    if loss == "cross_entropy":
        return _cross_entropy(xp, Z, y)
    if loss == "cross_entropy_logits":
        return _cross_entropy_logits(xp, Z.reshape(J, -1, width), y.reshape(-1, width))
    if loss == "gaussian_nll":
        if width % 2:
            raise ValueError(f"width = {width} must be even: k means then k standard deviations per example")
        return _gaussian_nll(xp, Z.reshape(J, -1, width), y.reshape(-1, width // 2))
    raise ValueError(f"loss = {loss!r} is not one of 'squared', 'cross_entropy', 'cross_entropy_logits', "
                     "'gaussian_nll'")


def _squared(xp, Z, y, noise):
    """1/2 |y - z|^2_Gamma, g = Gamma^{-1} (z - y)."""
    r = Z - y[None, :]
    g = noise.inverse_apply(r)
    return 0.5 * xp.sum(r * g, axis=1), g


def _cross_entropy(xp, Z, y):
    """-<y, log z> on probabilities, g = -y / z (0 where y = 0)."""
    target = xp.broadcast_to(y[None, :], Z.shape)
    used = target != 0
    if bool(xp.any(used & ~(Z > 0))):
        raise ValueError("cross_entropy: probabilities <= 0 where the target is non-zero; pass softmax outputs "
                         "or use cross_entropy_logits")
    safe = xp.where(used, Z, 1)
    values = -xp.sum(xp.where(used, target * xp.log(safe), 0), axis=1)
    return values, xp.where(used, -target / safe, 0).astype(Z.dtype)


def _cross_entropy_logits(xp, logits, y):
    """-<y, log softmax(z)> per example, g = (sum y) softmax(z) - y."""
    shifted = logits - logits.max(axis=2, keepdims=True)
    log_sum = xp.log(xp.exp(shifted).sum(axis=2, keepdims=True))
    log_p = shifted - log_sum
    values = -xp.sum(y[None] * log_p, axis=(1, 2))
    grad = y.sum(axis=1)[None, :, None] * xp.exp(log_p) - y[None]
    return values, grad.reshape(logits.shape[0], -1)


def _gaussian_nll(xp, Z, y):
    """sum_k log(2 pi sigma_k^2)/2 + (y_k - mu_k)^2 / (2 sigma_k^2) for outputs [mu, sigma] per example."""
    k = y.shape[1]
    mu, sigma = Z[..., :k], Z[..., k:]
    if not bool(xp.all(sigma > 0)):
        raise ValueError("gaussian_nll: standard deviations <= 0; the sigma outputs must be positive")
    w = (y[None] - mu) / sigma  # in units of sigma: sigma**2 and sigma**3 would underflow for tiny sigma
    values = xp.sum(0.5 * math.log(2 * math.pi) + xp.log(sigma) + 0.5 * w**2, axis=(1, 2))
    grad = xp.concatenate([-w / sigma, (1 - w**2) / sigma], axis=2)
    return values, grad.reshape(Z.shape[0], -1)

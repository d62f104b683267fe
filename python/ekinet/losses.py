"""Losses of the ensemble's outputs and their gradients with respect to the outputs (eki-math section 2).

Each function takes outputs of shape (J, B, C) (members, examples, outputs per example) or (J, M) and returns
(values, grad): values[j] is member j's loss summed over the batch, grad has the shape of the outputs and is
what ekinet.loss_update / EKI.tell(grad=...) take. Flat (J, M) outputs take their examples from the targets'
shape: (B,) labels or (B, C) rows; 1-D real targets make the M outputs one example (one softmax over all M).
"""

import numpy as np

from . import _core, reference
from ._arrays import floating, like_input, namespace_of, same_namespace, to_array
from ._backend import resolve
from ._inputs import noise_covariance, noise_value, require_finite
from ._native import context_for, view

__all__ = ["cross_entropy", "cross_entropy_logits", "gaussian_nll", "one_hot", "squared"]


def squared(outputs, targets, *, noise_cov=1.0, backend="auto"):
    """1/2 |y - z|^2_Gamma per member; gradient Gamma^{-1} (z - y). targets: (M,) or (B, C)."""
    return _evaluate("squared", outputs, targets, noise_cov=noise_cov, backend=backend)


def cross_entropy(probabilities, targets, *, backend="auto"):
    """-<y, log z> on probabilities z (softmax outputs); gradient -y / z. targets: one-hot (B, C) or labels (B,).

    The gradient overflows where a float32 probability is subnormal; cross_entropy_logits has no such limit."""
    return _evaluate("cross_entropy", probabilities, targets, backend=backend)


def cross_entropy_logits(logits, targets, *, backend="auto"):
    """Cross-entropy of softmax(logits), computed stably; gradient softmax(z) - y per example."""
    return _evaluate("cross_entropy_logits", logits, targets, backend=backend)


def gaussian_nll(outputs, targets, *, backend="auto"):
    """Gaussian negative log-likelihood of outputs [mu_1..mu_k, sigma_1..sigma_k] per example.

    outputs: (J, B, 2k); targets: (B, k). sigma must be positive (e.g. a softplus output).
    """
    return _evaluate("gaussian_nll", outputs, targets, backend=backend)


def _evaluate(loss, outputs, targets, *, noise_cov=1.0, backend="auto"):
    original = outputs
    Z = floating(to_array(outputs, "outputs"), "outputs")
    xp = namespace_of(Z)
    if Z.ndim not in (2, 3):
        raise ValueError(f"outputs have shape {tuple(Z.shape)}; expected (J, M) or (J, B, C)")
    shape = Z.shape
    J = shape[0]
    if Z.size == 0:
        raise ValueError(f"outputs have shape {tuple(shape)}: no members or no outputs to score")
    Z = xp.ascontiguousarray(Z.reshape(J, -1))
    y, width = _targets(loss, targets, xp, Z, shape)
    noise = noise_covariance(noise_cov, xp, Z.dtype, Z.shape[1]) if loss == "squared" else ("scalar", 1.0, None)

    if resolve(backend, xp) == "reference":
        require_finite(xp, Z, "outputs")
        require_finite(xp, y, "targets")
        values, grad = reference.loss_and_gradient(loss, Z, y, width=width, noise_cov=noise_value(*noise))
    else:
        values = xp.empty(J, dtype=Z.dtype)
        grad = xp.empty_like(Z)
        _core.loss_and_gradient(context_for(xp), loss, view(Z), view(y), width, noise[0], noise[1],
                                None if noise[2] is None else view(noise[2]), view(values), view(grad))
    return like_input(values, original), like_input(grad.reshape(shape), original)


def _targets(loss, targets, xp, Z, shape):
    """Flat targets of Z's dtype and the number of outputs per example (width)."""
    y = given = same_namespace(to_array(targets, "targets"), "targets", xp)
    M = Z.shape[1]
    # integer (B,) labels; a (B, 1) column is read as labels too (and refused below), wider rows are one-hot
    labels = loss in ("cross_entropy", "cross_entropy_logits") and y.dtype.kind in "iu" and \
        (y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1))
    if len(shape) == 3:
        width = shape[2]
    elif labels and y.ndim == 1 and y.shape[0] > 0:
        width = M // y.shape[0]
    elif y.ndim == 2:
        width = y.shape[1] * (2 if loss == "gaussian_nll" else 1)
    else:
        width = M
    if labels:
        if y.ndim != 1 or width * y.shape[0] != M:
            raise ValueError(f"integer labels of shape {tuple(y.shape)} do not match outputs of shape {shape}")
        y = one_hot(y, width, Z.dtype)
    if y.dtype.kind not in "fiu":
        raise TypeError(f"targets have dtype {y.dtype.name}; pass real numbers")
    y = xp.ascontiguousarray(y.astype(Z.dtype, copy=False).reshape(-1))
    expected = M // 2 if loss == "gaussian_nll" else M
    if y.shape[0] != expected:
        hint = ""
        if loss.startswith("cross_entropy") and given.ndim == 1 and given.dtype.kind == "f":
            hint = (f"; class labels must be integers (got {given.dtype.name}: pass labels.astype(int)), or "
                    "give one-hot or probability targets, one row per example")
        raise ValueError(f"targets have {y.shape[0]} values but outputs of shape {shape} need {expected}{hint}")
    return y, int(width)


def one_hot(labels, classes, dtype=np.float32):
    """(B,) integer labels in [0, classes) to (B, classes) one-hot targets."""
    xp = namespace_of(labels)
    labels = xp.asarray(labels)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ValueError(f"labels have shape {tuple(labels.shape)}, dtype {labels.dtype}; pass (B,) integers")
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= classes):
        raise ValueError(f"labels span [{int(labels.min())}, {int(labels.max())}], outside [0, {classes}) "
                         "(classes)")
    return xp.eye(classes, dtype=dtype)[labels]

"""EKI(R) with the first layer's weights drawn in the span of the mini-batch's inputs.

A network whose first layer is Dense sees a batch X (B x d) only through the products W x_b of that layer's
weights with the examples. The part of a member's first-layer weights orthogonal to span{x_1, ..., x_B} changes no
output of the batch, and so no weight of the update: in EKI(R) that part of the draws, and of the mean's move,
is pure noise. For 784-100-10 on MNIST batches of 100 it is 7/8 of the first layer's directions and most of the
randomisation's variance; the loss gradient of the batch has no component there (its rows are combinations of
the x_b). Drawing the first layer's weights in the span only (the prior covariance restricted to the
directions that change the batch's outputs) keeps the update's expectation and removes that noise.

It also makes the update cheaper: with Q (d x r) an orthonormal basis of the span, a member's first layer
W = W_centre + Z Q^T acts on the batch as (W_centre Q + Z) (X Q)^T, so one update runs in the span's
coordinates, on a network that reads r features (the batch's rank, at most min(d, B)): 11110 parameters instead
of 79510 for 784-100-10 at B = 100. The mean the update computes there is mapped back exactly. A batch at
least as large as d spans every direction, and the draws are then the full ones. docs/results.md has the
measurements.
"""

import dataclasses

import numpy as np

from . import nn
from ._arrays import namespace_of, to_host


class InputSpan:
    """The per-batch subspaces of a network whose first layer is Dense (see the module doc).

    network : nn.Sequential, first layer Dense, flat input (d,). prior_std : (P,) standard deviations of the
    randomisation's prior (nn.Sequential.prior_std); the first layer's weights must share one value (Glorot).
    """

    def __init__(self, network, prior_std):
        first = network.layers[0]
        if not isinstance(first, nn.Dense) or len(network.input_shape) != 1:
            raise ValueError(f"input-span draws need a network whose first layer is Dense on flat inputs; this "
                             f"one starts with {first!r} on input shape {network.input_shape}")
        self.network = network
        offset, (units, features) = network.parameters["0.weight"]
        self._start, self._units, self._features = offset, units, features
        self._stop = offset + units * features
        xp = namespace_of(prior_std)
        block = prior_std[self._start:self._stop]
        if float(xp.max(block)) != float(xp.min(block)):
            raise ValueError("input-span draws need one prior standard deviation for all of the first layer's "
                             "weights (the Glorot prior's); this prior_std varies within them")
        self._prior_std = prior_std
        self._reduced = {}  # rank -> (network, prior_std): one per batch size, built once

    def subspace(self, X):
        """The Subspace of the batch X (B, d)."""
        xp = namespace_of(X)
        basis = _orthonormal_basis(xp, X)
        rank = basis.shape[1]
        if rank not in self._reduced:
            std = self._prior_std
            first = xp.full(self._units * rank, float(std[self._start]), dtype=std.dtype)
            self._reduced[rank] = (nn.Sequential(list(self.network.layers), (rank,)),
                                   xp.concatenate([std[:self._start], first, std[self._stop:]]))
        return Subspace(self, basis, X @ basis, *self._reduced[rank])


@dataclasses.dataclass(eq=False)
class Subspace:
    """One batch's coordinates: members u = centre + T (v - reduce(centre)), T mapping the first layer's
    (units x r) block to (units x d) by Q^T and every other parameter to itself. For EKI.ask(subspace=...).

    basis : Q (d, r). inputs : the batch in the span's coordinates, X Q (B, r). network : the network reading
    r features (same layers). prior_std : (P_r,) the draws' standard deviations in these coordinates."""

    span: InputSpan
    basis: object
    inputs: object
    network: object
    prior_std: object

    def reduce(self, U):
        """(P,) or (J, P) parameters to (P_r,) or (J, P_r): the first layer's weights W -> W Q."""
        s = self.span
        xp = namespace_of(U)
        rows = U.reshape(-1, U.shape[-1])
        first = rows[:, s._start:s._stop].reshape(-1, s._features) @ self.basis
        reduced = xp.concatenate([rows[:, :s._start], first.reshape(rows.shape[0], -1), rows[:, s._stop:]], axis=1)
        return reduced.reshape(U.shape[:-1] + (reduced.shape[1],))

    def expand(self, V, centre, reduced_centre):
        """(P_r,) or (J, P_r) members in these coordinates back to (P,) or (J, P): centre + T (V - reduced_centre)."""
        s = self.span
        xp = namespace_of(V)
        offsets = (V - reduced_centre).reshape(-1, V.shape[-1])
        rank = self.basis.shape[1]
        stop = s._start + s._units * rank
        first = offsets[:, s._start:stop].reshape(-1, rank) @ self.basis.T
        full = xp.concatenate([offsets[:, :s._start], first.reshape(offsets.shape[0], -1), offsets[:, stop:]], axis=1)
        return (centre + full).reshape(V.shape[:-1] + (full.shape[1],))


# Directions whose share of the batch's largest squared singular value is below this are dropped: they hold
# nothing of the batch (duplicate or dependent examples) and their basis vectors would be rounding noise.
RANK_TOLERANCE = 1e-10


def _orthonormal_basis(xp, X):
    """(d, r) orthonormal basis of the span of the rows of X (B, d), from the eigenvectors of the B x B Gram
    matrix in float64 (LAPACK's QR of the tall d x B matrix is two orders slower here), r its numerical rank.
    The small eigenproblem is solved by NumPy's LAPACK on every backend: eigenvectors are defined up to sign,
    cuSOLVER picks other signs than LAPACK, and the signs decide which numbers a member's draws become, so
    solving it in one place makes a run on the GPU the CPU's up to rounding (and costs a B x B copy)."""
    rows = X.astype(xp.float64)
    gram = rows @ rows.T
    values, vectors = np.linalg.eigh(to_host(gram))
    keep = values > RANK_TOLERANCE * values[-1]
    if not keep.any():
        raise ValueError("the batch's inputs are all zero: they span no direction, and a first layer sees only "
                         "its biases")
    basis = (rows.T @ xp.asarray(vectors[:, keep])) / xp.asarray(np.sqrt(values[keep]))
    return basis.astype(X.dtype)

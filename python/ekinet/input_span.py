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

hidden=True extends the same to every later Dense layer: its weights are drawn in the span of its inputs on
the batch as the centre network (the point the members are drawn around) computes them. A member's own inputs
to that layer differ from the centre's by its draws in the layers below, so the directions left out change its
outputs at second order only (for DNN 3, 784-300-100-10, at B = 100: 10000 coordinates of the second layer's
weights in place of 30000); the batch's gradient for that layer lies in the span exactly. These coordinates
reduce the noise of the update, not its cost: the forward pass maps them back to the layer's full weights.
"""

import dataclasses

import numpy as np

from . import nn
from ._arrays import floating, namespace_of, to_array, to_host
from ._inputs import require_finite


@dataclasses.dataclass(frozen=True)
class _Block:
    """A Dense layer's weight (units x features) at `start` of a member's parameters, drawn in the span of the
    columns of basis (features x rank)."""

    layer: int
    start: int
    units: int
    features: int
    basis: object

    @property
    def rank(self):
        return self.basis.shape[1]


class InputSpan:
    """The per-batch subspaces of a network whose first layer is Dense (see the module doc).

    network : nn.Sequential, first layer Dense, flat input (d,). prior_std : (P,) standard deviations of the
    randomisation's prior (nn.Sequential.prior_std); each spanned layer's weights must share one value (Glorot).
    hidden : also draw every later Dense layer's weights in the span of its inputs on the batch (the module doc).
    """

    def __init__(self, network, prior_std, hidden=False):
        first = network.layers[0]
        if not isinstance(first, nn.Dense) or len(network.input_shape) != 1:
            raise ValueError(f"input-span draws need a network whose first layer is Dense on flat inputs; this "
                             f"one starts with {first!r} on input shape {network.input_shape}")
        self.network, self.hidden = network, bool(hidden)
        self._layers = [i for i, layer in enumerate(network.layers)
                        if isinstance(layer, nn.Dense) and (i == 0 or self.hidden)]
        xp = namespace_of(prior_std)
        self._weights = {}  # layer -> (start, units, features, prior std)
        for i in self._layers:
            start, (units, features) = network.parameters[f"{i}.weight"]
            block = prior_std[start:start + units * features]
            if float(xp.max(block)) != float(xp.min(block)):
                where = "the first layer's" if i == 0 else f"layer {i}'s"
                raise ValueError(f"input-span draws need one prior standard deviation for all of {where} weights "
                                 "(the Glorot prior's); this prior_std varies within them")
            self._weights[i] = (start, units, features, float(block[0]))
        self._prefixes = {i: _prefix(network, i) for i in self._layers[1:]}
        self._prior_std = prior_std
        self._reduced = {}  # ranks -> (forward network, prior_std): one per batch size and ranks, built once
        self._workspace = {}  # the forward's parameters of the last shape, reused: a fresh J x P array costs
        # more in page faults than the GEMM that fills it

    def subspace(self, X, centre=None):
        """The Subspace of the batch X (B, d); with hidden=True around `centre` (P,), the point the members
        are drawn around (EKI.next_centre), whose activations span the later layers' inputs. X has prior_std's
        dtype, the ensemble's."""
        X = floating(to_array(X, "X"), "X")
        xp = namespace_of(X)
        features = self._weights[0][2]
        if X.ndim != 2 or X.shape[1] != features:
            raise ValueError(f"X has shape {tuple(X.shape)}; the first layer takes (B, {features}): one flat example "
                             "per row")
        if X.dtype != self._prior_std.dtype:
            raise TypeError(f"X has dtype {X.dtype} but prior_std (the ensemble's dtype) is {self._prior_std.dtype}; "
                            f"pass X.astype({self._prior_std.dtype.name!r}): another dtype would change the members'")
        require_finite(xp, X, "X")
        blocks = [self._block(0, _orthonormal_basis(xp, X))]
        if self.hidden:
            if centre is None:
                raise ValueError("hidden-span draws need the centre the members are drawn around: "
                                 "subspace(X, centre=EKI.next_centre)")
            for i in self._layers[1:]:
                features = self._weights[i][2]
                prefix = self._prefixes[i]
                inputs = prefix.forward(centre[None, :prefix.parameter_count], X)[0].reshape(-1, features)
                if inputs.shape[0] >= features:  # as many inputs as features: a span of every direction
                    continue
                blocks.append(self._block(i, _orthonormal_basis(xp, inputs, allow_empty=True)))
        ranks = tuple((b.layer, b.rank) for b in blocks)
        if ranks not in self._reduced:
            self._reduced[ranks] = (nn.Sequential(list(self.network.layers), (blocks[0].rank,)),
                                    self._reduced_prior_std(blocks))
        network, prior_std = self._reduced[ranks]
        return Subspace(blocks, X @ blocks[0].basis, network, prior_std, centre, self._workspace)

    def _block(self, layer, basis):
        start, units, features, _ = self._weights[layer]
        return _Block(layer, start, units, features, basis)

    def _reduced_prior_std(self, blocks):
        xp, std = namespace_of(self._prior_std), self._prior_std
        return _map_blocks(std[None], blocks, reduced=(), convert={
            k: (lambda rows, b=b: xp.full((rows.shape[0], b.rank), self._weights[b.layer][3], dtype=std.dtype))
            for k, b in enumerate(blocks)})[0]


class Subspace:
    """One batch's coordinates: members u = centre + T (v - reduce(centre)), T mapping each spanned layer's
    (units x rank) block to (units x features) by the transposed basis and every other parameter to itself.
    For EKI.ask(subspace=...).

    basis : Q (d, r) of the batch's inputs. inputs : the batch in the span's coordinates, X Q (B, r). network :
    the network reading r features (same layers), on which forward() evaluates members. prior_std : (P_r,) the
    draws' standard deviations in these coordinates; parameter_count : P_r.
    """

    def __init__(self, blocks, inputs, network, prior_std, centre=None, workspace=None):
        self._workspace = {} if workspace is None else workspace
        self.blocks, self.inputs, self.network, self.prior_std = blocks, inputs, network, prior_std
        self.basis = blocks[0].basis
        self.parameter_count = int(prior_std.shape[0])
        # The forward's coordinates keep the first layer's block reduced and map each later one back to full
        # weights around the centre: W_centre + (V - W_centre Q) Q^T = V Q^T + W_centre (I - Q Q^T).
        self._residuals = {}
        for b in blocks[1:]:
            weights = centre[b.start:b.start + b.units * b.features].reshape(b.units, b.features)
            self._residuals[b.layer] = weights - (weights @ b.basis) @ b.basis.T
        self._forward_count = network.parameter_count

    def reduce(self, U):
        """(P,) or (J, P) parameters to (P_r,) or (J, P_r): each spanned layer's weights W -> W Q."""
        rows = U.reshape(-1, U.shape[-1])
        reduced = _map_blocks(rows, self.blocks, reduced=(), convert={
            k: (lambda block, b=b: block @ b.basis) for k, b in enumerate(self.blocks)})
        return reduced.reshape(U.shape[:-1] + (reduced.shape[1],))

    def expand(self, V, centre, reduced_centre):
        """(P_r,) or (J, P_r) members in these coordinates back to (P,) or (J, P): centre + T (V - reduced_centre)."""
        offsets = (V - reduced_centre).reshape(-1, V.shape[-1])
        full = _map_blocks(offsets, self.blocks, reduced=range(len(self.blocks)), convert={
            k: (lambda block, b=b: block @ b.basis.T) for k, b in enumerate(self.blocks)})
        return (centre + full).reshape(V.shape[:-1] + (full.shape[1],))

    def forward(self, V, backend="auto"):
        """The outputs (J, B, ...) on the batch of the members V (J, P_r), by `network` on `inputs`; spanned
        layers after the first are first mapped back to their full weights around the centre."""
        if len(self.blocks) > 1:
            V = self._forward_parameters(V)
        return self.network.forward(V, self.inputs, backend=backend)

    def _forward_parameters(self, V):
        # Written a block at a time into one buffer kept between updates (the J x P arrays dominate the time).
        # A block maps a chunk of members at a time by one GEMM, (members x units, rank) by (rank, features),
        # between contiguous buffers, then adds the centre's residual into the block's strided place: for a
        # stacked matmul of the members' small products NumPy takes a loop without BLAS, an order of magnitude
        # slower.
        xp = namespace_of(V)
        n = V.shape[0]
        chunks = {b.layer: max(1, min(n, _CHUNK_ELEMENTS // (b.units * b.features))) for b in self.blocks[1:]}
        sizes = (max(chunks[b.layer] * b.units * b.rank for b in self.blocks[1:]),
                 max(chunks[b.layer] * b.units * b.features for b in self.blocks[1:]))
        key = (xp.__name__, n, self._forward_count, sizes, V.dtype)
        if key not in self._workspace:
            self._workspace.clear()
            self._workspace[key] = (xp.empty((n, self._forward_count), dtype=V.dtype),
                                    xp.empty(sizes[0], dtype=V.dtype), xp.empty(sizes[1], dtype=V.dtype))
        out, row_buffer, product_buffer = self._workspace[key]
        first = self.blocks[0]
        shrunk_first = shrunk = first.units * (first.features - first.rank)
        at_v = at_out = 0
        for b in self.blocks[1:]:
            start_v, start_out = b.start - shrunk, b.start - shrunk_first
            out[:, at_out:start_out] = V[:, at_v:start_v]
            for low in range(0, n, chunks[b.layer]):
                high = min(n, low + chunks[b.layer])
                m = high - low
                rows = row_buffer[:m * b.units * b.rank].reshape(m, b.units * b.rank)
                rows[...] = V[low:high, start_v:start_v + b.units * b.rank]
                product = product_buffer[:m * b.units * b.features].reshape(m * b.units, b.features)
                xp.matmul(rows.reshape(m * b.units, b.rank), b.basis.T, out=product)
                block = out[low:high, start_out:start_out + b.units * b.features].reshape(m, b.units, b.features)
                xp.add(product.reshape(m, b.units, b.features), self._residuals[b.layer], out=block)
            at_v, at_out = start_v + b.units * b.rank, start_out + b.units * b.features
            shrunk += b.units * (b.features - b.rank)
        out[:, at_out:] = V[:, at_v:]
        return out


# Members a hidden block maps per GEMM: about this many elements of full weights (32 MB in float32), which keeps
# the two buffers small next to the J x P one.
_CHUNK_ELEMENTS = 1 << 23


def _map_blocks(rows, blocks, reduced, convert):
    """rows (n, size) of parameters whose blocks with an index in `reduced` are in span coordinates (units x
    rank), the others full (units x features); convert[k] maps block k as a (n units, width) matrix."""
    xp = namespace_of(rows)
    n = rows.shape[0]
    pieces, at, shrunk = [], 0, 0
    for k, b in enumerate(blocks):
        width = b.units * (b.rank if k in reduced else b.features)
        start = b.start - shrunk
        block = rows[:, start:start + width]
        if k in convert:
            block = convert[k](block.reshape(n * b.units, -1)).reshape(n, -1)
        pieces += [rows[:, at:start], block]
        at = start + width
        if k in reduced:
            shrunk += b.units * (b.features - b.rank)
    pieces.append(rows[:, at:])
    return xp.concatenate(pieces, axis=1)


def _prefix(network, layer):
    """The network of the layers before `layer`: its outputs are that layer's inputs, from a member's leading
    parameters (the layers' parameters lie in layer order)."""
    prefix = nn.Sequential(list(network.layers[:layer]), network.input_shape)
    assert all(network.parameters[name] == where for name, where in prefix.parameters.items())
    return prefix


# Directions whose share of the batch's largest squared singular value is below this are dropped: they hold
# nothing of the batch (duplicate or dependent examples) and their basis vectors would be rounding noise.
RANK_TOLERANCE = 1e-10


def _orthonormal_basis(xp, X, allow_empty=False):
    """(d, r) orthonormal basis of the span of the rows of X (B, d), from the eigenvectors of the B x B Gram
    matrix in float64 (LAPACK's QR of the tall d x B matrix is two orders slower here), r its numerical rank.
    The small eigenproblem is solved by NumPy's LAPACK on every backend: eigenvectors are defined up to sign,
    cuSOLVER picks other signs than LAPACK, and the signs decide which numbers a member's draws become, so
    solving it in one place makes a run on the GPU the CPU's up to rounding (and costs a B x B copy)."""
    rows = X.astype(xp.float64)
    gram = rows @ rows.T
    values, vectors = np.linalg.eigh(to_host(gram))
    keep = values > RANK_TOLERANCE * values[-1] if values[-1] > 0 else np.zeros(len(values), bool)
    if not keep.any() and not allow_empty:
        raise ValueError("the batch's inputs are all zero: they span no direction, and a first layer sees only "
                         "its biases")
    basis = (rows.T @ xp.asarray(vectors[:, keep])) / xp.asarray(np.sqrt(values[keep]))
    return basis.astype(X.dtype)

"""Ensemble statistics and EKI(R) randomisation (eki-math sections 3 and 4)."""

import math
import numbers

import numpy as np

from . import _core, reference
from ._arrays import floating, like_input, namespace_of, to_array
from ._backend import resolve
from ._inputs import ensemble, member_matrix, require_finite, seed_from
from ._native import context_for, view


def ensemble_mean(U, *, backend="auto"):
    """ubar = (1/J) sum_j u_j, shape (P,)."""
    original = U
    xp, U = ensemble(U)
    if resolve(backend, xp) == "reference":
        require_finite(xp, U, "U")
        return like_input(reference.ensemble_mean(U), original)
    mean = xp.empty(U.shape[1], dtype=U.dtype)
    _core.ensemble_mean(context_for(xp), view(U), view(mean))
    return like_input(mean, original)


def ensemble_spread(U, *, backend="auto"):
    """Trace of the parameter covariance, (1/J) sum_j |u_j - ubar|^2, without forming it."""
    xp, U = ensemble(U)
    if resolve(backend, xp) == "reference":
        require_finite(xp, U, "U")
        return reference.ensemble_spread(U)
    return _core.ensemble_spread(context_for(xp), view(U))


def randomize(U, scale, *, prior_std=1.0, rng=0, xi=None, centred=False, backend="auto"):
    """EKI(R): u_j <- ubar + scale * xi_j.

    xi_j = prior_std * z_j with z_j standard normal drawn from `rng` (int seed, numpy Generator, or None for
    fresh entropy), where prior_std is one value or one per parameter (e.g. the Glorot scales of a network);
    or give the prior samples xi (J, P) directly. centred=True subtracts the draws' sample mean, so that the
    new ensemble's mean is ubar exactly (the anomalies are unchanged). Returns a new ensemble.
    """
    original = U
    xp, U = ensemble(U)
    std = _prior_std(xp, scale, prior_std, U.dtype, U.shape[1])
    if xi is not None:
        xi = member_matrix(xi, "xi", xp, U, U.shape[1], "one prior sample per member, like U")
    seed = seed_from(np.random.default_rng() if rng is None else rng)  # None: fresh entropy, not reproducible
    if resolve(backend, xp) == "reference":  # the checks the native core makes
        require_finite(xp, U, "U")
        if xi is not None:
            require_finite(xp, xi, "xi")
        out = reference.randomize(U, scale, prior_std=std.reshape(-1), seed=seed, xi=xi)
    else:
        out = xp.empty_like(U, order="C")
        if xi is None:
            _core.randomize(context_for(xp), view(U), float(scale), view(xp.ascontiguousarray(std)), seed,
                            view(out))
        else:
            _core.randomize_with(context_for(xp), view(U), float(scale), view(xi), view(out))
    if centred:
        out = _centre_on(out, ensemble_mean(U, backend=backend), backend)
    return like_input(out, original)


def randomize_around(mean, members, scale, *, prior_std=1.0, rng=0, centred=False, backend="auto"):
    """EKI(R) around a given mean: `members` rows mean + scale * xi_j, with the draws of randomize()
    (randomize(U, ...) equals randomize_around(U.mean(axis=0), len(U), ...) up to the rounding of the mean). For the mean that
    kalman_update(..., output="mean") or loss_update(..., output="mean") returns. centred=True subtracts the
    draws' sample mean, so that the rows' mean is `mean` exactly. Returns a new ensemble."""
    original = mean
    mean = floating(to_array(mean, "mean"), "mean")
    xp = namespace_of(mean)
    if mean.ndim != 1:
        raise ValueError(f"mean has shape {tuple(mean.shape)}; one value per parameter, (P,), was expected")
    mean = xp.ascontiguousarray(mean)
    if isinstance(members, bool) or not isinstance(members, numbers.Integral) or members < 1:
        raise ValueError(f"members = {members!r} must be a positive integer (the rows to draw)")
    members = int(members)
    std = _prior_std(xp, scale, prior_std, mean.dtype, mean.shape[0])
    seed = seed_from(np.random.default_rng() if rng is None else rng)  # None: fresh entropy, not reproducible
    if resolve(backend, xp) == "reference":
        require_finite(xp, mean, "mean")
        out = reference.randomize_around(mean, members, scale, prior_std=std.reshape(-1), seed=seed)
    else:
        out = xp.empty((members, mean.shape[0]), dtype=mean.dtype)
        _core.randomize_around(context_for(xp), view(mean.reshape(1, -1)), float(scale),
                               view(xp.ascontiguousarray(std)), seed, view(out))
    if centred:
        out = _centre_on(out, mean, backend)
    return like_input(out, original)


def _centre_on(U, mean, backend):
    """U shifted row-wise so that its member mean is `mean`: the redraw's sampling offset, scale * prior_std /
    sqrt(J) per parameter, would otherwise add a random walk to the mean the update computed."""
    if U.shape[0] == 1:  # one member centred on the mean is the mean
        U[...] = mean
        return U
    U -= ensemble_mean(U, backend=backend) - mean
    return U


def _prior_std(xp, scale, prior_std, dtype, P):
    try:  # a Python or NumPy number, or a 0-d array
        finite = not isinstance(scale, str) and math.isfinite(float(scale)) and float(scale) >= 0
    except (TypeError, ValueError):
        finite = False
    if not finite:
        raise ValueError(f"scale = {scale!r} must be a non-negative finite number")
    std = xp.asarray(to_array(prior_std, "prior_std"), dtype=dtype).reshape(1, -1)
    if std.shape[1] not in (1, P):
        raise ValueError(f"prior_std has {std.shape[1]} values; pass one, or one per parameter ({P})")
    invalid = int(xp.count_nonzero(~((std >= 0) & xp.isfinite(std))))  # negative, NaN or Inf
    if invalid:
        raise ValueError(f"prior_std holds {invalid} negative or non-finite value(s); standard deviations are "
                         "finite and >= 0")
    return std

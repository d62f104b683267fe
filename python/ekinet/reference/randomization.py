"""EKI(R) randomisation, eki-math section 3: u_j <- ubar + scale * xi_j, xi_j from the centred prior."""

from ._common import namespace
from .rng import STREAM_RANDOMIZATION, normal_matrix


def randomize(U, scale, *, prior_std=1.0, seed=0, xi=None):
    """xi given (J x P), or xi_j = prior_std * z_j with z from the randomisation stream of `seed`."""
    if xi is None:
        return randomize_around(U.mean(axis=0), U.shape[0], scale, prior_std=prior_std, seed=seed)
    xp = namespace(U)
    return (U.mean(axis=0) + scale * xp.asarray(xi, dtype=U.dtype)).astype(U.dtype)


def randomize_around(mean, members, scale, *, prior_std=1.0, seed=0):
    """members rows mean + scale * prior_std * z_j, the draws of randomize()."""
    xp = namespace(mean)
    z = normal_matrix(xp, seed, STREAM_RANDOMIZATION, members, mean.shape[0])
    return (mean + scale * (xp.asarray(prior_std, dtype=xp.float64) * z).astype(mean.dtype)).astype(mean.dtype)

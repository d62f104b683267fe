"""EKI(R) randomisation, eki-math section 3: u_j <- ubar + scale * xi_j, xi_j from the centred prior."""

from ._common import namespace
from .rng import STREAM_RANDOMIZATION, normal_matrix


def randomize(U, scale, *, prior_std=1.0, seed=0, xi=None):
    """xi given (J x P), or xi_j = prior_std * z_j with z from the randomisation stream of `seed`."""
    xp = namespace(U)
    if xi is None:
        z = normal_matrix(xp, seed, STREAM_RANDOMIZATION, *U.shape)
        xi = xp.asarray(prior_std, dtype=xp.float64) * z
    return (U.mean(axis=0) + scale * xp.asarray(xi, dtype=U.dtype)).astype(U.dtype)

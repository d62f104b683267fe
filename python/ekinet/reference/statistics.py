"""Ensemble statistics; the P x P covariance is never formed."""

from ._common import namespace


def ensemble_mean(U):
    return U.mean(axis=0)


def ensemble_anomalies(U):
    return U - U.mean(axis=0)


def ensemble_spread(U):
    """Trace of the parameter covariance (1/J) sum_j |u_j - ubar|^2."""
    xp = namespace(U)
    return float(xp.sum((U - U.mean(axis=0)) ** 2) / U.shape[0])

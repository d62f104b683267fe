"""Shared fixtures and helpers of the ekinet test suite.

Helpers are plain functions (imported by the test modules with ``from conftest import ...``; pytest puts this
directory on sys.path) and the most used ones are also fixtures.
"""

import os
import zlib
from pathlib import Path

import numpy as np
import pytest

import ekinet

# (J, P, M) shapes for the Kalman and loss updates: J = 2, P = 1, M = 1, M >> J, J >> M, P >> J, square-ish.
SHAPES = [
    (2, 1, 1),
    (2, 3, 4),
    (3, 1, 5),
    (4, 50, 120),  # M >> J
    (60, 5, 3),  # J >> M
    (10, 200, 8),  # P >> J
    (7, 1, 30),  # P = 1, M >> J
    (30, 40, 30),
    (5, 7, 2),
]
SHAPE_IDS = [f"J{J}-P{P}-M{M}" for J, P, M in SHAPES]
NOISE_KINDS = ("scalar", "diagonal", "full")
FORMULATIONS = ("ensemble", "observation")
PERTURBATIONS = ("none", "given", "seeded")
STEPS = (0.1, 1.0, 10.0)

EPS32 = float(np.finfo(np.float32).eps)


def random_spd(rng, M, condition=10.0):
    """A random symmetric positive definite M x M matrix with eigenvalues spread log-uniformly in [1, condition]
    (times 0.5), built as Q diag(w) Q^T with a random orthogonal Q."""
    Q, _ = np.linalg.qr(rng.standard_normal((M, M)))
    w = 0.5 * np.geomspace(1.0, condition, M) if M > 1 else np.array([0.5])
    A = (Q * w) @ Q.T
    return (A + A.T) / 2


def make_noise(kind, M, rng, dtype=np.float64):
    """Gamma in the form the API takes: a Python float, (M,) variances or an (M, M) SPD matrix."""
    if kind == "scalar":
        return 0.3
    if kind == "diagonal":
        return rng.uniform(0.1, 1.0, M).astype(dtype)
    if kind == "full":
        return random_spd(rng, M).astype(dtype)
    raise ValueError(kind)


def noise_matrix(noise, M):
    """Gamma as a dense float64 M x M matrix."""
    if np.isscalar(noise):
        return float(noise) * np.eye(M)
    noise = np.asarray(noise, dtype=np.float64)
    if noise.ndim == 1:
        return np.diag(noise)
    return noise


def make_problem(J, P, M, rng, dtype=np.float64):
    """A random ensemble U (J, P), outputs G (J, M) of a mildly nonlinear map of U, and data y (M,)."""
    U = rng.standard_normal((J, P))
    A = rng.standard_normal((P, M)) / np.sqrt(P)
    G = np.tanh(U @ A) + 0.3 * rng.standard_normal((J, M))
    y = rng.standard_normal(M)
    return U.astype(dtype), G.astype(dtype), y.astype(dtype)


def textbook_kalman(U, G, y, Gamma, step=1.0, eta=None):
    """eki-math section 1 written out literally in float64:
    u_j + C^uw (C^ww + Gamma/h)^{-1} (y + eta_j - G_j), C^uw = dU^T dG / J, C^ww = dG^T dG / J."""
    U, G, y, Gamma = (np.asarray(a, dtype=np.float64) for a in (U, G, y, Gamma))
    J = U.shape[0]
    dU = U - U.mean(axis=0)
    dG = G - G.mean(axis=0)
    C_uw = dU.T @ dG / J
    C_ww = dG.T @ dG / J
    Y = y[None, :] + (0.0 if eta is None else np.asarray(eta, dtype=np.float64))
    gain = C_uw @ np.linalg.inv(C_ww + Gamma / step)
    return U + (Y - G) @ gain.T


def kalman_system_condition(G, Gamma, step, formulation):
    """Condition number of the SPD system each formulation factorises (float64)."""
    G = np.asarray(G, dtype=np.float64)
    J = G.shape[0]
    dG = G - G.mean(axis=0)
    if formulation == "observation":
        system = dG.T @ dG / J + Gamma / step
    else:
        system = dG @ np.linalg.solve(Gamma, dG.T) + (J / step) * np.eye(J)
    return float(np.linalg.cond(system))


def perturbation_kwargs(kind, J, M, rng, dtype=np.float64):
    if kind == "none":
        return {}
    if kind == "given":
        return {"perturbation": (0.5 * rng.standard_normal((J, M))).astype(dtype)}
    if kind == "seeded":
        return {"rng": 12345}
    raise ValueError(kind)


def assert_update_close(got, expected, U, rtol, what=""):
    """max |got - expected| <= rtol * max |expected - U|: the error relative to the size of the update."""
    got = np.asarray(got, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    size = float(np.max(np.abs(expected - np.asarray(U, dtype=np.float64))))
    error = float(np.max(np.abs(got - expected)))
    assert np.all(np.isfinite(got)), f"{what}: non-finite entries"
    assert error <= rtol * size, f"{what}: error {error:.3e} > {rtol:.1e} x update size {size:.3e}"


def orthogonal_complement_residual(V, base, directions):
    """Largest norm of the part of each row of V - base orthogonal to the row span of `directions`."""
    Q, s, _ = np.linalg.svd(directions.T, full_matrices=False)
    Q = Q[:, s > s[0] * 1e-10]
    D = V - base
    residual = D - (D @ Q) @ Q.T
    return float(np.max(np.linalg.norm(residual, axis=1)))


@pytest.fixture
def rng(request):
    """A NumPy generator seeded from the test's name, so every test draws its own reproducible numbers.
    EKINET_TEST_SEED=n shifts every seed (to check that no test depends on a lucky draw)."""
    offset = int(os.environ.get("EKINET_TEST_SEED", "0"))
    return np.random.default_rng([zlib.crc32(request.node.name.encode()), offset])


@pytest.fixture(scope="session")
def cpu_context():
    return ekinet._native.context_for(np)


# The counter-based generator of cpp/include/ekinet/random.hpp, re-implemented here from its comment so the
# tests do not depend on the library's own reference code for the random numbers.
_GOLDEN = 0x9E3779B97F4A7C15
_MASK64 = (1 << 64) - 1


def _splitmix64_int(x):
    x = (x + _GOLDEN) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def counter_normal_int(seed, stream, index):
    """Draw `index` of (seed, stream), in pure Python integer arithmetic and the math module."""
    import math

    key = _splitmix64_int((seed & _MASK64) ^ ((stream * 0xD1B54A32D192ED03) & _MASK64))
    bits = _splitmix64_int((key + index * _GOLDEN) & _MASK64)
    u1 = ((bits >> 32) + 1.0) * 2.0**-32
    u2 = (bits & 0xFFFFFFFF) * 2.0**-32
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


def counter_normals(seed, stream, rows, cols):
    """rows x cols draws of (seed, stream), entry (r, c) being draw r * cols + c (vectorised with uint64)."""

    def splitmix(x):
        x = x + np.uint64(_GOLDEN)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))

    key = np.uint64(_splitmix64_int((seed & _MASK64) ^ ((stream * 0xD1B54A32D192ED03) & _MASK64)))
    with np.errstate(over="ignore"):
        index = np.arange(rows * cols, dtype=np.uint64).reshape(rows, cols)
        bits = splitmix(key + index * np.uint64(_GOLDEN))
    u1 = ((bits >> np.uint64(32)).astype(np.float64) + 1.0) * 2.0**-32
    u2 = (bits & np.uint64(0xFFFFFFFF)).astype(np.float64) * 2.0**-32
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def coloured_perturbation(noise, M, seed, J, step):
    """eta_j ~ N(0, Gamma/h) as eki-math and random.hpp define it: z from stream 1 (perturbation), coloured by
    sqrt(gamma), sqrt(d) or the lower Cholesky factor of Gamma, divided by sqrt(h)."""
    z = counter_normals(seed, 1, J, M)
    if np.isscalar(noise):
        return np.sqrt(noise / step) * z
    noise = np.asarray(noise, dtype=np.float64)
    if noise.ndim == 1:
        return z * np.sqrt(noise / step)
    return z @ np.linalg.cholesky(noise).T / np.sqrt(step)


def real_data_dir():
    """The real data sets (MNIST, Fashion-MNIST, the series, Boston): $EKINET_DATA if set, else
    <repo>/../shared/data, else /work/shared/data. They are required (CI provides them): a missing folder
    fails rather than skips."""
    env = os.environ.get("EKINET_DATA")
    candidates = [Path(env)] if env else [Path(__file__).resolve().parents[1].parent / "shared" / "data",
                                          Path("/work/shared/data")]
    for candidate in candidates:
        if (candidate / "SHA256SUMS").is_file():
            return candidate
    pytest.fail("the real data sets are required but were not found: looked in "
                + ", ".join(map(str, candidates))
                + " (a folder with SHA256SUMS, mnist/, fashion_mnist/, ...). Set EKINET_DATA to that folder.")

"""The default job: calibrate a damped oscillator x'' + 2 zeta omega x' + omega^2 x = 0 from noisy observations
of x(t), treating the simulator (an RK4 integrator) as a black box. The same problem is solved in C++ by
cpp/examples/oscillator."""

import numpy as np

from .eki import minimize

TRUE_PARAMETERS = {"omega": 2.0, "zeta": 0.15}
TIMES = np.linspace(0.25, 10.0, 40)


def simulate(log_parameters, times=TIMES, substeps=20):
    """x(t) for each row (log omega, log zeta), x(0) = 1, x'(0) = 0, by RK4 (vectorised over members)."""
    log_parameters = np.atleast_2d(log_parameters)
    omega, zeta = np.exp(log_parameters[:, 0]), np.exp(log_parameters[:, 1])
    dt = times[0] / substeps
    x, v = np.ones_like(omega), np.zeros_like(omega)

    def acceleration(x, v):
        return -2 * zeta * omega * v - omega**2 * x

    outputs, t = [], 0.0
    for target in times:
        while t < target - 1e-12:
            k1x, k1v = v, acceleration(x, v)
            k2x, k2v = v + dt / 2 * k1v, acceleration(x + dt / 2 * k1x, v + dt / 2 * k1v)
            k3x, k3v = v + dt / 2 * k2v, acceleration(x + dt / 2 * k2x, v + dt / 2 * k2v)
            k4x, k4v = v + dt * k3v, acceleration(x + dt * k3x, v + dt * k3v)
            x, v = x + dt / 6 * (k1x + 2 * k2x + 2 * k3x + k4x), v + dt / 6 * (k1v + 2 * k2v + 2 * k3v + k4v)
            t += dt
        outputs.append(x)
    return np.stack(outputs, axis=1)


def run(ensemble_size=100, iterations=15, noise_std=0.02, seed=0, progress=True, dtype=np.float64):
    """Returns (result, truth, data)."""
    rng = np.random.default_rng(seed)
    truth = np.log([TRUE_PARAMETERS["omega"], TRUE_PARAMETERS["zeta"]])
    data = simulate(truth)[0] + noise_std * rng.standard_normal(TIMES.size)
    prior_mean, prior_std = np.log([1.5, 0.3]), np.array([0.3, 0.5])
    U0 = (prior_mean + prior_std * rng.standard_normal((ensemble_size, 2))).astype(dtype)
    result = minimize(simulate, U0, data.astype(dtype), noise_cov=noise_std**2, iterations=iterations, rng=seed,
                      progress=progress)
    return result, truth, data


def main(ensemble_size=100, iterations=15, seed=0, progress=True):
    result, truth, data = run(ensemble_size, iterations, seed=seed, progress=progress)
    members = np.exp(np.asarray(result.ensemble))
    estimate = np.exp(np.asarray(result.mean))
    print(f"Damped oscillator, {TIMES.size} noisy observations, J = {ensemble_size}, {iterations} EKI updates")
    print(f"{'parameter':>10} {'truth':>8} {'estimate':>9} {'ensemble std':>13}")
    for k, name in enumerate(("omega", "zeta")):
        print(f"{name:>10} {TRUE_PARAMETERS[name]:8.4f} {estimate[k]:9.4f} {members[:, k].std():13.4f}")
    first, last = result.history[0], result.history[-1]
    # history records each update's input ensemble, so `last` is the misfit before the final update
    print(f"mean-particle misfit: {first['mean_particle_loss']:.3g} at the start -> {last['mean_particle_loss']:.3g} "
          f"before the last update (noise level about {TIMES.size / 2:.0f})")
    return result

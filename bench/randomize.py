"""Benchmark of the EKI(R) randomisation step and the ensemble spread, which EKI(R) runs after every update,
and of the whole EKI(R) step (loss update, then redraw around the new mean).

randomize draws J x P counter-based normals around the ensemble mean (u_j <- ubar + gamma sigma xi_j), as many
numbers as the ensemble holds: on the CPU it cost more than the update itself before the draws were vectorised.
Compared in the same run with
  - the NumPy reference (ekinet.reference.randomize: the same numbers, by the readable vectorised formulas),
  - NumPy's own generator: ubar + gamma * sigma * rng.standard_normal((J, P)) (different numbers, the floor a
    NumPy user would write),
and ensemble_spread with the NumPy expression ((U - U.mean(0)) ** 2).sum() / J.
The whole step as the EKI optimiser takes it (loss_update(output="mean") + randomize_around: only the mean of
the update is formed) against the full update followed by randomize (the J x J by J x P product that the
redraw then discards), for a batch of 100 examples with 10 outputs (M = 1000).
On a GPU (CuPy present and the CUDA core built) the same against the CuPy reference and cupy.random.

Usage: python bench/randomize.py [--device cpu|cuda] [--out bench/results]
"""

import argparse
import json
import os

import numpy as np
from timing import best_of, environment, header, save_results, timed

import ekinet
from ekinet import nn

# (J, the network whose Glorot prior sets sigma): DNN 2 at the CPU result size and the paper's, and DNN 4.
CASES = ((200, "mlp:784-100-10"), (2000, "mlp:784-100-10"), (200, "mlp:784-500-300-100-10"))
GAMMA = 0.3
OUTPUTS = 1000  # a batch of 100 examples, 10 classes


def bench(xp, J, model, dtype, synchronize):
    network = nn.from_string(model)
    P = network.parameter_count
    U = xp.asarray(np.random.default_rng(0).standard_normal((J, P)), dtype=dtype)
    sigma = network.prior_std(dtype, bias_std=0.1, xp=xp)
    generator = np.random.default_rng(1) if xp is np else xp.random.default_rng(1)

    def numpy_generator():
        return U.mean(0) + GAMMA * sigma * generator.standard_normal((J, P), dtype=dtype)

    def reference():
        return ekinet.randomize(U, GAMMA, prior_std=sigma, rng=1, backend="reference")

    def numpy_spread():
        return float(((U - U.mean(0)) ** 2).sum() / J)

    row = {"J": J, "model": model, "P": P, "dtype": np.dtype(dtype).name}
    row["native_randomize_s"] = timed(
        lambda: ekinet.randomize(U, GAMMA, prior_std=sigma, rng=1, backend="native"), synchronize)
    row["reference_randomize_s"] = timed(reference, synchronize)
    row["generator_randomize_s"] = timed(numpy_generator, synchronize)
    row["native_spread_s"] = timed(lambda: ekinet.ensemble_spread(U, backend="native"), synchronize)
    row["numpy_spread_s"] = timed(numpy_spread, synchronize)
    row["draws_per_s"] = J * P / row["native_randomize_s"]

    rng = np.random.default_rng(2)
    G = xp.asarray(rng.standard_normal((J, OUTPUTS)), dtype=dtype)
    grad = xp.asarray(rng.standard_normal((J, OUTPUTS)), dtype=dtype)

    def full_step():
        U_new, _ = ekinet.loss_update(U, G, grad, step=3.0, backend="native")
        return ekinet.randomize(U_new, GAMMA, prior_std=sigma, rng=1, backend="native")

    def mean_step():
        mean, _ = ekinet.loss_update(U, G, grad, step=3.0, backend="native", output="mean")
        return ekinet.randomize_around(mean, J, GAMMA, prior_std=sigma, rng=1, backend="native")

    row["step_full_s"] = timed(full_step, synchronize)
    row["step_mean_s"] = timed(mean_step, synchronize)
    return row


def markdown(results):
    lines = header(results, "randomize / ensemble_spread benchmark") + [
        f"Times in milliseconds ({best_of(results)}). Ratios: the other / native (> 1: native "
        f"faster). gamma = {GAMMA}, sigma the network's Glorot prior. EKI(R) step: loss update with "
        f"M = {OUTPUTS} outputs, then the redraw.", "",
        "| J | model | P | native randomize | reference | generator | reference/native | generator/native "
        "| native spread | numpy spread | numpy/native | native draws/s | EKI(R) step, full update | "
        "mean only | full/mean |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        lines.append(
            f"| {r['J']} | {r['model']} | {r['P']} | {1e3 * r['native_randomize_s']:.1f} | "
            f"{1e3 * r['reference_randomize_s']:.1f} | {1e3 * r['generator_randomize_s']:.1f} | "
            f"{r['reference_randomize_s'] / r['native_randomize_s']:.2f} | "
            f"{r['generator_randomize_s'] / r['native_randomize_s']:.2f} | {1e3 * r['native_spread_s']:.1f} | "
            f"{1e3 * r['numpy_spread_s']:.1f} | {r['numpy_spread_s'] / r['native_spread_s']:.2f} | "
            f"{r['draws_per_s']:.3g} | {1e3 * r['step_full_s']:.1f} | {1e3 * r['step_mean_s']:.1f} | "
            f"{r['step_full_s'] / r['step_mean_s']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args(argv)
    if args.device == "cuda":
        import cupy as xp

        def synchronize():
            xp.cuda.Device().synchronize()
    else:
        xp, synchronize = np, (lambda: None)
    results = {"environment": environment(args.device), "rows": []}
    stem = f"randomize-{args.device}-{args.dtype}"
    for J, model in CASES:
        results["rows"].append(bench(xp, J, model, np.dtype(args.dtype).type, synchronize))
        print(json.dumps(results["rows"][-1]), flush=True)
        save_results(results, args.out, stem, markdown, echo=False)
    save_results(results, args.out, stem, markdown)


if __name__ == "__main__":
    main()

"""Benchmark of the ensemble updates (issue: native EKI core, item 7).

kalman_update (each formulation and auto) and loss_update over J in {100, 500, 2000}, P in {1e4, 1e5} (and 1e6
on a GPU), M in {100, 1000, 10000}. On the CPU the native core is compared, in the same run, with
  - the NumPy reference (ekinet.reference: the readable oracle),
  - the best NumPy formulation of the same update (identity and mean subtraction folded into the J x J factor,
    so the big product is one GEMM; the observation form with the P x M gain where that is cheaper),
  - one BLAS GEMM of the dominant shape (J x J times J x P).
On a GPU (CuPy present and the CUDA core built), native CUDA is compared with the CuPy reference and with
PyTorch code of the same formulas, and the achieved FLOP/s with one cuBLAS GEMM of the same size.

Usage: python bench/update.py [--device cpu|cuda] [--quick] [--budget SECONDS] [--out bench/results]
Configurations whose predicted time exceeds the budget are recorded as skipped, with the prediction.
"""

import argparse
import json
import os

import numpy as np
from timing import best_of, environment, header, save_results, timed

import ekinet
from ekinet import _core

GRID_J = (100, 500, 2000)
GRID_P = (10_000, 100_000)
GRID_M = (100, 1000, 10_000)


# ---------------------------------------------------------------------------------------------------------
# The best NumPy/CuPy/PyTorch formulations of the same update (eki-math section 1), for comparison.

def folded_ensemble_update(xp, U, G, y, gamma, step, solve):
    """U_new = T U, T = I + W^T (I - 11^T/J), W = (K + (J/h) I)^{-1} Q^T: one J x J by J x P product."""
    J = U.shape[0]
    dG = G - G.mean(0)
    R = y - G
    K = dG @ dG.T / gamma
    Qt = dG @ R.T / gamma
    W = solve(K + (J / step) * xp.eye(J, dtype=U.dtype), Qt)
    A = W.T
    T = A - A.sum(1, keepdims=True) / J
    T += xp.eye(J, dtype=U.dtype)
    return T @ U


def gain_observation_update(xp, U, G, y, gamma, step, solve):
    """U + (C^uw (C^ww + Gamma/h)^{-1} R^T)^T with the P x M gain C^uw = dU^T dG / J."""
    J, M = G.shape
    dG = G - G.mean(0)
    ubar = U.mean(0)
    C = dG.T @ dG / J + (gamma / step) * xp.eye(M, dtype=U.dtype)
    X = solve(C, (y - G).T)
    gain = (U - ubar).T @ dG / J
    return U + (gain @ X).T


def folded_loss_update(xp, U, G, grad, step, eps):
    J = U.shape[0]
    D = grad @ (G - G.mean(0)).T / J
    h = step / (float(xp.linalg.norm(D)) + eps)
    T = -h * (D - D.sum(1, keepdims=True) / J)
    T += xp.eye(J, dtype=U.dtype)
    return T @ U


# ---------------------------------------------------------------------------------------------------------

def problem(xp, J, P, M, dtype, seed=0):
    rng = np.random.default_rng(seed)
    U = xp.asarray(rng.standard_normal((J, P), dtype=np.float32).astype(dtype) * 0.1)
    G = xp.asarray(rng.standard_normal((J, M), dtype=np.float32).astype(dtype))
    y = xp.asarray(rng.standard_normal(M, dtype=np.float32).astype(dtype))
    grad = xp.asarray(rng.standard_normal((J, M), dtype=np.float32).astype(dtype))
    return U, G, y, grad


def bench_cpu(J, P, M, dtype, repeats, budget):
    xp = np
    U, G, y, grad = problem(xp, J, P, M, dtype)
    gamma, step = 0.5, 1.0
    row = {"J": J, "P": P, "M": M, "dtype": np.dtype(dtype).name}
    solve = np.linalg.solve

    T = np.eye(J, dtype=dtype)
    row["gemm_s"] = timed(lambda: T @ U, repeats=repeats)
    rate = 2.0 * J * J * P / row["gemm_s"]  # this machine's GEMM rate predicts the other runs' times
    observation_ok = P * M * np.dtype(dtype).itemsize < (4 << 30) and \
        _core.kalman_update_flops("observation", J, P, M, "scalar") / rate < budget
    ensemble_ok = _core.kalman_update_flops("ensemble", J, P, M, "scalar") / rate < budget
    if ensemble_ok:
        row["native_ensemble_s"] = timed(lambda: ekinet.kalman_update(U, G, y, gamma, formulation="ensemble"), repeats=repeats)
        row["numpy_folded_ensemble_s"] = timed(lambda: folded_ensemble_update(xp, U, G, y, gamma, step, solve), repeats=repeats)
        row["native_loss_update_s"] = timed(lambda: ekinet.loss_update(U, G, grad, step=0.1), repeats=repeats)
        row["numpy_folded_loss_update_s"] = timed(lambda: folded_loss_update(xp, U, G, grad, 0.1, 1e-8), repeats=repeats)
    if observation_ok:
        row["native_observation_s"] = timed(
            lambda: ekinet.kalman_update(U, G, y, gamma, formulation="observation"), repeats=repeats)
        row["numpy_gain_observation_s"] = timed(
            lambda: gain_observation_update(xp, U, G, y, gamma, step, solve), repeats=repeats)
    row["auto_choice"] = _core.choose_formulation(J, P, M, "scalar", np.dtype(dtype).itemsize, 2 << 30)
    if row["auto_choice"] == "ensemble" and ensemble_ok or row["auto_choice"] == "observation" and observation_ok:
        row["native_auto_s"] = timed(lambda: ekinet.kalman_update(U, G, y, gamma), repeats=repeats)
    if ensemble_ok and J * P <= 5_000_000:
        reference = "ensemble" if row["auto_choice"] == "ensemble" else "observation"
        row["reference_s"] = timed(lambda: ekinet.kalman_update(U, G, y, gamma, formulation=reference,
                                                                backend="reference"), repeats=1)
    if not ensemble_ok or not observation_ok:
        row["skipped"] = (f"formulations predicted over the {budget:.0f} s budget at the measured GEMM rate of "
                          f"{rate / 1e9:.0f} GFLOP/s (or with a P x M gain over 4 GiB) were not run")
    return summarise(row)


def summarise(row):
    native = {k: row[k] for k in ("native_ensemble_s", "native_observation_s") if k in row}
    if native:
        fastest = min(native.values())
        chosen = row.get(f"native_{row.get('auto_choice')}_s")
        if chosen is not None:
            # How good auto's choice is: the measured time of the formulation it picks against the fastest
            # (auto adds only the choice itself; timing it again would only add noise).
            row["auto_over_fastest"] = chosen / fastest
    numpy_best = [row[k] for k in ("numpy_folded_ensemble_s", "numpy_gain_observation_s") if k in row]
    if native and numpy_best:
        row["numpy_best_over_native_best"] = min(numpy_best) / min(native.values())
    if "native_ensemble_s" in row:
        row["native_ensemble_over_gemm"] = row["native_ensemble_s"] / row["gemm_s"]
    return row


def bench_cuda(J, P, M, dtype, repeats, budget):
    import cupy as cp

    U, G, y, grad = problem(cp, J, P, M, dtype)
    gamma, step = 0.5, 1.0
    sync = cp.cuda.Stream.null.synchronize
    row = {"J": J, "P": P, "M": M, "dtype": np.dtype(dtype).name}
    T = cp.eye(J, dtype=dtype)
    row["gemm_s"] = timed(lambda: T @ U, sync, repeats=repeats)
    flops = _core.kalman_update_flops("ensemble", J, P, M, "scalar")
    if flops / (2.0 * J * J * P / row["gemm_s"]) > budget:
        row["skipped"] = f"predicted over the {budget:.0f} s budget"
        return row
    row["native_ensemble_s"] = timed(lambda: ekinet.kalman_update(U, G, y, gamma, formulation="ensemble"),
                                     sync, repeats=repeats)
    if P * M * np.dtype(dtype).itemsize < (8 << 30):
        row["native_observation_s"] = timed(
            lambda: ekinet.kalman_update(U, G, y, gamma, formulation="observation"), sync, repeats=repeats)
    row["native_auto_s"] = timed(lambda: ekinet.kalman_update(U, G, y, gamma), sync, repeats=repeats)
    row["native_loss_update_s"] = timed(lambda: ekinet.loss_update(U, G, grad, step=0.1), sync, repeats=repeats)
    row["cupy_reference_s"] = timed(lambda: ekinet.kalman_update(U, G, y, gamma, formulation="ensemble",
                                                                 backend="reference"), sync, repeats=1)
    row["cupy_folded_ensemble_s"] = timed(
        lambda: folded_ensemble_update(cp, U, G, y, gamma, step, cp.linalg.solve), sync, repeats=repeats)
    try:
        import torch

        tU, tG, ty = (torch.from_dlpack(a) for a in (U, G, y))
        row["torch_folded_ensemble_s"] = timed(
            lambda: folded_ensemble_update(_TorchNamespace, tU, tG, ty, gamma, step, torch.linalg.solve),
            torch.cuda.synchronize, repeats=repeats)
    except ImportError:
        row["torch"] = "not installed"
    gemm_flops = 2.0 * J * J * P
    row["gemm_tflops"] = gemm_flops / row["gemm_s"] / 1e12
    row["native_ensemble_tflops"] = flops / row["native_ensemble_s"] / 1e12
    row["roofline_ratio"] = row["native_ensemble_tflops"] / row["gemm_tflops"]
    if "torch_folded_ensemble_s" in row:
        row["torch_over_native"] = row["torch_folded_ensemble_s"] / row["native_ensemble_s"]
    return summarise(row)


class _TorchNamespace:
    """The few array functions the folded formulas use, for PyTorch tensors."""

    @staticmethod
    def eye(n, dtype):
        import torch

        return torch.eye(n, dtype=dtype, device="cuda")


def milliseconds(row, key, decimals):
    """row[key] seconds as milliseconds for a table, "-" where it was not measured."""
    return f"{1e3 * row[key]:.{decimals}f}" if key in row else "-"


def markdown(results):
    if results["environment"]["device"] == "cuda":
        return markdown_cuda(results)
    lines = header(results, "kalman_update / loss_update benchmark") + [
        f"Times in milliseconds ({best_of(results)}). Ratios: numpy best / native best (> 1: native "
        "faster), native ensemble / one GEMM of J x J by J x P, and auto: the time of the formulation auto "
        "chooses / the faster native formulation.", "",
        "| J | P | M | dtype | GEMM | native ens | native obs | auto (choice) | loss_update | numpy best | "
        "reference | numpy/native | ens/GEMM | auto/best |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def ms(row, key):
        return milliseconds(row, key, 1)

    def ratio(row, key):
        return f"{row[key]:.2f}" if key in row else "-"

    for row in results["rows"]:
        numpy_keys = [k for k in ("numpy_folded_ensemble_s", "numpy_gain_observation_s", "cupy_folded_ensemble_s",
                                  "torch_folded_ensemble_s") if k in row]
        best_numpy = f"{1e3 * min(row[k] for k in numpy_keys):.1f}" if numpy_keys else "-"
        lines.append(
            f"| {row['J']} | {row['P']} | {row['M']} | {row['dtype']} | {ms(row, 'gemm_s')} | "
            f"{ms(row, 'native_ensemble_s')} | {ms(row, 'native_observation_s')} | "
            f"{ms(row, 'native_auto_s')} ({row.get('auto_choice', '-')}) | {ms(row, 'native_loss_update_s')} | "
            f"{best_numpy} | {ms(row, 'reference_s')} | {ratio(row, 'numpy_best_over_native_best')} | "
            f"{ratio(row, 'native_ensemble_over_gemm')} | {ratio(row, 'auto_over_fastest')} |")
    skipped = [r for r in results["rows"] if "skipped" in r]
    if skipped:
        lines += ["", "Skipped (predicted too slow for this machine): " +
                  ", ".join(f"J={r['J']} P={r['P']} M={r['M']}" for r in skipped) + "."]
    return "\n".join(lines) + "\n"


def markdown_cuda(results):
    """The GPU table: native CUDA against the CuPy reference and the folded formula in CuPy and PyTorch, and the
    fraction of one cuBLAS GEMM's rate that the ensemble form reaches."""
    lines = header(results, "kalman_update / loss_update benchmark") + [
        f"Times in milliseconds ({best_of(results)}; the CuPy reference: one run after a warm-up). Ratios: "
        "PyTorch's folded update / native ensemble form (> 1: native faster), native ensemble form / one GEMM of "
        "J x J by J x P, and auto: the time of kalman_update's own choice / the faster native form.", "",
        "| J | P | M | GEMM | GEMM TFLOP/s | native ens | native obs | auto | loss_update | CuPy reference | "
        "CuPy folded | PyTorch folded | torch/native | ens/GEMM | auto/best |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def ms(row, key):
        return milliseconds(row, key, 2)

    for row in results["rows"]:
        native = [row[k] for k in ("native_ensemble_s", "native_observation_s") if k in row]
        auto = f"{row['native_auto_s'] / min(native):.2f}" if native and "native_auto_s" in row else "-"
        torch_ratio = f"{row['torch_over_native']:.2f}" if "torch_over_native" in row else "-"
        ens_gemm = f"{row['native_ensemble_over_gemm']:.2f}" if "native_ensemble_over_gemm" in row else "-"
        lines.append(
            f"| {row['J']} | {row['P']} | {row['M']} | {ms(row, 'gemm_s')} | {row.get('gemm_tflops', 0):.1f} | "
            f"{ms(row, 'native_ensemble_s')} | {ms(row, 'native_observation_s')} | {ms(row, 'native_auto_s')} | "
            f"{ms(row, 'native_loss_update_s')} | {ms(row, 'cupy_reference_s')} | "
            f"{ms(row, 'cupy_folded_ensemble_s')} | {ms(row, 'torch_folded_ensemble_s')} | {torch_ratio} | "
            f"{ens_gemm} | {auto} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--quick", action="store_true", help="J=500, P=1e5, M=1000 only (the CPU target)")
    parser.add_argument("--budget", type=float, default=20.0, help="skip runs predicted longer (seconds)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    parser.add_argument("--render", metavar="JSON", help="only rebuild the table and ratios of a results file")
    args = parser.parse_args(argv)
    if args.render:
        with open(args.render) as f:
            results = json.load(f)
        results["rows"] = [summarise(row) for row in results["rows"]]
        stem = os.path.splitext(os.path.basename(args.render))[0]
        save_results(results, os.path.dirname(args.render) or ".", stem, markdown)
        return

    dtype = np.dtype(args.dtype)
    grid_p = GRID_P + ((1_000_000,) if args.device == "cuda" else ())
    configs = [(500, 100_000, 1000)] if args.quick else [(J, P, M) for J in GRID_J for P in grid_p for M in GRID_M]
    run = bench_cpu if args.device == "cpu" else bench_cuda
    results = {"environment": environment(args.device), "rows": []}
    stem = f"update-{args.device}{'-quick' if args.quick else ''}-{args.dtype}"
    for J, P, M in configs:
        results["rows"].append(run(J, P, M, dtype, args.repeats, args.budget))
        print(json.dumps(results["rows"][-1]), flush=True)
        save_results(results, args.out, stem, markdown, echo=False)
    save_results(results, args.out, stem, markdown)


if __name__ == "__main__":
    main()

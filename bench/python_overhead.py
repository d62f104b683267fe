"""The Python cost of one forward call: views of the arrays read in C++ (_core.host_view, what ekinet does)
against the former route in Python (__array_interface__ and the _core.View constructor), side by side in one
process, on one online LSTM(32) step of two members (NumPy), where the Python layer is nearly all the time.

Usage: python bench/python_overhead.py [--calls N] [--out bench/results]
"""

import argparse
import os
import timeit

import numpy as np
from timing import environment, header, save_results

import ekinet.nn as nn_module
from ekinet import _core, nn


def python_view(a):
    """The former view(): the layout read in Python, then the View constructor."""
    if a.ndim == 1:
        a = a.reshape(1, -1)
    itemsize = a.itemsize
    row_stride = a.strides[0] // itemsize if a.shape[0] > 1 else a.shape[1]
    dtype = {"f": "float32", "d": "float64"}[a.dtype.char]
    return _core.View(a.__array_interface__["data"][0], dtype, "cpu", 0, a.shape[0], a.shape[1], row_stride, a)


def markdown(results):
    rows = results["rows"]
    return "\n".join(header(results, "Python cost of one forward call") + [
        "One online LSTM(32) step of J = 2 members (NumPy); best of 5 timings of "
        f"{results['calls']} calls, the two routes alternated in one process.", "",
        "| views | us a call |", "|---|---|"] + [f"| {name} | {value:.1f} |" for name, value in rows.items()]) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000, help="calls per timing (the best of 5 is kept)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args(argv)
    net = nn.Sequential([nn.LSTM(32), nn.Dense(1)], input_shape=(1, 1))
    U, X = net.prior(2, rng=0), np.ones((1, 1, 1), np.float32)
    state = np.zeros((2, net.state_size), np.float32)

    def step():
        net.forward(U, X, state=state, return_state=True)

    routes = {"C++ views": nn_module.view, "Python views": python_view}
    micros = {}
    try:
        for _ in range(2):  # alternate, so that both routes see the same machine
            for name, route in routes.items():
                nn_module.view = route
                micros[name] = min(timeit.repeat(step, number=args.calls, repeat=5)) / args.calls * 1e6
    finally:
        nn_module.view = routes["C++ views"]
    save_results({"environment": environment("cpu"), "calls": args.calls, "rows": micros}, args.out,
                 "python-overhead-cpu", markdown)
    return micros


if __name__ == "__main__":
    main()

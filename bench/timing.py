"""Shared by the benchmarks: wall-clock timing of one operation."""

import time


def timed(function, synchronize=lambda: None, repeats=3, min_total=1.0):
    """Best wall time of at least `repeats` runs (more, until min_total seconds are spent) after a warm-up."""
    function()
    synchronize()
    best, total, runs = float("inf"), 0.0, 0
    while runs < repeats or total < min_total:
        start = time.perf_counter()
        function()
        synchronize()
        elapsed = time.perf_counter() - start
        best, total, runs = min(best, elapsed), total + elapsed, runs + 1
    return best

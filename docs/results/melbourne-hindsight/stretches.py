"""Run as (from the repository root):
    EKINET_DATA=../shared/data python docs/results/melbourne-hindsight/stretches.py OUT.json

How much the Melbourne errors depend on which stretch of the series is scored. The paper does not say over which
points its First and Final errors are taken. Its Final error, 7.448e-3, is below what the same networks reach in
hindsight on the whole series. This scores the same runs over the whole series, over its first four fifths and
over its last fifth:
- online EKI with the melbourne-rnn experiment's settings (J = 200, 3 passes, the noise per cell, bias prior
  0.1, seed 0);
- a 30-lag linear autoregression fitted in hindsight to the whole series (an in-sample floor for short-memory
  forecasters).
"""
import json
import sys

import numpy as np

from ekinet import datasets, online

NOISE = {"rnn": 3e-4, "lstm": 1e-3}  # experiments._ONLINE_NOISE
LAGS = 30


def stretches(count):
    """The scored stretches, as slices of the one-step-ahead targets."""
    last_fifth = int(0.8 * count)
    return {"whole": slice(0, count), "first four fifths": slice(0, last_fifth),
            "last fifth": slice(last_fifth, count)}


def autoregression_residuals(values):
    """Residuals of the least-squares AR(LAGS) with intercept, fitted to the whole series, aligned to the
    targets values[1:] (the first LAGS - 1 targets have no full lag window: NaN)."""
    lagged = np.stack([values[LAGS - k - 1:len(values) - k - 1] for k in range(LAGS)], axis=1)
    design = np.column_stack([lagged, np.ones(len(lagged))])
    coefficients, *_ = np.linalg.lstsq(design, values[LAGS:], rcond=None)
    residuals = np.full(len(values) - 1, np.nan)
    residuals[LAGS - 1:] = values[LAGS:] - design @ coefficients
    return residuals


def main(out):
    series = datasets.load_series("melbourne")
    values = online._prepare_series(series, True, 1)[0]
    scored = stretches(len(values) - 1)
    ar = autoregression_residuals(values)
    result = {"autoregression (30 lags, in-sample)": {
        name: float(np.nanmean(ar[part] ** 2)) for name, part in scored.items()}}
    for model in ("rnn:1-32-1", "lstm:1-32-1"):
        run = online.online_regression(series, model, ensemble=200, passes=3, noise=NOISE[model.split(":")[0]],
                                       bias_std=0.1, rng=0, progress=False)
        squared = (np.asarray(run.predictions) - np.asarray(run.targets)) ** 2
        result[f"online EKI {model}"] = {
            name: {"first pass": float(squared[0, part].mean()), "last pass": float(squared[-1, part].mean())}
            for name, part in scored.items()}
        assert np.isclose(result[f"online EKI {model}"]["whole"]["last pass"], run.final)
    result["paper (online EKI)"] = {"first": 8.086e-3, "final": 7.448e-3}
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])

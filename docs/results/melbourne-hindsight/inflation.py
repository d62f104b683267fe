"""Run as (from the repository root):
    PYTHONPATH=python EKINET_DATA=../shared/data python docs/results/melbourne-hindsight/inflation.py OUT.json

Multiplicative covariance inflation for online EKI on the Melbourne series: after every update the members'
deviations from their mean are scaled by a factor (1 = none), the usual remedy in data assimilation for an
ensemble that collapses. The melbourne-rnn experiment's Elman RNN settings (J = 200, 3 passes, noise 3e-4,
bias prior 0.1, seed 0); errors of each pass."""
import json
import sys

from ekinet import datasets, online, updates

kalman_update = updates.kalman_update


def inflated(factor):
    def update(U, *args, **kwargs):
        U = kalman_update(U, *args, **kwargs)
        mean = U.mean(axis=0, keepdims=True)
        return (mean + factor * (U - mean)).astype(U.dtype)
    return update


series = datasets.load_series("melbourne")
rows = []
for factor in (1.0, 1.00002, 1.00005, 1.0001, 1.0002, 1.0005):
    online.kalman_update = inflated(factor)  # online_regression's update, wrapped
    try:
        result = online.online_regression(series, "rnn:1-32-1", ensemble=200, passes=3, noise=3e-4, bias_std=0.1,
                                          rng=0, progress=False)
        rows.append({"factor": factor, "errors": [float(e) for e in result.errors]})
    except FloatingPointError as error:  # the ensemble diverged
        rows.append({"factor": factor, "diverged": str(error)})
    print(rows[-1], flush=True)
online.kalman_update = kalman_update
json.dump({"series": "melbourne", "model": "rnn:1-32-1", "rows": rows}, open(sys.argv[1], "w"), indent=1)

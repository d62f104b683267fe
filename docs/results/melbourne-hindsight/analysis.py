"""Run as (from the repository root):
    EKINET_DATA=../shared/data python docs/results/melbourne-hindsight/analysis.py OUT.json

The forecast error against the analysis error of online EKI on the Melbourne series. online_regression scores
the forecast: each point is predicted before the update that uses it. Data assimilation also reports the
analysis: the updated ensemble's prediction of the same point, from the same recurrent state, which has seen
that point. The loop below is online_regression's (the melbourne-rnn experiment's settings: J = 200, 3 passes,
its noise per cell, bias prior 0.1, seed 0) with that second forward pass added; its forecast errors are checked
against online_regression's own."""
import json
import sys

import numpy as np

from ekinet import datasets, online
from ekinet.updates import kalman_update

NOISE = {"rnn": 3e-4, "lstm": 1e-3}  # experiments._ONLINE_NOISE


def mean_squared_errors(predictions, targets):
    """One MSE per pass (row of predictions)."""
    return [float(e) for e in np.mean((predictions - targets) ** 2, axis=1)]


def forecast_and_analysis(series, model_name, J=200, passes=3, seed=0):
    model = online._check_regressor(model_name)
    values = online._prepare_series(series, True, 1)[0]
    generator = np.random.default_rng(seed)
    U = online._initial_ensemble(model, J, online._spread("auto", model), 0.1, generator, "float32")
    network = online._window_network(model, 1)
    inputs, targets = values[:-1].astype(np.float32).reshape(1, -1, 1), values[1:]
    forecast, analysis = np.empty((passes, targets.size)), np.empty((passes, targets.size))
    noise = NOISE[model_name.split(":")[0]]
    for p in range(passes):
        state = None
        for t in range(targets.size):
            G, next_state = network.forward(U, inputs[:, t:t + 1], state=state, return_state=True)
            forecast[p, t] = G.mean(dtype=np.float64)
            U = kalman_update(U, G.reshape(J, 1), targets[t:t + 1], noise, rng=generator)
            analysis[p, t] = network.forward(U, inputs[:, t:t + 1], state=state).mean(dtype=np.float64)
            state = next_state
    return mean_squared_errors(forecast, targets), mean_squared_errors(analysis, targets)


series = datasets.load_series("melbourne")
rows = []
for model_name in ("rnn:1-32-1", "lstm:1-32-1"):
    forecast, analysis = forecast_and_analysis(series, model_name)
    reference = online.online_regression(series, model_name, ensemble=200, passes=3,
                                         noise=NOISE[model_name.split(":")[0]], bias_std=0.1, rng=0, progress=False)
    np.testing.assert_allclose(forecast, reference.errors, rtol=1e-6)
    rows.append({"model": model_name, "forecast_errors": forecast, "analysis_errors": analysis})
    print(rows[-1], flush=True)
json.dump({"series": "melbourne", "members": 200, "passes": 3, "seed": 0,
           "paper_eki_first_final": [8.086e-3, 7.448e-3], "rows": rows}, open(sys.argv[1], "w"), indent=1)

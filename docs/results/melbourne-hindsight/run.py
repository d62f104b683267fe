"""Run as (from the repository root):
    PYTHONPATH=python EKINET_DATA=../shared/data python docs/results/melbourne-hindsight/run.py OUT.json

How low can a one-step-ahead forecaster of the Melbourne series go, in the min-max scaled units of the paper's
table? In-sample fits that see the whole series at once (hindsight, no online constraint): linear
autoregressions by least squares, and the online experiment's RNN(32) and LSTM(32) regressors trained by Adam
with full back-propagation through time over the whole series. Also the persistence forecast y_t = y_(t-1),
and, for comparison with the online protocol, a one-step-ahead forecaster fitted online by recursive least
squares on lags 1-5 and 360-370 (last year's values), its error over the last two thirds of the series."""
import json
import sys

import numpy as np
import torch

from ekinet import datasets


def autoregression(v, lags):
    rows = np.stack([v[lags - k - 1:len(v) - k - 1] for k in range(lags)] + [np.ones(len(v) - lags)], axis=1)
    coefficients, *_ = np.linalg.lstsq(rows, v[lags:], rcond=None)
    return float(np.mean((rows @ coefficients - v[lags:]) ** 2))


def online_least_squares(v, lags):
    """Mean squared one-step-ahead error over the last two thirds of the series, each forecast made before its
    value updates the coefficients (recursive least squares from a flat start)."""
    size = len(lags) + 1
    covariance, coefficients, errors = 100.0 * np.eye(size), np.zeros(size), []
    for t in range(max(lags), len(v)):
        row = np.array([v[t - k] for k in lags] + [1.0])
        error = v[t] - row @ coefficients
        errors.append(error ** 2)
        gain = covariance @ row / (1.0 + row @ covariance @ row)
        coefficients = coefficients + gain * error
        covariance = covariance - np.outer(gain, row @ covariance)
    return float(np.mean(errors[len(errors) // 3:]))


def recurrent_fit(v, cell, epochs=1500, seed=0):
    torch.manual_seed(seed)
    x = torch.tensor(v[:-1], dtype=torch.float32).view(1, -1, 1)
    y = torch.tensor(v[1:], dtype=torch.float32).view(1, -1, 1)
    rnn = (torch.nn.LSTM if cell == "lstm" else torch.nn.RNN)(1, 32, batch_first=True)
    head = torch.nn.Linear(32, 1)
    optimiser = torch.optim.Adam([*rnn.parameters(), *head.parameters()], lr=3e-3)
    best = np.inf
    for _ in range(epochs):
        optimiser.zero_grad()
        loss = torch.mean((head(rnn(x)[0]) - y) ** 2)
        loss.backward()
        optimiser.step()
        best = min(best, loss.item())
    return best


series = datasets.load_series("melbourne")
values, _ = datasets.minmax_scale(series.values.astype(np.float64))
result = {"series": "melbourne", "points": int(values.size),
          "persistence": float(np.mean((values[1:] - values[:-1]) ** 2)),
          "autoregression": {lags: autoregression(values, lags) for lags in (1, 5, 30, 365)},
          "online_least_squares_lags_1_5_360_370_last_two_thirds":
              online_least_squares(values, list(range(1, 6)) + list(range(360, 371))),
          "adam_full_bptt_1500_epochs": {cell: recurrent_fit(values, cell) for cell in ("rnn", "lstm")},
          "paper_eki": {"first": 8.086e-3, "final": 7.448e-3}}
json.dump(result, open(sys.argv[1], "w"), indent=1)
print(json.dumps(result, indent=1))

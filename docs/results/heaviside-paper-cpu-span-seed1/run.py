"""Run as (from the repository root):
    PYTHONPATH=python EKINET_DATA=../shared/data python docs/results/heaviside-paper-cpu-span-seed1/run.py OUT \
        [ACTIVATION]

One 784-100-10 network of the fashion-heaviside experiment (ACTIVATION: heaviside, the default, or relu) on
Fashion-MNIST, at the experiment's paper settings and data split with input-span and centred draws and
h = 12 x 0.85^e, seed 1 (the experiment runs both networks, which would double the time). The ReLU network's
result is in docs/results/relu-paper-cpu-span-seed1/."""
import dataclasses
import json
import sys

from ekinet import experiments as E

activation = sys.argv[2] if len(sys.argv) > 2 else "heaviside"
settings = dataclasses.replace(E.get("fashion-heaviside").paper, step=12.0, step_decay=0.85, centred_draws=True,
                               input_span=True)
data = E._classification_data("fashion-mnist", settings)
row = E._train_eki(f"mlp:784-100-10:{activation}", data, "eki-r", settings, {"seed": 1, "progress": False})
json.dump(row, open(sys.argv[1], "w"), indent=1, default=str)
print({k: v for k, v in row.items() if k != "history"})

"""How far does gradient training take cnn-mnist in the paper's budget (10 epochs of 55000 digits in batches of
100) with a cosine-annealed learning rate? (docs/results.md, "What accuracy does the estimate's noise allow on
the CNN?")

    EKINET_DATA=../shared/data python docs/results/cnn-gradient-cosine/run.py --runs sgd@0.1,msgd@0.05 --seed 0

Each run `OPTIMIZER@LR`: sgd (plain), msgd (momentum 0.9) or adam, the rate annealed from LR to zero along half
a cosine over the 5500 updates, from the prior draw the EKI runs start from (seed --seed); the test accuracy of
every epoch goes to result-seedN.json beside this script.
"""

import argparse
import json
import math
import os
import time

import numpy as np
import torch

from ekinet import datasets, nn

OPTIMIZERS = {"sgd": lambda p, lr: torch.optim.SGD(p, lr),
              "msgd": lambda p, lr: torch.optim.SGD(p, lr, momentum=0.9),
              "adam": lambda p, lr: torch.optim.Adam(p, lr)}


def train(net, data, optimizer, lr, seed, epochs=10, batch_size=100):
    (x, y), (x_test, y_test) = data
    torch.manual_seed(seed)
    module = net.to_torch(net.prior(1, rng=seed, bias_std=0.1)[0])
    optim = OPTIMIZERS[optimizer](module.parameters(), lr)
    order = np.random.default_rng(seed)
    total = epochs * -(-len(x) // batch_size)
    done, curve = 0, []
    for _ in range(epochs):
        for index in datasets.batches(len(x), batch_size, rng=order):
            for group in optim.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * done / total))
            done += 1
            index = torch.from_numpy(index)
            optim.zero_grad()
            torch.nn.functional.cross_entropy(module(x[index]), y[index]).backward()
            optim.step()
        with torch.no_grad():
            curve.append(float((module(x_test).argmax(dim=1) == y_test).float().mean()))
    return curve


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="sgd@0.1,msgd@0.05", help="OPTIMIZER@LR, comma-separated")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    net = nn.from_string("cnn-mnist")

    def tensors(data):
        return (torch.from_numpy(np.ascontiguousarray(data.x.reshape(len(data), *net.input_shape), dtype=np.float32)),
                torch.from_numpy(data.y.astype(np.int64)))

    data = (tensors(datasets.load_mnist("train").subset(np.arange(55000))), tensors(datasets.load_mnist("test")))
    rows = []
    for run in args.runs.split(","):
        optimizer, lr = run.split("@")
        start = time.perf_counter()
        curve = train(net, data, optimizer, float(lr), args.seed)
        rows.append({"optimizer": optimizer, "lr": float(lr), "schedule": "cosine", "test_accuracy": curve,
                     "seconds": time.perf_counter() - start})
        print(f"{run:<12} final {curve[-1]:.4f} best {max(curve):.4f}", flush=True)
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"result-seed{args.seed}.json")
    with open(out, "w") as f:
        json.dump({"model": "cnn-mnist", "seed": args.seed, "epochs": 10, "batch_size": 100, "train": 55000,
                   "torch": torch.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()

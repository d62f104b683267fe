"""How noisy is the direction of one EKI(R) update? (docs/results.md, "The step at J = 2000")

The mean of the general-loss update after randomisation is (1/J) sum_k dU_k <dG_k, gbar>: a Monte Carlo
estimate of gamma^2 C0 grad L(ubar), with C0 the Glorot prior's covariance. This script measures its cosine
with the exact C0 grad L (PyTorch's gradient on the same batch) for 784-100-10 on MNIST, at a fresh Glorot
draw and at a point trained by SGD, for several randomisation scales gamma, with independent draws and with
mirrored (antithetic) draws +xi, -xi.

    EKINET_DATA=../shared/data python docs/gradient_estimate.py --ensemble 2000 --out docs/results/gradient-estimate.json
"""

import argparse
import json
import platform
import time

import numpy as np
import torch

import ekinet
from ekinet import datasets, losses, nn
from ekinet.baselines import _flat_parameters, sgd_train


def exact_direction(net, u, xb, yb):
    module = net.to_torch(u)
    loss = torch.nn.functional.cross_entropy(module(torch.from_numpy(xb)), torch.from_numpy(yb), reduction="sum")
    loss.backward()
    for parameter in module.parameters():
        parameter.data = parameter.grad  # so that the parameter row of baselines reads the gradient
    return net.prior_std("float64") ** 2 * _flat_parameters(net, module).astype(np.float64)


def estimated_direction(net, u, xb, yb, J, gamma, antithetic, seed):
    std = net.prior_std()
    if antithetic:
        half = ekinet.randomize_around(u, J // 2, gamma, prior_std=std, rng=seed)
        U = np.concatenate([half, 2 * u - half])
    else:
        U = ekinet.randomize_around(u, J, gamma, prior_std=std, rng=seed)
    out = net.forward(U, xb)
    _, grad = losses.cross_entropy_logits(out, yb.astype(np.int32))
    G = out.reshape(J, -1)
    coefficient = (G - G.mean(axis=0)) @ grad.reshape(J, -1).mean(axis=0)
    return ((U - U.mean(axis=0)).T @ coefficient).astype(np.float64) / J


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ensemble", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--sgd-epochs", type=int, default=1)
    parser.add_argument("--out", default="gradient-estimate.json")
    args = parser.parse_args()
    net = nn.from_string("mlp:784-100-10")
    train = datasets.load_mnist("train")
    x = train.x.reshape(len(train.x), -1).astype(np.float32)
    y = train.y.astype(np.int64)
    idx = np.random.default_rng(2).integers(0, len(x), 100)
    xb, yb = x[idx], y[idx]
    rows = []
    sgd = sgd_train(net, train, datasets.load_mnist("test"), epochs=args.sgd_epochs, momentum=0.9, rng=1,
                    progress=False)["u"]
    for point, u in (("glorot", net.prior(1, rng=1)[0]), (f"momentum-sgd-{args.sgd_epochs}-epochs", sgd)):
        accuracy = float((net.forward(u[None], x[:10000])[0].argmax(axis=1) == y[:10000]).mean())
        target = exact_direction(net, u, xb, yb)
        for gamma, antithetic in ((0.01, False), (0.03, False), (0.1, False), (0.3, False), (0.1, True)):
            cosines = []
            for seed in range(args.repeats):
                e = estimated_direction(net, u, xb, yb, args.ensemble, gamma, antithetic, seed)
                cosines.append(float(e @ target / np.linalg.norm(e) / np.linalg.norm(target)))
            rows.append({"point": point, "train_accuracy": accuracy, "gamma": gamma, "antithetic": antithetic,
                         "cosines": cosines})
            print(point, f"accuracy {accuracy:.4f}", f"gamma {gamma}", "antithetic" * antithetic,
                  np.round(cosines, 3), flush=True)
    write_result({"ensemble": args.ensemble, "model": "mlp:784-100-10", "batch": 100, "rows": rows},
                 "docs/gradient_estimate.py", args)


def write_result(result, script, args):
    """result with the command that reproduces it, the machine and the versions, as JSON at args.out."""
    flags = [f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}") for k, v in vars(args).items()
             if k != "out" and v is not False and v is not None]
    result = {**result, "command": f"python {script} " + " ".join(flags),
              "machine": platform.processor() or platform.machine(), "ekinet": ekinet.__version__,
              "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()

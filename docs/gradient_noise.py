"""What accuracy can a method reach whose update direction is as noisy as EKI(R)'s? (docs/results.md)

The mean of one EKI(R) update is (1/J) sum_k xi_k <xi_k, grad L>, xi_k ~ N(0, C) with C the randomisation's
covariance (gamma^2 times the Glorot prior's): a Monte Carlo estimate of C grad L from J random directions
(docs/gradient_estimate.py measures its cosine with the exact C grad L). In the linear regime its mean is
C g and its covariance (C g g^T C + (g^T C g) C) / J (Isserlis), with g = grad L. This script trains a network
(784-100-10, or --model, e.g. cnn-mnist) on MNIST by preconditioned SGD whose direction is drawn from that
distribution,

    d = C g (1 + zeta / sqrt(J)) + sqrt(g^T C g / J) C^(1/2) z,    zeta ~ N(0, 1), z ~ N(0, I),

with the exact gradient g of a mini-batch from PyTorch, for several J (J = inf: no estimation noise, the
preconditioned gradient itself) and a grid of steps, 10 epochs of 55000 digits in batches of 100 with the step
decaying by `--decay` an epoch, like the EKI(R) runs of docs/results.md. If the emulation at J = 200 and J = 2000
lands where EKI(R) does, the estimate's noise explains EKI(R)'s accuracy, and the emulation tells what J (or
what noise) the paper's number needs.

    EKINET_DATA=../shared/data python docs/gradient_noise.py --out gradient-noise.json    # 56 runs, ~20 min
    EKINET_DATA=../shared/data python docs/gradient_noise.py --model cnn-mnist --members 2000,inf \
        --steps 0.05,0.1,0.2,0.4,0.8 --out gradient-noise-cnn.json                      # 10 runs, ~12 min
"""

import argparse
import math
import time

import numpy as np
import torch
from gradient_estimate import write_result  # docs/, the script's own folder

from ekinet import datasets, nn


def preconditioner(net, module, bias_std, readout_scale=1.0, uniform_std=None):
    """C^(1/2) as one tensor per module parameter: the Glorot prior's standard deviations (the Trainer's), those
    of the last layer times readout_scale; or, with uniform_std, that one standard deviation for every parameter
    (C = uniform_std^2 I: gradient descent's own geometry, which the Glorot prior rescales layer by layer)."""
    std = net.prior_std("float32", bias_std=bias_std)
    if uniform_std is not None:
        std = np.full_like(std, uniform_std)
    readout = f"{len(net.layers) - 1}."
    root = {}
    for name, parameter in module.named_parameters():
        offset, shape = net.parameters[name]
        root[name] = torch.from_numpy(std[offset:offset + int(np.prod(shape))].reshape(parameter.shape).copy())
        if name.startswith(readout):
            root[name] *= readout_scale
    return root


def noisy_direction(module, root, members, generator, spans=None):
    """d = C g (1 + zeta / sqrt(J)) + sqrt(g^T C g / J) C^(1/2) z per parameter, from the gradients in .grad;
    also returns the cosine of d with C g. spans: {weight name: (basis, scale)}, an orthonormal basis (d x r) of
    the batch's inputs to that Dense layer and a std multiplier (r,) per basis direction; those weights are then
    drawn in the span only, C = sigma^2 Q diag(scale^2) Q^T for each of their rows (where their gradient lies)."""
    grads = {n: p.grad for n, p in module.named_parameters()}
    exact = {n: root[n] ** 2 * g for n, g in grads.items()}
    for name, (basis, scale) in (spans or {}).items():
        exact[name] = root[name] ** 2 * (((grads[name] @ basis) * scale**2) @ basis.T)
    if math.isinf(members):
        return exact, 1.0
    quadratic = sum(float((g * exact[n]).sum()) for n, g in grads.items())
    zeta = float(torch.randn((), generator=generator))
    scale = math.sqrt(quadratic / members)
    noise = {n: root[n] * torch.randn(exact[n].shape, generator=generator) for n in exact}
    for name, (basis, multipliers) in (spans or {}).items():
        noise[name] = ((noise[name] @ basis) * multipliers) @ basis.T
    direction = {n: exact[n] * (1 + zeta / math.sqrt(members)) + scale * noise[n] for n in exact}
    dot = sum(float((direction[n] * exact[n]).sum()) for n in exact)
    norms = math.sqrt(sum(float((d ** 2).sum()) for d in direction.values())
                      * sum(float((e ** 2).sum()) for e in exact.values()))
    return direction, dot / norms


def span(inputs, whiten=None):
    """(basis, scale) of a batch's inputs (B x d) to a Dense layer: the orthonormal basis (d x r) of their span
    by the SVD, and a std multiplier per direction: 1, or with `whiten` = alpha the draws' variance along a
    direction of second moment lambda_k is (1 + alpha) mean(lambda) / (lambda_k + alpha mean(lambda)) (damped
    whitening: alpha -> inf is no whitening), which preconditions that layer like the input factor of K-FAC."""
    _, values, vectors = torch.linalg.svd(inputs.detach(), full_matrices=False)
    keep = values > 1e-5 * values[0]
    basis = vectors[keep].T
    if whiten is None:
        return basis, torch.ones(basis.shape[1])
    moments = values[keep] ** 2 / inputs.shape[0]
    mean = moments.mean()
    return basis, torch.sqrt((1 + whiten) * mean / (moments + whiten * mean))


def with_conv_padding(net, padding):
    """The same network with every Conv2d zero-padded by `padding` on each side (the paper does not say whether
    its CNN pads)."""
    layers = [nn.Conv2d(layer.channels, layer.kernel, layer.stride, padding, layer.activation)
              if isinstance(layer, nn.Conv2d) else layer for layer in net.layers]
    return nn.Sequential(layers, net.input_shape)


def accuracy(module, x, y):
    with torch.no_grad():
        return float((module(x).argmax(dim=1) == y).float().mean())


def layer_inputs(module, spans):
    """Forward pre-hooks that keep the input of each Linear module named in `spans` (its weight's name), for
    the span of the batch's activations at a layer."""
    inputs = {}
    for name, layer in module.named_modules():
        if isinstance(layer, torch.nn.Linear) and f"{name}.weight" in spans:
            layer.register_forward_pre_hook(lambda _, args, key=f"{name}.weight": inputs.__setitem__(key, args[0]))
    return inputs


def span_layers(net, input_span, hidden_span):
    """The weight names whose draws are restricted to the span of the layer's inputs on the batch: the first
    Dense layer's (input_span) and every later Dense layer's whose inputs outnumber the batch (hidden_span)."""
    names = []
    for index, layer in enumerate(net.layers):
        if isinstance(layer, nn.Dense) and (input_span if index == 0 else hidden_span):
            names.append(f"{index}.weight")
    return names


def step_at(schedule, step, decay, epoch, fraction):
    """The step of an update made at `fraction` (0 to 1) of the run, in `epoch`: "epoch" decays it by `decay`
    an epoch (the Trainer's step_decay), "linear" anneals it from `step` to zero over the run, "cosine" likewise
    along half a cosine."""
    if schedule == "epoch":
        return step * decay**epoch
    if schedule == "linear":
        return step * (1 - fraction)
    return step * 0.5 * (1 + math.cos(math.pi * fraction))


def nesterov_step(points, iterates, direction, step, coefficient):
    """MEKI(R)'s Nesterov step on the mean, in place, per parameter name: u_{n+1} = v_n - h d(v_n) into `iterates`
    and v_{n+1} = u_{n+1} + c (u_{n+1} - u_n) into `points`, where the next direction is taken (c = 0: plain
    descent, v = u)."""
    with torch.no_grad():
        for name, point in points.items():
            updated = point - step * direction[name]
            point.copy_(updated + coefficient * (updated - iterates[name]))
            iterates[name].copy_(updated)


def train(net, u0, data, members, step, decay, epochs, batch_size, bias_std, readout_scale, seed, input_span=False,
          hidden_span=False, whiten=None, schedule="epoch", momentum=0.0, uniform_std=None):
    (x, y), (x_test, y_test) = data
    module = net.to_torch(u0)
    inputs = layer_inputs(module, span_layers(net, input_span, hidden_span))
    root = preconditioner(net, module, bias_std, readout_scale, uniform_std)
    generator = torch.Generator().manual_seed(seed)
    order = np.random.default_rng(seed)
    averaged = net.to_torch(u0)  # the parameters averaged over each epoch's updates (the Trainer's "average")
    centre = net.to_torch(u0)  # the iterate u, MEKI(R)'s mean particle; `module` holds the point v
    iterates = dict(centre.named_parameters())
    cosines, curve, average_curve = [], [], []
    per_epoch = -(-len(x) // batch_size)
    for epoch in range(epochs):
        sums = {name: torch.zeros_like(p) for name, p in module.named_parameters()}
        for updates, index in enumerate(datasets.batches(len(x), batch_size, rng=order), 1):
            h = step_at(schedule, step, decay, epoch, (epoch * per_epoch + updates - 1) / (epochs * per_epoch))
            index = torch.from_numpy(index)
            module.zero_grad()
            torch.nn.functional.cross_entropy(module(x[index]), y[index], reduction="sum").backward()
            spans = {name: span(a, whiten) for name, a in inputs.items()
                     if a.shape[1] > a.shape[0] or whiten is not None}
            direction, cosine = noisy_direction(module, root, members, generator, spans)
            cosines.append(cosine)
            nesterov_step(dict(module.named_parameters()), iterates, direction, h,
                          momentum if epoch or updates > 1 else 0.0)
            with torch.no_grad():
                for name, iterate in iterates.items():
                    sums[name] += iterate
        with torch.no_grad():
            for name, parameter in averaged.named_parameters():
                parameter.copy_(sums[name] / updates)
        curve.append(accuracy(centre, x_test, y_test))
        average_curve.append(accuracy(averaged, x_test, y_test))
    return curve, average_curve, float(np.mean(cosines[:100])), float(np.mean(cosines[-100:]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mlp:784-100-10", help="network (ekinet.nn.from_string)")
    parser.add_argument("--members", default="200,500,1000,2000,4000,8000,16000,inf",
                        help="J values, comma-separated ('inf': no noise)")
    parser.add_argument("--steps", default="0.025,0.05,0.1,0.2,0.4,0.8,1.6", help="initial steps, comma-separated")
    parser.add_argument("--decay", type=float, default=0.85, help="the step's factor an epoch (--schedule epoch)")
    parser.add_argument("--schedule", choices=("epoch", "linear", "cosine"), default="epoch",
                        help="the step's schedule: decayed by --decay an epoch, or annealed to zero over the run "
                             "along a line or half a cosine")
    parser.add_argument("--momentum", type=float, default=0.0,
                        help="a constant Nesterov coefficient in [0, 1), as MEKI(R)'s --momentum-coefficient")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--bias-std", type=float, default=0.1)
    parser.add_argument("--readout-scales", default="1",
                        help="factors on the last layer's prior std, comma-separated")
    parser.add_argument("--uniform-std", type=float, default=None, metavar="SIGMA",
                        help="draw every parameter with this one standard deviation instead of the Glorot prior's "
                             "(C = SIGMA^2 I; the step then plays SGD's rate over SIGMA^2 per summed example)")
    parser.add_argument("--input-span", action="store_true",
                        help="draw the first layer's weights in the span of the batch's inputs only")
    parser.add_argument("--hidden-span", action="store_true",
                        help="draw each later Dense layer's weights in the span of its inputs on the batch only")
    parser.add_argument("--whiten", type=float, default=None, metavar="ALPHA",
                        help="damped whitening of the spanned layers' draws (see span(); smaller is stronger)")
    parser.add_argument("--conv-padding", type=int, default=None, metavar="N",
                        help="zero-pad every Conv2d of --model by N on each side")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="gradient-noise.json")
    args = parser.parse_args()
    net = nn.from_string(args.model)
    if args.conv_padding is not None:
        net = with_conv_padding(net, args.conv_padding)
    if args.input_span and not isinstance(net.layers[0], nn.Dense):
        parser.error(f"--input-span needs a Dense first layer; {args.model} begins with {net.layers[0]!r}")
    train_set = datasets.load_mnist("train").subset(np.arange(55000))
    test_set = datasets.load_mnist("test")

    def tensors(data):
        examples = data.x.reshape(len(data), *net.input_shape)
        return (torch.from_numpy(np.ascontiguousarray(examples, dtype=np.float32)),
                torch.from_numpy(data.y.astype(np.int64)))

    data = (tensors(train_set), tensors(test_set))
    u0 = net.prior(1, rng=args.seed, bias_std=args.bias_std)[0]
    rows = []
    grid = [(float(m), float(r), float(h)) for m in args.members.split(",")
            for r in args.readout_scales.split(",") for h in args.steps.split(",")]
    for members, readout_scale, step in grid:
        start = time.perf_counter()
        curve, average_curve, first_cosine, last_cosine = train(net, u0, data, members, step, args.decay, args.epochs,
                                                 args.batch_size, args.bias_std, readout_scale, args.seed,
                                                 args.input_span, args.hidden_span, args.whiten, args.schedule,
                                                 args.momentum, args.uniform_std)
        rows.append({"members": "inf" if math.isinf(members) else int(members), "readout_scale": readout_scale,
                     "input_span": args.input_span, "hidden_span": args.hidden_span, "whiten": args.whiten,
                     "schedule": args.schedule, "momentum": args.momentum, "uniform_std": args.uniform_std,
                     "step": step, "test_accuracy": curve, "test_accuracy_average": average_curve,
                     "cosine_first_100": first_cosine,
                     "cosine_last_100": last_cosine, "seconds": time.perf_counter() - start})
        print(f"J {rows[-1]['members']:>5} readout x{readout_scale:<5} step {step:<5} final {curve[-1]:.4f} "
              f"best {max(curve):.4f} average {average_curve[-1]:.4f} cosine {first_cosine:.3f} -> {last_cosine:.3f}",
              flush=True)
    write_result({"model": args.model, "parameters": net.parameter_count, "train": 55000, "rows": rows},
                 "docs/gradient_noise.py", args)


if __name__ == "__main__":
    main()

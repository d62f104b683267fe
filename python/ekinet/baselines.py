"""Gradient baselines through PyTorch, for comparing EKI with what back-propagation achieves on the same task.

Each baseline builds its network from the same ekinet description (a string form or an nn.Sequential) with
Sequential.to_torch(u), u one draw of the ensemble's Glorot prior (net.prior(1, rng=seed)[0], the first member
of the ensemble EKI would start from with that seed; online EKI's default ensemble spreads around such a draw
instead), so architecture and initialisation match and only the training differs. PyTorch is optional: it is
imported when a baseline runs (`pip install torch`).

>>> from ekinet import baselines, datasets
>>> train, test = datasets.load_mnist_small("train"), datasets.load_mnist_small("test")
>>> baselines.sgd_train("mlp:784-100-10", train, test, epochs=5, momentum=0.9)["test_accuracy"]
>>> baselines.online_gradient_descent(datasets.load_series("melbourne"), "lstm:1-32-1").final
"""

import contextlib
import time

import numpy as np

from . import datasets, nn
from .online import (_check_regressor, _positive_float, _positive_int, _prepare_series, _result,
                     _window_network, _windows)

__all__ = ["online_gradient_descent", "sgd_train"]


def _torch():
    try:
        import torch
    except ImportError as error:
        raise ImportError("the gradient baselines need PyTorch, which is not installed: pip install torch "
                          "(ekinet itself does not need it)") from error
    return torch


def _network(model):
    if isinstance(model, str):
        return nn.from_string(model)
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"model must be a string such as 'mlp:784-100-10' or an nn.Sequential, got "
                        f"{type(model).__name__}")
    return model


def _flat_parameters(net, module):
    """The trained module's tensors as one ekinet parameter row (P,), so net.forward can evaluate it."""
    u = np.empty(net.parameter_count, dtype=np.float32)
    for name, parameter in module.named_parameters():
        offset, shape = net.parameters[name.removesuffix("_l0")]
        u[offset:offset + int(np.prod(shape))] = parameter.detach().cpu().numpy().ravel()
    return u


# ----------------------------------------------------------------------------------------------------------
# mini-batch SGD
# ----------------------------------------------------------------------------------------------------------


def _check_dataset(data, name, net, task=None):
    if data is None and name == "validation":
        return None
    if not isinstance(data, datasets.Dataset):
        raise TypeError(f"{name} must be an ekinet.datasets.Dataset, got {type(data).__name__}")
    if task is not None and data.task != task:
        raise ValueError(f"{name} is a {data.task} data set but train is a {task} one")
    size = int(np.prod(data.x.shape[1:]))
    if size != net.input_size:
        raise ValueError(f"{name}.x has examples of shape {data.x.shape[1:]} ({size} values) but the network takes "
                         f"{net.input_shape} ({net.input_size} values)")
    if data.task == "classification" and net.output_shape != (data.num_classes,):
        raise ValueError(f"{name} has {data.num_classes} classes but the network outputs {net.output_shape} per "
                         f"example; end it with Dense({data.num_classes})")
    if data.task == "regression" and int(np.prod(data.y.shape[1:])) != net.output_size:
        raise ValueError(f"{name}.y has {int(np.prod(data.y.shape[1:]))} value(s) per example but the network "
                         f"outputs {net.output_shape}")
    return data


def sgd_train(model, train, test, *, epochs=10, batch_size=100, lr=0.1, momentum=0.0, validation=None, rng=0,
              progress=True, device="cpu"):
    """Mini-batch SGD (momentum=0.9: momentum SGD) by back-propagation, the paper's SGD baselines.

    model : a string form ("mlp:784-100-10", "dnn:2", "cnn-mnist", ...) or an nn.Sequential.
    train, test, validation : ekinet.datasets.Dataset. Classification minimises the cross-entropy of the logits
        (of the log-probabilities when the network ends in softmax) and reports accuracy; regression minimises
        the mean squared error and reports the RMSE.
    rng : seed or numpy Generator: the initial network (the prior's first member) and the order of the
        examples each epoch (datasets.batches).
    device : a torch device ("cpu", "cuda").

    Returns a dict: "metric" ("accuracy" or "rmse"), "test_<metric>" (after the last epoch), "history" (one dict
    per epoch: epoch, train_loss, test_<metric>, validation_<metric> when given, seconds), "u" (the trained
    parameters as an ekinet row (P,)), "module" (the trained torch module) and "seconds".
    """
    from tqdm.auto import tqdm

    torch = _torch()
    net = _network(model)
    train = _check_dataset(train, "train", net)
    test = _check_dataset(test, "test", net, train.task)
    validation = _check_dataset(validation, "validation", net, train.task)
    epochs = _positive_int(epochs, "epochs")
    batch_size = _positive_int(batch_size, "batch_size")
    lr = _positive_float(lr, "lr")
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum = {momentum!r} must lie in [0, 1) (0.9 for momentum SGD)")
    generator = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    classification = train.task == "classification"
    metric = "accuracy" if classification else "rmse"
    log_probabilities = getattr(net.layers[-1], "activation", None) == "softmax"

    module = net.to_torch(net.prior(1, rng=generator)[0]).to(device)
    optimizer = torch.optim.SGD(module.parameters(), lr=lr, momentum=momentum)

    def tensors(data):
        x = torch.as_tensor(np.asarray(data.x, dtype=np.float32).reshape((-1,) + net.input_shape), device=device)
        y = (torch.as_tensor(data.y, dtype=torch.int64, device=device) if classification else
             torch.as_tensor(np.asarray(data.y, dtype=np.float32).reshape((-1,) + net.output_shape), device=device))
        return x, y

    def loss_of(out, y):
        if not classification:
            return torch.nn.functional.mse_loss(out, y)
        if log_probabilities:
            return torch.nn.functional.nll_loss(torch.log(out.clamp_min(1e-12)), y)
        return torch.nn.functional.cross_entropy(out, y)

    def evaluate(x, y):
        with torch.no_grad():
            out = torch.cat([module(x[i:i + 1000]) for i in range(0, len(x), 1000)])
        if classification:
            return float((out.argmax(dim=1) == y).double().mean())
        return float(torch.sqrt(torch.nn.functional.mse_loss(out.double(), y.double())))

    x_train, y_train = tensors(train)
    evaluation = {"test": tensors(test)} | ({} if validation is None else {"validation": tensors(validation)})
    history = []
    started = time.perf_counter()
    with tqdm(total=epochs, desc="SGD", unit="epoch", disable=not progress) as bar:
        for epoch in range(1, epochs + 1):
            module.train()
            total, count = 0.0, 0
            for index in datasets.batches(len(train), batch_size, rng=generator):
                index = torch.as_tensor(index, device=device)
                loss = loss_of(module(x_train[index]), y_train[index])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(index)
                count += len(index)
            module.eval()
            record = {"epoch": epoch, "train_loss": total / count}
            record |= {f"{name}_{metric}": evaluate(*data) for name, data in evaluation.items()}
            record["seconds"] = time.perf_counter() - started
            history.append(record)
            bar.update()
            bar.set_postfix(loss=f"{record['train_loss']:.4g}", test=f"{record[f'test_{metric}']:.4f}")
    return {"metric": metric, f"test_{metric}": history[-1][f"test_{metric}"], "history": history,
            "u": _flat_parameters(net, module), "module": module, "seconds": time.perf_counter() - started}


# ----------------------------------------------------------------------------------------------------------
# online gradient descent
# ----------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _one_thread(torch):
    """PyTorch on one thread: one example a step is too little work to share, and on busy cores the threads'
    barriers made the online updates 100 times slower (measured on two shared cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _run(torch, layers, x, states):
    """The layers on x (1, steps, 1) from the recurrent states (one per recurrent layer, None for zeros);
    returns the outputs (1, steps, 1) and the states after the last step."""
    states, after = list(states), []
    for layer in layers:
        if isinstance(layer, torch.nn.RNNBase):
            # past to_torch's wrapper (which returns outputs only) to torch's own forward, which takes and
            # returns the state
            x, state = super(type(layer), layer).forward(x, states.pop(0))
            after.append(state)
        else:
            x = layer(x)
    return x, after


def online_gradient_descent(series, model="lstm:1-32-1", *, passes=1, window=1, lr=0.05, truncation=10, scale=True,
                            rng=0, progress=True):
    """The OGD baseline of the online experiments: one SGD step per update, by truncated back-propagation
    through time, with the recurrent state carried (detached) from one update to the next.

    Same series, model, passes, window, scale and error definitions as ekinet.online.online_regression, so the
    two results compare directly. Each update re-runs the last max(truncation, window) steps with the current
    parameters from the detached state stored at their start, records the prediction of the window's points
    (before they are used), and takes a gradient step of size lr on their mean squared error.

    Returns an OnlineResult (spread zero; ensemble the trained parameters as one row). Raises FloatingPointError
    when the loss stops being finite (lr too large).
    """
    from tqdm.auto import tqdm

    torch = _torch()
    model = _check_regressor(model)
    passes = _positive_int(passes, "passes")
    window = _positive_int(window, "window")
    truncation = _positive_int(truncation, "truncation")
    lr = _positive_float(lr, "lr")
    values, lo, hi, times, name = _prepare_series(series, scale, window)
    generator = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)

    module = _window_network(model, 1).to_torch(model.prior(1, rng=generator)[0])
    layers = list(module.children())
    recurrent = sum(isinstance(layer, torch.nn.RNNBase) for layer in layers)
    optimizer = torch.optim.SGD(module.parameters(), lr=lr)
    inputs, targets = values[:-1], values[1:]
    x = torch.as_tensor(inputs, dtype=torch.float32).reshape(1, -1, 1)
    y = torch.as_tensor(targets, dtype=torch.float32).reshape(1, -1, 1)
    blocks = _windows(targets.shape[0], window)
    span = max(truncation, window)
    predictions = np.empty((passes, targets.shape[0]))

    started = time.perf_counter()
    with _one_thread(torch), tqdm(total=passes * len(blocks), desc="online GD", unit="update",
                                  disable=not progress) as bar:
        for p in range(passes):
            anchor, anchor_states = 0, [None] * recurrent
            for k, (start, stop) in enumerate(blocks):
                # where the next update's run begins: its state is kept, detached, from this run
                following = blocks[k + 1][1] if k + 1 < len(blocks) else stop
                next_anchor = min(stop, max(anchor, following - span))
                # [anchor, next_anchor) then [next_anchor, stop); either part may be empty (PyTorch's
                # recurrent modules refuse empty sequences)
                parts, middle = [], anchor_states
                if next_anchor > anchor:
                    head, middle = _run(torch, layers, x[:, anchor:next_anchor], anchor_states)
                    parts.append(head)
                if stop > next_anchor:
                    parts.append(_run(torch, layers, x[:, next_anchor:stop], middle)[0])
                out = torch.cat(parts, dim=1)[:, -(stop - start):]
                predictions[p, start:stop] = out.detach().numpy().reshape(-1)
                loss = torch.nn.functional.mse_loss(out, y[:, start:stop])
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"online gradient descent diverged: the loss at update {k + 1} of "
                                             f"pass {p + 1} is {float(loss.detach())}; use a smaller lr (got {lr})")
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                anchor = next_anchor
                anchor_states = [None if s is None else tuple(t.detach() for t in s) if isinstance(s, tuple)
                                 else s.detach() for s in middle]
                bar.update()
                if (k + 1) % 100 == 0 or stop == targets.shape[0]:
                    bar.set_postfix(pass_=p + 1, mse=f"{np.mean((predictions[p, :stop] - targets[:stop]) ** 2):.3e}")
    seconds = time.perf_counter() - started

    settings = {"model": repr(model.layers), "window": window, "lr": lr, "truncation": truncation,
                "scale": bool(scale)}
    u = _flat_parameters(model, module)[None, :]
    return _result(predictions, np.zeros_like(predictions), targets, inputs, u, model, seconds, lo, hi, times, name,
                   "OGD", settings)

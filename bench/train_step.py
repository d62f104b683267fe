"""Benchmark of one EKI(R) training update of the Trainer, with the randomisation's full draws against
input-span draws (RandomizationSchedule(input_span=True): the first layer's weights drawn in the span of the
batch's inputs, the update computed in the span's coordinates) and hidden-span draws (hidden_span=True as well:
every later Dense layer's weights in the span of the centre's inputs to it, mapped back for the forward pass).

One update is what Trainer.fit() does per mini-batch: the draws around the last update's centre, the ensemble's
forward pass on the batch, the cross-entropy and its gradient, and the loss scheme's mean update; with input
span also the batch's orthonormal basis and the maps between the coordinates. Both are timed side by side in
one run on the same batch of MNIST digits, for the paper's dense networks DNN 2-4 at J = 200 and 2000 (DNN 2's
readout reads 100 features of 100 examples: its hidden span is the input span).

Usage: python bench/train_step.py [--device cpu|cuda] [--out bench/results]   (EKINET_DATA: the data directory)
"""

import argparse
import json
import os

import numpy as np
from timing import best_of, environment, header, save_results, timed

from ekinet import datasets
from ekinet.train import RandomizationSchedule, Trainer

CASES = ((200, "mlp:784-100-10"), (2000, "mlp:784-100-10"), (200, "mlp:784-300-100-10"),
         (2000, "mlp:784-300-100-10"), (200, "mlp:784-500-300-100-10"), (2000, "mlp:784-500-300-100-10"))
VARIANTS = (("full", {}), ("span", {"input_span": True}), ("hidden", {"input_span": True, "hidden_span": True}))
BATCH = 100


def bench(J, model, train, device, synchronize):
    row = {"J": J, "model": model, "batch": BATCH}
    for name, draws in VARIANTS:
        trainer = Trainer(model, train, ensemble=J, epochs=1, batch_size=BATCH, progress=False, device=device,
                          ensemble_eval="never", randomization=RandomizationSchedule(**draws))
        X, y = trainer._device_data("train")
        X, y = X[:BATCH], y[:BATCH]
        trainer._update(X, y)  # the first update starts from the prior ensemble; time the ones after it
        row[f"{name}_update_s"] = timed(lambda: trainer._update(X, y), synchronize)
        row["parameters" if name == "full" else f"{name}_parameters"] = (
            trainer.network.parameter_count if name == "full" else
            trainer._input_span.subspace(X, centre=trainer.optimizer.next_centre).parameter_count)
    row["speedup"] = row["full_update_s"] / row["span_update_s"]
    row["hidden_speedup"] = row["full_update_s"] / row["hidden_update_s"]
    return row


def markdown(results):
    lines = header(results, "One EKI(R) training update: full, input-span and hidden-span draws") + [
        f"Milliseconds per update ({best_of(results)}), batch of {BATCH} MNIST digits, float32. "
        "Speed-ups: full / input span, full / hidden span.", "",
        "| J | model | P | P in the input span | P in the hidden span | full draws | input span | hidden span "
        "| speed-ups |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        lines.append(f"| {r['J']} | {r['model']} | {r['parameters']} | {r['span_parameters']} | "
                     f"{r['hidden_parameters']} | {1e3 * r['full_update_s']:.0f} | {1e3 * r['span_update_s']:.0f} | "
                     f"{1e3 * r['hidden_update_s']:.0f} | {r['speedup']:.1f}x, {r['hidden_speedup']:.1f}x |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args(argv)
    synchronize = lambda: None  # noqa: E731
    if args.device == "cuda":
        import cupy

        def synchronize():
            cupy.cuda.Device().synchronize()
    train = datasets.load_mnist("train").subset(np.arange(1000))
    results = {"environment": environment(args.device), "rows": []}
    stem = f"train-step-{args.device}-float32"
    for J, model in CASES:
        results["rows"].append(bench(J, model, train, args.device, synchronize))
        print(json.dumps(results["rows"][-1]), flush=True)
        save_results(results, args.out, stem, markdown, echo=False)
    save_results(results, args.out, stem, markdown)


if __name__ == "__main__":
    main()

"""The ekinet command line."""

import argparse
import json
import math
import os
import sys


def _checked(convert, accept, description):
    """An argparse type: `convert` the text, then `accept` the value, else an error that says what was expected
    (argparse prefixes it with the option's name)."""
    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or (isinstance(value, float) and not math.isfinite(value)) or not accept(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not {description}")
        return value

    return parse


_positive_int = _checked(int, lambda value: value >= 1, "a positive integer")
_seed = _checked(int, lambda value: value >= 0, "a non-negative integer seed")
_positive_float = _checked(float, lambda value: value > 0, "a positive number")
_fraction = _checked(float, lambda value: 0 <= value < 1, "a fraction in [0, 1)")
_open_fraction = _checked(float, lambda value: 0 < value < 1, "a number between 0 and 1")
_nonnegative_float = _checked(float, lambda value: value >= 0, "a non-negative number")
# A mistyped --data-dir must not become a new directory that the data sets are downloaded into.
_directory = _checked(os.path.expanduser, os.path.isdir, "an existing directory (create it first)")


def build_parser():
    parser = argparse.ArgumentParser(prog="ekinet", description="Ensemble Kalman Inversion for neural networks")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="show what the native core was built with")
    demo = commands.add_parser("demo", help="calibrate a black-box damped oscillator with EKI (the default job)")
    demo.add_argument("--ensemble", type=_positive_int, default=100, help="ensemble size J (default 100)")
    demo.add_argument("--iterations", type=_positive_int, default=15, help="EKI updates (default 15)")
    demo.add_argument("--seed", type=_seed, default=0)
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    train = commands.add_parser("train", help="train a network on a data set by EKI")
    train.add_argument("--model", default="mlp:784-100-10",
                       help="network string form: mlp:784-100-10, dnn:2, cnn-mnist, rnn-mnist, mlp:13-32-1:tanh ...")
    train.add_argument("--data", default="mnist-small", choices=("mnist", "fashion-mnist", "mnist-small"),
                       help="the data set (Boston housing: `ekinet experiment boston`, which standardises it)")
    train.add_argument("--data-dir", type=_directory,
                       help="where the data files are (default $EKINET_DATA or ~/.cache/ekinet)")
    train.add_argument("--method", default="eki-r", choices=("eki", "meki", "eki-r", "meki-r"))
    train.add_argument("--update", default="loss", choices=("loss", "kalman"),
                       help="the general-loss scheme (the paper's) or the Kalman update")
    train.add_argument("--loss", choices=("cross-entropy", "squared", "gaussian-nll"))
    train.add_argument("--ensemble", type=_positive_int, default=500, help="ensemble size J")
    train.add_argument("--epochs", type=_positive_int, default=10)
    train.add_argument("--batch-size", type=_positive_int, default=100)
    train.add_argument("--step", type=_positive_float, default=3.0,
                       help="step h (the adaptive step's numerator for --update loss)")
    train.add_argument("--step-decay", type=_positive_float, default=1.0,
                       help="the step of epoch e is step * step_decay^e (default 1: constant)")
    train.add_argument("--noise", type=_positive_float,
                       help="with --update kalman: the noise variance gamma (default 0.01)")
    train.add_argument("--randomization-scale", type=_nonnegative_float,
                       help="eki-r, meki-r: gamma, in units of the Glorot prior (default 0.3)")
    train.add_argument("--randomization-decay", type=_positive_float,
                       help="eki-r, meki-r: gamma(n) = scale * decay^n (default 1)")
    train.add_argument("--randomize-every", choices=("epoch", "update"),
                       help="eki-r, meki-r: redraw after every update (default) or every epoch")
    train.add_argument("--centred-draws", action="store_true",
                       help="EKI(R): subtract the draws' sample mean, so that the redraw keeps the mean exactly")
    train.add_argument("--input-span", action="store_true",
                       help="eki-r, meki-r: draw the first Dense layer's weights in the span of each batch's "
                            "inputs (less noise, and an update on fewer parameters; needs --randomize-every update)")
    train.add_argument("--hidden-span", action="store_true",
                       help="with --input-span: draw every later Dense layer's weights in the span of its inputs "
                            "on the batch as the centre network computes them (less noise)")
    train.add_argument("--momentum-restart", choices=("epoch",),
                       help="meki, meki-r: restart the Nesterov momentum at every epoch (default: never)")
    train.add_argument("--momentum-coefficient", type=_open_fraction,
                       help="meki, meki-r: a constant Nesterov coefficient in (0, 1) (default: n/(n+3))")
    train.add_argument("--tikhonov", type=_nonnegative_float, default=0.0)
    train.add_argument("--bias-std", type=_nonnegative_float, default=0.1,
                       help="prior standard deviation of the biases (the weights are Glorot)")
    train.add_argument("--ensemble-eval", choices=("final", "epoch", "never"), default="final",
                       help="when to evaluate the ensemble-averaged prediction (a forward pass of all members)")
    train.add_argument("--validation", type=_fraction, default=0.1,
                       help="fraction of train held out, in [0, 1) (0: none)")
    train.add_argument("--patience", type=_positive_int, help="early stopping patience in epochs")
    train.add_argument("--train-size", type=_positive_int, help="use the first N training examples")
    train.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    train.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    train.add_argument("--checkpoint", help="checkpoint file, written after every epoch")
    train.add_argument("--resume", action="store_true", help="continue from --checkpoint if it exists (needs "
                       "--checkpoint)")
    train.add_argument("--history", help="write the per-epoch metrics to this .csv or .json file")
    train.add_argument("--plot", help="save learning curves to this image file (needs matplotlib)")
    train.add_argument("--seed", type=_seed, default=0)
    train.add_argument("--no-progress", action="store_true")

    experiment = commands.add_parser("experiment", help="run a registered experiment of the paper")
    experiment.add_argument("name", nargs="?", help="experiment name (--list shows them)")
    experiment.add_argument("--list", action="store_true", help="list the experiments")
    sizes = experiment.add_mutually_exclusive_group()
    sizes.add_argument("--smoke", action="store_true", help="the fast smoke size (--size smoke)")
    sizes.add_argument("--size", choices=("auto", "paper", "cpu", "smoke"), default="auto",
                            help="paper settings, a reduced CPU size, or smoke (auto: paper on cuda, else cpu)")
    experiment.add_argument("--ensemble", type=_positive_int)
    experiment.add_argument("--epochs", type=_positive_int)
    experiment.add_argument("--train-size", type=_positive_int, help="use the first N training examples "
                            "(training experiments)")
    experiment.add_argument("--passes", type=_positive_int,
                            help="passes through the series (online experiments; the paper's: 3)")
    experiment.add_argument("--step", type=_positive_float,
                            help="EKI step h of the EKI methods (default: the experiment's setting, else the "
                                 "Trainer's or the online driver's)")
    experiment.add_argument("--step-decay", type=_positive_float,
                            help="the step of epoch e is step * step_decay^e (training experiments)")
    experiment.add_argument("--centred-draws", action="store_true", default=None,
                            help="EKI(R) redraws keep the update's centre exactly (RandomizationSchedule(centred="
                                 "True); training experiments)")
    experiment.add_argument("--input-span", action="store_true", default=None,
                            help="the first Dense layer's weights drawn in the span of each batch's inputs "
                                 "(RandomizationSchedule(input_span=True)); training experiments with eki-r, meki-r")
    experiment.add_argument("--hidden-span", action="store_true", default=None,
                            help="with --input-span: every later Dense layer's weights drawn in the span of its "
                                 "inputs on the batch (RandomizationSchedule(hidden_span=True))")
    experiment.add_argument("--momentum-restart", choices=("epoch",),
                            help="meki, meki-r: restart the Nesterov momentum at every epoch (training "
                                 "experiments; default: never, as the paper)")
    experiment.add_argument("--momentum-coefficient", type=_open_fraction,
                            help="meki, meki-r: a constant Nesterov coefficient in (0, 1) (training experiments; "
                                 "default: n/(n+3), as the paper)")
    experiment.add_argument("--update", choices=("loss", "kalman"),
                            help="the EKI methods' update (training experiments; default: the general-loss "
                                 "scheme, the paper's)")
    experiment.add_argument("--noise", type=_positive_float,
                            help="with --update kalman: the noise variance gamma (default: the Trainer's)")
    experiment.add_argument("--methods", help="comma-separated subset, e.g. eki,eki-r,sgd")
    experiment.add_argument("--out", default="results", help="results directory (default results/)")
    experiment.add_argument("--checkpoints", metavar="DIR",
                            help="write each EKI run's checkpoint into DIR after every epoch and resume from it "
                                 "(an interrupted run continues where it stopped; the file keeps the ensemble)")
    experiment.add_argument("--data-dir", type=_directory,
                            help="where the data files are (default $EKINET_DATA or ~/.cache/ekinet)")
    experiment.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    experiment.add_argument("--seed", type=_seed, default=0)
    experiment.add_argument("--no-progress", action="store_true")

    report = commands.add_parser("report", help="print our results beside the paper's numbers")
    report.add_argument("--out", default="results", help="results directory (default results/)")
    return parser


def _check_outputs(args):
    """--history and --plot are written after training: a path that cannot be written fails now instead."""
    if args.history and os.path.isdir(args.history):
        raise ValueError(f"--history {args.history} is a directory; pass a file (.csv or .json)")
    for option, path in (("--history", args.history), ("--plot", args.plot)):
        folder = os.path.dirname(os.path.abspath(path)) if path else None
        if folder and not (os.path.isdir(folder) and os.access(folder, os.W_OK)):
            raise ValueError(f"{option} {path}: the directory {folder} does not exist or is not writable")
    if args.plot:
        from matplotlib.figure import Figure

        formats = Figure().canvas.get_supported_filetypes()
        extension = os.path.splitext(args.plot)[1].lstrip(".").lower()
        if extension not in formats:
            raise ValueError(f"--plot {args.plot}: the extension must name an image format, one of "
                             f"{', '.join(sorted(formats))}")


def _train(args):
    import numpy as np

    from . import datasets
    from .train import RandomizationSchedule, Trainer

    redraws = {"scale": args.randomization_scale, "decay": args.randomization_decay, "when": args.randomize_every}
    drawn = [flag for flag, on in (("--centred-draws", args.centred_draws), ("--input-span", args.input_span),
                                   ("--hidden-span", args.hidden_span)) if on]
    drawn += [f"--{flag}" for flag, value in (("randomization-scale", redraws["scale"]),
                                              ("randomization-decay", redraws["decay"]),
                                              ("randomize-every", redraws["when"])) if value is not None]
    if drawn and not args.method.endswith("-r"):
        raise ValueError(f"{', '.join(drawn)} shape the redraws of EKI(R): use --method eki-r or meki-r, not "
                         f"{args.method}")
    if args.noise is not None and args.update != "kalman":
        raise ValueError(f"--noise is the Kalman update's gamma: add --update kalman (the {args.update!r} update "
                         "has no noise variance)")
    if args.resume and not args.checkpoint:
        raise ValueError("--resume continues from --checkpoint FILE: pass the checkpoint file too")
    if args.data_dir and args.data == "mnist-small":
        raise ValueError("--data-dir is where mnist and fashion-mnist are read; mnist-small is embedded in the "
                         "package: leave --data-dir out")
    _check_outputs(args)
    flatten = not args.model.startswith("cnn")
    where = {} if args.data == "mnist-small" else {"data_dir": args.data_dir}
    train = datasets.load(args.data, split="train", flatten=flatten, **where)
    test = datasets.load(args.data, split="test", flatten=flatten, **where)
    if args.train_size:
        if args.train_size > len(train):
            print(f"ekinet train: --train-size {args.train_size} exceeds the {len(train)} training examples of "
                  f"{args.data}; using all of them", file=sys.stderr)
        train = train.subset(np.arange(min(args.train_size, len(train))))
    validation = None
    if args.validation > 0:
        train, validation = train.split(args.validation, rng=args.seed)
    randomization = None
    if args.method.endswith("-r"):
        randomization = RandomizationSchedule(**{k: v for k, v in redraws.items() if v is not None},
                                              centred=args.centred_draws, input_span=args.input_span,
                                              hidden_span=args.hidden_span)
    trainer = Trainer(args.model, train, validation=validation, test=test, method=args.method, update=args.update,
                      loss=args.loss, ensemble=args.ensemble, batch_size=args.batch_size, epochs=args.epochs,
                      step=args.step, step_decay=args.step_decay, randomization=randomization,
                      **({} if args.noise is None else {"noise": args.noise}),
                      momentum_restart=args.momentum_restart, momentum_coefficient=args.momentum_coefficient,
                      tikhonov=args.tikhonov, bias_std=args.bias_std, ensemble_eval=args.ensemble_eval,
                      patience=args.patience, checkpoint=args.checkpoint, resume=args.resume,
                      rng=args.seed, progress=not args.no_progress, device=args.device, dtype=args.dtype)
    trainer.fit()
    final = {k: v for k, v in trainer.history[-1].items() if k.startswith(("test_", "validation_"))}
    print(json.dumps({"epochs": trainer.epoch, **final}, indent=2))
    if args.history:
        trainer.save_history(args.history)
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, ax = plt.subplots()
        trainer.plot_history(ax=ax)
        figure.savefig(args.plot, dpi=120, bbox_inches="tight")
        plt.close(figure)


def _experiment(args):
    from . import experiments

    if args.list or not args.name:
        defaults = vars(build_parser().parse_args(["experiment"]))
        given = [f"--{key.replace('_', '-')}" for key, value in vars(args).items()
                 if key not in ("name", "list") and value != defaults[key]]
        if given:
            raise ValueError(f"{', '.join(given)} need{'s' if len(given) == 1 else ''} an experiment name; "
                             "`ekinet experiment --list` shows them")
        for name, experiment in experiments.EXPERIMENTS.items():
            print(f"{name:28s} {experiment.description}")
        return
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else None
    result = experiments.run(args.name, size="smoke" if args.smoke else args.size, ensemble=args.ensemble,
                             epochs=args.epochs, train_size=args.train_size, passes=args.passes, step=args.step,
                             step_decay=args.step_decay, centred_draws=args.centred_draws,
                             input_span=args.input_span, hidden_span=args.hidden_span,
                             momentum_restart=args.momentum_restart,
                             momentum_coefficient=args.momentum_coefficient, update=args.update,
                             noise=args.noise, out=args.out,
                             progress=not args.no_progress, device=args.device, seed=args.seed,
                             data_dir=args.data_dir, methods=methods, checkpoints=args.checkpoints)
    print(experiments.report(args.out) if args.out else json.dumps(result.get("rows"), default=str)[:2000])


def main(argv=None):
    args = build_parser().parse_args(argv)
    import ekinet

    if args.command == "info":
        print(json.dumps(ekinet.build_info(), indent=2))
    elif args.command == "demo":
        if args.ensemble < 2:
            print("ekinet demo: --ensemble must be at least 2", file=sys.stderr)
            return 2
        from . import demo

        demo.main(args.ensemble, args.iterations, args.seed, progress=not args.no_progress)
    else:
        try:
            if args.command == "train":
                _train(args)
            elif args.command == "experiment":
                _experiment(args)
            elif args.command == "report":
                from . import experiments

                print(experiments.report(args.out), end="")
        except (ValueError, TypeError, OSError, ImportError) as error:
            print(f"ekinet {args.command}: {error}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

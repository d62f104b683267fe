"""The ekinet command line."""

import argparse
import json
import sys


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def build_parser():
    parser = argparse.ArgumentParser(prog="ekinet", description="Ensemble Kalman Inversion for neural networks")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="show what the native core was built with")
    demo = commands.add_parser("demo", help="calibrate a black-box damped oscillator with EKI (the default job)")
    demo.add_argument("--ensemble", type=_positive_int, default=100, help="ensemble size J (default 100)")
    demo.add_argument("--iterations", type=_positive_int, default=15, help="EKI updates (default 15)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


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
    return 0


if __name__ == "__main__":
    sys.exit(main())

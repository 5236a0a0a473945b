"""Command line: ``python -m fastloss check`` and ``python -m fastloss bench``."""
import argparse
import sys

from ._tools import bench


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m fastloss",
        description="fastloss: verify the loss kernels, or benchmark them against "
                    "PyTorch, NumPy and JAX.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = commands.add_parser(
        "check", help="verify every loss against finite differences, NumPy and PyTorch",
        description="Verify every loss (value and gradient) against central finite "
                    "differences in float64, the NumPy reference and PyTorch (when "
                    "installed), in float32 and float64, with 1 and 2 threads. Exits "
                    "non-zero on any failure.")
    check.add_argument("--losses", type=bench.comma_list, metavar="NAMES",
                       help="comma-separated loss names (default: all)")
    check.add_argument("--no-torch", action="store_true",
                       help="skip the comparison with PyTorch")
    check.add_argument("-v", "--verbose", action="store_true",
                       help="print every comparison, not only the failed ones")

    bench.add_arguments(commands.add_parser(
        "bench", help="time fastloss against PyTorch, NumPy and JAX",
        description=bench.DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter))
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if args.command == "check":
        from ._tools import check
        return check.run(args.losses, verbose=args.verbose, use_torch=not args.no_torch)
    return bench.main(args, argv)


if __name__ == "__main__":
    sys.exit(main())

"""python -m ryzjupyter.bench <command> ..."""
import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ryzjupyter.bench",
                                     description="ryzjupyter benchmarks")
    sub = parser.add_subparsers(dest="command", required=True)
    from ryzjupyter.bench import kernels, ppl
    kernels.add_parser(sub)
    ppl.add_parser(sub)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())

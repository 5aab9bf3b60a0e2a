"""python -m ryzjupyter.bench <command> ..."""
import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ryzjupyter.bench",
                                     description="ryzjupyter benchmarks")
    sub = parser.add_subparsers(dest="command", required=True)
    from ryzjupyter.bench import kernels, ppl, report
    kernels.add_parser(sub)
    ppl.add_parser(sub)
    report.add_parser(sub)
    __import__("ryzjupyter.bench.model", fromlist=["add_parser"]).add_parser(sub)
    __import__("ryzjupyter.bench.serve", fromlist=["add_parser"]).add_parser(sub)
    __import__("ryzjupyter.bench.scaleout", fromlist=["add_parser"]).add_parser(sub)
    __import__("ryzjupyter.bench.speculative", fromlist=["add_parser"]).add_parser(sub)
    __import__("ryzjupyter.bench.embed", fromlist=["add_parser"]).add_parser(sub)
    __import__("ryzjupyter.bench.memory", fromlist=["add_parser"]).add_parser(sub)
    __import__("ryzjupyter.bench.soak", fromlist=["add_parser"]).add_parser(sub)
    __import__("ryzjupyter.bench.recurrent", fromlist=["add_parser"]).add_parser(sub)
    __import__("ryzjupyter.bench.copy", fromlist=["add_parser"]).add_parser(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv                  # recorded with the results (--json)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())

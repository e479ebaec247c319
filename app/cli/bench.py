"""`mtl bench`: the benchmarks of a repository checkout, imported only when the command runs."""

from __future__ import annotations

import argparse

from app.cli.common import HelpFormatter, Parser, UsageError, command

# ----------------------------------------------------------------------------- main

def add_bench(sub: argparse._SubParsersAction) -> None:
    # A thin entry: the benchmark's own options are parsed by `benchmarks.table1` (the same as
    # `python -m benchmarks.table1`), imported only when this command runs.
    p = command(sub, "bench", "benchmarks whose reports are committed under benchmarks/results")
    bench = p.add_subparsers(dest="bench", required=True)
    table1 = command(bench, "table1", "the paper's Table 1 on unseen classes, all methods",
                      add_help=False)
    table1.set_defaults(handler=_bench_table1, passes_on=True)


class _RawDescriptionHelpFormatter(argparse.RawDescriptionHelpFormatter, HelpFormatter):
    """The benchmark's docstring as written, and every option's default."""


def _bench_table1(args: argparse.Namespace) -> int:
    try:
        from benchmarks import table1
    except ModuleNotFoundError as exc:
        if exc.name != "benchmarks":
            raise
        # The Docker image leaves benchmarks/ out (.dockerignore): it serves, it does not measure.
        raise UsageError(
            "mtl bench needs the benchmarks of a repository checkout, and this installation has "
            "none (the Docker image leaves them out): run it from a clone after `make setup`"
        ) from None

    parser = Parser(prog="mtl bench table1", description=table1.__doc__,
                    formatter_class=_RawDescriptionHelpFormatter)
    table1.add_arguments(parser)
    bench_args = parser.parse_args(args.passed_on)
    bench_args.argv = args.argv
    return int(table1.main(bench_args))



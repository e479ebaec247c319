"""`python -m benchmarks.table1`: the same options as `mtl bench table1`."""

import argparse
import sys

import benchmarks.table1 as table1
from benchmarks.table1.cli import add_arguments, main

parser = argparse.ArgumentParser(prog="python -m benchmarks.table1", description=table1.__doc__)
add_arguments(parser)
sys.exit(main(parser.parse_args()))

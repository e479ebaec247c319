"""The `mtl` command. Expected mistakes print one line, `error: ...`: a mistake on the command line
exits 2, an error the service answers (client commands) exits 1. Heavy imports happen inside the
command that needs them, so `mtl --help` and the API never pay for torch.

The client commands (`datasets`, `classifiers`, `predict`, `jobs`, `keys list|revoke`) talk to a
running service through `mtl_client` (MTL_URL, MTL_API_KEY); they print what a script needs (an
id, a table) on stdout and everything else on stderr."""


from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from app.cli.bench import add_bench
from app.cli.classifiers import add_classifiers
from app.cli.common import CommandFailed, HelpFormatter, Parser, UsageError
from app.cli.ml import add_evaluate, add_pretrain
from app.cli.ops import add_keys, add_migrate, add_serve, add_worker, service_settings
from app.cli.remote import add_base_models, add_datasets, add_jobs, add_predict
from models.config import code_version

# Commands that run torch in this process: they use `MTL_TORCH_THREADS` threads, as the service does.
TRAINING_COMMANDS = ("pretrain", "evaluate", "bench")

COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_pretrain,
    add_evaluate,
    add_bench,
    add_serve,
    add_worker,
    add_migrate,
    add_keys,
    add_datasets,
    add_base_models,
    add_classifiers,
    add_predict,
    add_jobs,
]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="mtl", description="Meta-transfer learning service and tools",
                                     formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {code_version()}",
                        help="print the installed version and exit")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # `mtl worker` and `mtl bench table1` pass their options on to the program they start.
    args, passed_on = parser.parse_known_args(argv)
    if passed_on and not getattr(args, "passes_on", False):
        parser.error(f"unrecognized arguments: {' '.join(passed_on)}")
    args.passed_on = passed_on
    args.argv = argv  # recorded in checkpoint cards as the exact command
    from models.errors import MTLError

    try:
        if args.command in TRAINING_COMMANDS:
            from app.infra.threads import limit_threads

            limit_threads(service_settings().resolved_torch_threads)
        return int(args.handler(args))
    except (MTLError, UsageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except CommandFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `mtl ... | head`: the reader has gone. No traceback; stdout goes nowhere from here, so
        # flushing it at exit cannot raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())

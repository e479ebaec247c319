"""`python -m worker`: run a training worker (Celery, solo pool). `mtl worker` hands over to it.

Expected mistakes print one line and exit 2, like the `mtl` command."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from app.infra.broker import TASK_OF_KIND


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mtl worker",
        description="run a training worker (Celery, solo pool)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--queues", default="training,pretraining", help="comma-separated queues")
    p.add_argument("--loglevel", default="INFO", type=str.upper,
                   choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], help="log level")
    # Set by `mtl serve` for its embedded worker: exit when that process is gone, and say when
    # ready by writing this process's pid to a file.
    p.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--ready-file", type=Path, default=None,
                   help="write this process's pid here once it takes jobs (a health check reads it)")
    return p


def problem(queues: list[str]) -> str | None:
    """Why a worker with these queues and this environment would not work, or None."""
    unknown = [q for q in queues if q not in TASK_OF_KIND]
    if not queues or unknown:
        return f"unknown queue(s) {', '.join(unknown) or '(none)'}; known: {', '.join(TASK_OF_KIND)}"
    if "MTL_DATA_DIR" not in os.environ:
        # Without it a worker would quietly use ./var: another database and broker than the
        # API's, so it would never see a job.
        return (
            "set MTL_DATA_DIR (and MTL_DATABASE_URL and MTL_BROKER_URL in the distributed "
            "setup) to the API's values; a worker with its own ./var would never see a job"
        )
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    why = problem(queues)
    if why is not None:
        print(f"error: {why}", file=sys.stderr)
        return 2
    from pydantic import ValidationError

    from app.infra.settings import get_settings
    from worker.tasks import run_worker

    try:
        settings = get_settings()
    except ValidationError as exc:
        print(f"error: bad MTL_* settings: {exc.errors()[0]['msg']}", file=sys.stderr)
        return 2
    if args.parent_pid is not None:
        from app.infra.embedded import exit_with_parent

        exit_with_parent(args.parent_pid)
    run_worker(settings, queues, loglevel=args.loglevel, ready_file=args.ready_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())

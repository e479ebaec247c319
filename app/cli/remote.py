"""The client commands (`datasets`, `classifiers`, `predict`, `jobs`, `keys list|revoke`): a
running service through `mtl_client` (MTL_URL, MTL_API_KEY); what a script needs (an id, a
table) on stdout, everything else on stderr."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from app.cli.common import CommandFailed, Handler, UsageError, command, progress_bar

# ----------------------------------------------------------------------------- client

# The values of app.service.jobs.JobStatus, listed here so that `mtl --help` does not import the service's
# database code (tests/service/test_cli_help.py checks they match).
JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")


ClientCommand = Callable[[Any, argparse.Namespace], int]


def through_client(run: ClientCommand) -> Handler:
    """A handler calling `run(client, args)` with an `mtl_client.Client` (MTL_URL, MTL_API_KEY):
    the service's refusals become CommandFailed (exit 1), mistakes on this side UsageError."""

    def handler(args: argparse.Namespace) -> int:
        from mtl_client import ApiError, Client, ClientError

        try:
            with Client(getattr(args, "url", None), getattr(args, "api_key", None)) as mtl:
                return run(mtl, args)
        except ApiError as exc:
            raise CommandFailed(str(exc)) from None
        except ClientError as exc:
            raise UsageError(str(exc)) from None

    return handler


def client_command(sub: argparse._SubParsersAction, name: str, text: str, *,
                   json_flag: bool = True) -> argparse.ArgumentParser:
    """A command that calls the service: --url and --api-key override MTL_URL and MTL_API_KEY,
    and --json prints the service's answer instead of a table or a line."""
    p: argparse.ArgumentParser = command(sub, name, text)
    p.add_argument("--url", default=None,
                   help="the service (default: MTL_URL, else http://127.0.0.1:8000)")
    p.add_argument("--api-key", default=None,
                   help="the API key (default: MTL_API_KEY; a flag shows in the process list)")
    if json_flag:
        p.add_argument("--json", action="store_true", help="print the answer as JSON")
    return p


def print_json(value: Any) -> None:
    """A model, or a list of them, as JSON on stdout."""
    if isinstance(value, list):
        print(json.dumps([v.model_dump(mode="json") for v in value], indent=2))
    else:
        print(value.model_dump_json(indent=2))


def newest_first(items: list[Any]) -> list[Any]:
    return sorted(items, key=lambda i: i.created_at, reverse=True)


def note(text: str) -> None:
    """What a person reads; stdout is kept for what a script reads (an id, a table)."""
    print(text, file=sys.stderr)


def json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def add_datasets(sub: argparse._SubParsersAction) -> None:
    p = command(sub, "datasets", "datasets on a running service (MTL_URL, MTL_API_KEY)")
    datasets = p.add_subparsers(dest="datasets_command", required=True)
    up = client_command(datasets, "upload",
                        "upload a folder of class folders or a .zip of one; prints the dataset's id")
    up.add_argument("source", type=Path,
                    help="a folder whose subfolders are the class names, or a .zip of one")
    up.add_argument("--name", default=None,
                    help="the dataset's name (default: the folder's or the zip's name)")
    up.set_defaults(handler=through_client(_datasets_upload))
    add = client_command(datasets, "add", "add a folder of class folders (or a .zip of one) to a "
                         "dataset: to its classes or as new ones; prints the dataset's id")
    add.add_argument("dataset", help="the dataset's id")
    add.add_argument("source", type=Path, help="a folder whose subfolders are the class names, "
                     "or a .zip of one")
    add.set_defaults(handler=through_client(_datasets_add))
    ls = client_command(datasets, "list", "this key's datasets, newest first, as a table")
    ls.set_defaults(handler=through_client(_datasets_list))
    on_one(datasets, "show", "one dataset as JSON: its classes with counts and rejected files",
            "dataset", _datasets_show)
    on_one(datasets, "delete", "delete a dataset (classifiers trained on it keep working)",
            "dataset", _datasets_delete)


def _datasets_list(mtl: Any, args: argparse.Namespace) -> int:
    datasets = newest_first(mtl.datasets())
    if args.json:
        print_json(datasets)
        return 0
    print_table(["dataset", "name", "images", "classes", "created"],
           [[d.id, d.name, str(d.num_images), str(len(d.classes)),
             d.created_at.strftime("%Y-%m-%d %H:%M:%S")] for d in datasets])
    return 0


def _datasets_show(mtl: Any, args: argparse.Namespace) -> int:
    print_json(mtl.dataset(args.dataset))
    return 0


def _datasets_delete(mtl: Any, args: argparse.Namespace) -> int:
    mtl.delete_dataset(args.dataset)
    note(f"dataset {args.dataset} deleted")
    return 0


def add_base_models(sub: argparse._SubParsersAction) -> None:
    p = command(sub, "base-models", "the base models a classifier can start from")
    models = p.add_subparsers(dest="base_models_command", required=True)
    ls = client_command(models, "list", "the base models this key can use, as a table")
    ls.set_defaults(handler=through_client(_base_models_list))


def _base_models_list(mtl: Any, args: argparse.Namespace) -> int:
    models = mtl.base_models()
    if args.json:
        print_json(models)
        return 0
    print_table(["base model", "name", "algorithm", "image", "status", "default"],
           [[m.id, m.name, m.algorithm, f"{m.image_size}x{m.image_size}x{m.channels}", m.status,
             "yes" if m.is_default else ""] for m in models])
    return 0


def _datasets_upload(mtl: Any, args: argparse.Namespace) -> int:
    ds = mtl.upload_dataset(args.source, name=args.name)
    _dataset_note(ds, ds.rejected)
    if args.json:
        print_json(ds)
    else:
        print(ds.id)
    return 0


def _datasets_add(mtl: Any, args: argparse.Namespace) -> int:
    answer = mtl.add_images(args.dataset, args.source)
    note(f"added {answer.added} images")
    _dataset_note(answer.dataset, answer.rejected)
    if args.json:
        print_json(answer)
    else:
        print(answer.dataset.id)
    return 0


def _dataset_note(ds: Any, rejected: list[Any]) -> None:
    counts = ", ".join(f"{c.name}: {c.count}" for c in ds.classes[:10])
    more = f", and {len(ds.classes) - 10} more" if len(ds.classes) > 10 else ""
    note(f"dataset {ds.id} '{ds.name}': {ds.num_images} images in {len(ds.classes)} classes "
         f"({counts}{more})")
    for r in rejected:
        note(f"warning: left out {r.file}: {r.reason}")


def on_one(sub: argparse._SubParsersAction, name: str, help: str, what: str,
            run: ClientCommand) -> None:
    """A client command on one resource given by its id (`args.<what>`)."""
    p = client_command(sub, name, help)
    p.add_argument(what, help=f"the {what}'s id")
    p.set_defaults(handler=through_client(run))


def follow_job(mtl: Any, job_id: str, timeout: float | None) -> Any:
    """Wait for a job with a progress bar fed by its progress; Ctrl-C stops waiting only."""
    bar = progress_bar(0, "queued")

    def on_progress(job: Any) -> None:
        if job.progress.total_steps and bar.total != job.progress.total_steps:
            bar.total = job.progress.total_steps
        bar.set_description_str(job.phase or job.status, refresh=False)
        if job.progress.loss is not None:
            bar.set_postfix(loss=f"{job.progress.loss:.3f}", refresh=False)
        bar.update(job.progress.step - bar.n)

    try:
        return mtl.wait_for_job(job_id, progress=on_progress, timeout=timeout)
    except KeyboardInterrupt:
        note(f"stopped waiting; job {job_id} goes on (mtl jobs show {job_id}, "
              f"mtl jobs cancel {job_id})")
        raise
    finally:
        bar.close()


def add_predict(sub: argparse._SubParsersAction) -> None:
    p = client_command(sub, "predict", "classify images with a trained classifier; prints the "
                       "top labels of each (MTL_URL, MTL_API_KEY)", json_flag=False)
    p.add_argument("classifier", help="the classifier's id")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files")
    p.add_argument("--top-k", type=int, default=3, help="labels to show for each image")
    p.add_argument("--json", action="store_true",
                   help="print the service's answer as JSON instead of a table")
    p.add_argument("--wait", action="store_true",
                   help="if the classifier is still training, wait until it is ready (a progress "
                        "bar), then predict")
    p.add_argument("--version", type=int, default=None,
                   help="the classifier's version to ask (default: its newest ready one)")
    p.set_defaults(handler=through_client(_predict_images))


def _predict_images(mtl: Any, args: argparse.Namespace) -> int:
    if args.top_k < 1:
        raise UsageError("--top-k must be at least 1")
    if args.wait:
        clf = mtl.classifier(args.classifier)
        if clf.status in ("queued", "training") and clf.job_id:
            follow_job(mtl, clf.job_id, None)
    answer = mtl.predict(args.classifier, args.images, top_k=args.top_k, version=args.version)
    if args.json:
        print(answer.model_dump_json(indent=2, exclude_none=True))
        return 0
    rows = []
    for image, result in zip(args.images, answer.results, strict=True):
        if result.error is not None:
            rows.append([str(image), f"error: {result.error}", "", ""])
            continue
        score = "" if result.score is None else f"{result.score:.3f}" + (
            " unknown" if result.unknown else "")
        for rank, p in enumerate(result.predictions or []):
            rows.append([str(image) if rank == 0 else "", p.label, f"{p.probability:.3f}",
                         score if rank == 0 else ""])
    # score: likeness to the classifier's classes; "unknown" below the classifier's threshold.
    print_table(["image", "label", "probability", "score"], rows)
    return 0


def add_jobs(sub: argparse._SubParsersAction) -> None:
    p = command(sub, "jobs", "training and pretraining jobs on a running service "
                 "(MTL_URL, MTL_API_KEY)")
    jobs = p.add_subparsers(dest="jobs_command", required=True)
    ls = client_command(jobs, "list", "the newest jobs, as a table")
    ls.add_argument("--status", choices=JOB_STATUSES, default=None,
                    help="only jobs with this status (default: any)")
    ls.add_argument("--tenant", default=None,
                    help="admin keys: only this tenant's jobs (default: every tenant's)")
    ls.add_argument("--limit", type=int, default=20, help="at most this many jobs (1-500)")
    ls.set_defaults(handler=through_client(_jobs_list))
    on_one(jobs, "show", "one job as JSON: status, phase, progress and outcome", "job", _jobs_show)
    on_one(jobs, "cancel", "cancel a job: a queued one at once, a running one at its next step",
            "job", _jobs_cancel)


def _jobs_list(mtl: Any, args: argparse.Namespace) -> int:
    page = mtl.jobs(limit=args.limit, status=args.status, tenant=args.tenant)
    if args.json:
        print_json(page.data)
        return 0
    print_table(["job", "kind", "status", "phase", "step", "created"],
           [[j.id, j.kind, j.status, j.phase or "", f"{j.progress.step}/{j.progress.total_steps}",
             j.created_at.strftime("%Y-%m-%d %H:%M:%S")] for j in page.data])
    if page.next_cursor is not None:
        note(f"(the newest {len(page.data)}; more with --limit)")
    return 0


def _jobs_show(mtl: Any, args: argparse.Namespace) -> int:
    print_json(mtl.job(args.job))
    return 0


def _jobs_cancel(mtl: Any, args: argparse.Namespace) -> int:
    job = mtl.cancel_job(args.job)
    if args.json:
        print_json(job)
        return 0
    print(f"job {job.id}: {job.status}"
          + (" (it stops at its next step)" if job.status == "running" else ""))
    return 0


def list_keys(mtl: Any, args: argparse.Namespace) -> int:
    keys = newest_first(mtl.api_keys())
    if args.json:
        print_json(keys)
        return 0
    print_table(["prefix", "tenant", "scope", "created"],
           [[k.prefix, k.tenant, k.scope, k.created_at.strftime("%Y-%m-%d %H:%M:%S")]
            for k in keys])
    return 0


def revoke_key(mtl: Any, args: argparse.Namespace) -> int:
    mtl.revoke_api_key(args.prefix)
    print(f"revoked the key with prefix {args.prefix}")
    return 0



"""`mtl classifiers`: the client commands on classifiers (create, list, show, holdout, delete,
export), against a running service."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from app.cli.common import CommandFailed, command
from app.cli.remote import (
    client_command,
    follow_job,
    json_object,
    newest_first,
    note,
    on_one,
    print_json,
    print_table,
    through_client,
)


def add_classifiers(sub: argparse._SubParsersAction) -> None:
    p = command(sub, "classifiers", "classifiers on a running service (MTL_URL, MTL_API_KEY)")
    classifiers = p.add_subparsers(dest="classifiers_command", required=True)
    c = client_command(classifiers, "create",
                       "train a classifier on a dataset; prints the classifier's id")
    c.add_argument("--dataset", required=True, help="the dataset's id (mtl datasets upload prints it)")
    c.add_argument("--name", default=None, help="the classifier's name (default: the dataset's)")
    c.add_argument("--base-model", default=None,
                   help="the base model's id, e.g. handwriting or natural (default: the job "
                        "scores every ready base model on the dataset and trains from the best)")
    c.add_argument("--params", type=json_object, default=None,
                   help="""training parameters as a JSON object, e.g. '{"steps": 50}' (default: """
                        "the base model card's)")
    c.add_argument("--wait", action="store_true",
                   help="follow the training job with a progress bar; exit 1 unless it succeeds")
    c.add_argument("--timeout", type=float, default=None,
                   help="with --wait: stop waiting after this many seconds (default: until the "
                        "job finishes)")
    c.set_defaults(handler=through_client(_classifiers_create))
    rt = client_command(classifiers, "retrain", "train a new version of a classifier on its "
                        "dataset as it is now; prints the new version's id")
    rt.add_argument("classifier", help="the classifier's id (any of its versions)")
    rt.add_argument("--params", type=json_object, default=None,
                    help="parameters to change, as a JSON object (default: the newest version's)")
    rt.add_argument("--wait", action="store_true",
                    help="follow the job with a progress bar; exit 1 unless it succeeds")
    rt.set_defaults(handler=through_client(_classifiers_retrain), timeout=None)
    vs = client_command(classifiers, "versions", "a classifier's versions side by side, as a "
                        "table: version, status, holdout accuracy, classes, created")
    vs.add_argument("classifier", help="the classifier's id (any of its versions)")
    vs.set_defaults(handler=through_client(_classifiers_versions))
    ls = client_command(classifiers, "list", "this key's classifiers, newest first, as a table")
    ls.set_defaults(handler=through_client(_classifiers_list))
    on_one(classifiers, "show", "one classifier as JSON: status, labels, parameters and "
            "holdout metrics", "classifier", _classifiers_show)
    ho = client_command(classifiers, "holdout", "a ready classifier's holdout images as a table: "
                        "file, true label, predicted label, probability")
    ho.add_argument("classifier", help="the classifier's id")
    ho.add_argument("--mistakes", action="store_true", help="only the images it got wrong")
    ho.set_defaults(handler=through_client(_classifiers_holdout))
    on_one(classifiers, "delete", "delete a classifier (its training job is cancelled if still "
            "running)", "classifier", _classifiers_delete)
    ex = client_command(classifiers, "export", "save a classifier as a zip to run without the "
                        "service (the model, labels.json, preprocessing.json, a README with example "
                        "code)", json_flag=False)
    ex.add_argument("classifier", help="the classifier's id")
    ex.add_argument("--format", choices=["onnx", "torchscript", "safetensors"], default="onnx",
                    help="onnx or torchscript take float32 images (N, C, H, W) in [0, 1] and answer "
                         "probabilities; safetensors is the service's own checkpoint")
    ex.add_argument("-o", "--output", type=Path, default=None,
                    help="the zip's path (default: classifier-ID-FORMAT.zip here)")
    ex.set_defaults(handler=through_client(_classifiers_export))


def _choice_line(choice: Any) -> str:
    """How the service chose the base model, in one line: each candidate's proxy score."""
    scores = ", ".join(f"{c.base_model_id} {'-' if c.score is None else f'{100 * c.score:.0f}%'}"
                       for c in choice.candidates)
    return (f"base model {choice.chosen}: the best of the ready base models on this dataset "
            f"(leave-one-out accuracy of the prototype head: {scores})")


def _classifiers_list(mtl: Any, args: argparse.Namespace) -> int:
    classifiers = newest_first(mtl.classifiers())
    if args.json:
        print_json(classifiers)
        return 0
    rows = []
    for c in classifiers:
        accuracy = "" if c.metrics is None else f"{100 * c.metrics.holdout_accuracy:.1f}%"
        rows.append([c.id, c.name, c.status, c.base_model_id, str(len(c.labels)), accuracy,
                     c.created_at.strftime("%Y-%m-%d %H:%M:%S")])
    print_table(["classifier", "name", "status", "base model", "classes", "holdout", "created"], rows)
    return 0


def _classifiers_show(mtl: Any, args: argparse.Namespace) -> int:
    print_json(mtl.classifier(args.classifier))
    return 0


def _classifiers_holdout(mtl: Any, args: argparse.Namespace) -> int:
    rows = mtl.holdout(args.classifier, mistakes=args.mistakes)
    if args.json:
        print_json(rows)
        return 0
    print_table(["image", "label", "predicted", "probability"],
           [[r.filename, r.label, r.predicted, f"{r.probability:.3f}"] for r in rows])
    right = sum(r.correct for r in rows)
    note(f"{len(rows)} holdout images" + ("" if args.mistakes else f", {right} right"))
    return 0


def _classifiers_delete(mtl: Any, args: argparse.Namespace) -> int:
    mtl.delete_classifier(args.classifier)
    note(f"classifier {args.classifier} deleted")
    return 0


def _classifiers_export(mtl: Any, args: argparse.Namespace) -> int:
    out = args.output or Path(f"classifier-{args.classifier}-{args.format}.zip")
    path = mtl.export_classifier(args.classifier, out, fmt=args.format)
    note(f"classifier {args.classifier} exported as {args.format}")
    print(path)
    return 0


def _classifiers_create(mtl: Any, args: argparse.Namespace) -> int:
    name = args.name or mtl.dataset(args.dataset).name
    created = mtl.create_classifier(args.dataset, name=name, base_model_id=args.base_model,
                                    params=args.params)
    note(f"classifier {created.id}: training job {created.job_id} {created.status}")
    return _created(mtl, args, created)


def _classifiers_retrain(mtl: Any, args: argparse.Namespace) -> int:
    created = mtl.create_version(args.classifier, params=args.params)
    version = mtl.classifier(created.id).version
    note(f"classifier {created.id}: version {version}, training job {created.job_id} "
         f"{created.status}")
    return _created(mtl, args, created)


def _classifiers_versions(mtl: Any, args: argparse.Namespace) -> int:
    versions = mtl.versions(args.classifier)
    if args.json:
        print_json(versions)
        return 0
    ready = [v for v in versions if v.status == "ready"]
    serving = ready[-1].version if ready else None
    print_table(["version", "classifier", "status", "holdout", "classes", "created", "predict"],
                [[str(v.version), v.id, v.status,
                  "" if v.metrics is None else f"{100 * v.metrics.holdout_accuracy:.1f}%",
                  str(len(v.labels)), v.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                  "answers" if v.version == serving else ""] for v in versions])
    return 0


def _created(mtl: Any, args: argparse.Namespace, created: Any) -> int:
    """After create or retrain: follow the job with --wait, then print the id (or JSON)."""
    if args.wait:
        job = follow_job(mtl, created.job_id, args.timeout)
        if job.status != "succeeded":
            raise CommandFailed(f"job {job.id} of classifier {created.id} {job.status}"
                                + (f": {job.error}" if job.error else ""))
        clf = mtl.classifier(created.id)
        if clf.base_model_choice is not None:
            note(_choice_line(clf.base_model_choice))
        metrics = clf.metrics
        if metrics is not None:
            note(f"classifier {created.id} is ready: holdout accuracy "
                  f"{100 * metrics.holdout_accuracy:.1f}%")
    if args.json:
        print_json(mtl.classifier(created.id))
    else:
        print(created.id)
    return 0

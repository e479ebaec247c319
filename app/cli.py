"""The `mtl` command. Expected mistakes print one line and exit 2; heavy imports happen inside
the command that needs them, so `mtl --help` and the API never pay for torch."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

Handler = Callable[[argparse.Namespace], int]


class UsageError(Exception):
    """A command-line mistake: printed as one line, exit status 2."""


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _progress_bar(total: int, desc: str) -> Any:
    from tqdm import tqdm

    # Logs (no terminal) get a line every 30 s instead of a redraw several times a second.
    tty = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit="it", dynamic_ncols=True, file=sys.stderr,
                mininterval=0.1 if tty else 30.0)


# ----------------------------------------------------------------------------- pretrain


def _add_pretrain(sub: argparse._SubParsersAction) -> None:
    from_defaults = _pretrain_defaults()
    p = sub.add_parser("pretrain", help="train a base model on base classes",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", required=True, type=Path,
                   help="Omniglot .npz file, or a folder of class subfolders")
    p.add_argument("--algorithm", default=from_defaults["algorithm"],
                   help="transfer, protonet, reptile, maml, fomaml, mtl-reptile, mtl-maml, mtl-fomaml, mtl-protonet")
    p.add_argument("--out", required=True, type=Path, help="output folder for the checkpoint")
    p.add_argument("--backbone", default=from_defaults["backbone"], help="conv4 or resnet12")
    for name, typ in [("filters", int), ("image_size", int), ("channels", int), ("ways", int),
                      ("shots", int), ("queries", int), ("meta_batch", int), ("inner_steps", int),
                      ("inner_batch", int), ("inner_lr", float), ("outer_lr", float),
                      ("transfer_lr", float), ("beta", float), ("iterations", int),
                      ("protonet_lr", float), ("transfer_batch", int), ("momentum", float),
                      ("weight_decay", float), ("cosine_scale", float), ("seed", int)]:
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=typ, default=from_defaults[name])
    p.add_argument("--combine", choices=["paper", "authors"], default=from_defaults["combine"])
    p.add_argument("--meta-schedule", choices=["constant", "linear"], default=from_defaults["meta_schedule"],
                   help="the meta step's multiplier over training (linear: annealed to 0, as Reptile)")
    p.add_argument("--transfer-schedule", choices=["constant", "cosine"],
                   default=from_defaults["transfer_schedule"], help="the transfer learning rate's decay")
    p.add_argument("--transfer-head", choices=["zeros", "standard", "cosine"],
                   default=from_defaults["transfer_head"], help="the C_base-way transfer head's kind and init")
    p.add_argument("--replacement", action="store_true",
                   help="draw a task's classes with replacement (as the authors' code)")
    p.add_argument("--augment", action="store_true", help="random flips and shifts")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--checkpoint-every", type=float, default=300.0, help="seconds between checkpoints")
    p.set_defaults(handler=_pretrain)


def _pretrain_defaults() -> dict[str, Any]:
    from dataclasses import fields

    from models.config import PretrainConfig

    skip = {"replacement", "augment"}
    return {f.name: f.default for f in fields(PretrainConfig) if f.name not in skip}


def _pretrain(args: argparse.Namespace) -> int:
    from models.data import load_dataset
    from models.training import PretrainConfig, Progress, pretrain

    fields = _pretrain_defaults().keys()
    config = PretrainConfig(replacement=args.replacement, augment=args.augment,
                            **{k: getattr(args, k) for k in fields if hasattr(args, k)})
    data = load_dataset(args.dataset, image_size=config.image_size, channels=config.channels)
    for file, reason in data.rejected:
        print(f"warning: skipped {file}: {reason}", file=sys.stderr)
    command = "mtl " + " ".join(args.argv)
    bar = _progress_bar(config.iterations, f"pretrain {config.algorithm}")

    def on_progress(p: Progress) -> None:
        bar.set_postfix(loss=f"{p.loss:.3f}", refresh=False)
        bar.update(p.iteration - bar.n)

    try:
        result = pretrain(config, data, device=args.device, out_dir=args.out, resume=args.resume,
                          checkpoint_every_s=args.checkpoint_every, progress=on_progress,
                          extra_card={"command": command})
    finally:
        bar.close()
    t = result.card["training"]
    print(f"wrote {args.out}/model.safetensors and model.json "
          f"({t['iterations']} iterations, {t['seconds']:.0f} s, {data.num_classes} base classes)")
    return 0


# ----------------------------------------------------------------------------- evaluate


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="episodic evaluation of a base model on unseen classes",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, type=Path, help="folder written by mtl pretrain")
    p.add_argument("--dataset", required=True, type=Path, action="append",
                   help="unseen classes (.npz or folder); repeat to combine, e.g. val and test")
    p.add_argument("--ways", type=_int_list, default=[5], help="e.g. 5,20,35")
    p.add_argument("--shots", type=_int_list, default=[1, 5], help="e.g. 1,5")
    p.add_argument("--episodes", type=int, default=600)
    p.add_argument("--queries", type=int, default=None,
                   help="query images per class (default 15, or what the class size allows)")
    p.add_argument("--adapt-steps", type=int, default=None, help="default: the checkpoint's card")
    p.add_argument("--adapt-lr", type=float, default=None, help="default: the checkpoint's card")
    p.add_argument("--adapt-batch", type=int, default=None, help="0: all support images")
    p.add_argument("--adapt-min-epochs", type=float, default=None,
                   help="take more steps where needed to show each support image this many times")
    p.add_argument("--head-init", choices=["zeros", "prototype", "meta"], default=None)
    p.add_argument("--prototype-scale", type=float, default=None,
                   help="the prototype head's logit scale (default: the checkpoint's card)")
    p.add_argument("--bn-stats", choices=["frozen", "support"], default=None,
                   help="batch-norm statistics while fine-tuning: the base model's, or the support set's")
    p.add_argument("--transductive", action="store_true",
                   help="batch-norm statistics from each episode's query batch (as the paper's code)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--record", metavar="NAME", default=None,
                   help="also store the results in the checkpoint's card as metrics[NAME]")
    p.set_defaults(handler=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    from models.adaptation import AdaptConfig, evaluate
    from models.checkpoint import load_base_model
    from models.data import concat, load_dataset
    from models.training import resolve_device

    device = resolve_device(args.device)
    net, card = load_base_model(args.checkpoint, device=device)
    data = concat([load_dataset(path, image_size=card["image_size"], channels=card["channels"])
                   for path in args.dataset])
    config = AdaptConfig.from_card(card, steps=args.adapt_steps, lr=args.adapt_lr,
                                   batch_size=args.adapt_batch, min_epochs=args.adapt_min_epochs,
                                   head_init=args.head_init, prototype_scale=args.prototype_scale,
                                   bn_stats=args.bn_stats)
    smallest = min(data.class_counts())
    results = []
    started = time.perf_counter()
    for ways in args.ways:
        if ways > data.num_classes:
            raise UsageError(f"{ways}-way needs {ways} classes; the data has {data.num_classes}")
        for shots in args.shots:
            queries = args.queries if args.queries is not None else min(15, smallest - shots)
            if queries < 1 or shots + queries > smallest:
                raise UsageError(f"{shots} shots leave no query images: the smallest class of "
                                 f"the data has {smallest} images")
            bar = _progress_bar(args.episodes, f"{ways}-way {shots}-shot")

            def on_episode(done: int, total: int, acc: float, bar: Any = bar) -> None:
                bar.update(1)
                bar.set_postfix(acc=f"{acc:.3f}", refresh=False)

            try:
                cell = evaluate(net, data, ways=ways, shots=shots, queries=queries,
                                episodes=args.episodes, config=config, seed=args.seed,
                                transductive=args.transductive, device=device, progress=on_episode)
            finally:
                bar.close()
            results.append(cell.as_dict())
    report = {
        "results": results,
        "checkpoint": str(args.checkpoint),
        "config": {"dataset": [str(p) for p in args.dataset], "algorithm": card.get("algorithm"),
                   "combine": card.get("combine"), "adaptation": vars(config),
                   "transductive": args.transductive, "seed": args.seed, "device": str(device),
                   "seconds": round(time.perf_counter() - started, 1)},
    }
    mode = "transductive" if args.transductive else "non-transductive"
    print(f"{card.get('algorithm')} on {' + '.join(map(str, args.dataset))} ({mode}; adaptation {vars(config)})")
    print(f"{'ways':>5} {'shots':>5} {'queries':>7} {'episodes':>8} {'accuracy':>9} {'ci95':>7}")
    for r in results:
        print(f"{r['ways']:>5} {r['shots']:>5} {r['queries']:>7} {r['episodes']:>8} "
              f"{100 * r['accuracy']:>8.2f}% {100 * r['ci95']:>6.2f}%")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.record:
        from models.checkpoint import record_metrics

        record_metrics(args.checkpoint, args.record,
                       {**report, "command": "mtl " + " ".join(args.argv)})
    return 0


# ----------------------------------------------------------------------------- service


def _service_settings() -> Any:
    from pydantic import ValidationError

    from app.settings import get_settings

    try:
        return get_settings()
    except ValidationError as exc:
        raise UsageError(f"bad MTL_* settings: {exc.errors()[0]['msg']}") from None


def _add_migrate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "migrate", help="create or upgrade the service database (alembic upgrade head)"
    )
    p.set_defaults(handler=_migrate)


def _migrate(args: argparse.Namespace) -> int:
    from app.bootstrap import initialize, migrate

    settings = _service_settings()
    migrate(settings)
    initialize(settings)
    print(f"database at revision head: {_redacted(settings.resolved_database_url)}")
    return 0


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="run the API, with one training worker beside it",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--no-worker",
        action="store_true",
        help="API only (distributed mode: workers run `mtl worker` elsewhere)",
    )
    p.add_argument(
        "--no-migrate",
        action="store_true",
        help="do not upgrade the database first (default: migrate on SQLite only)",
    )
    p.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    import os
    import signal

    import uvicorn

    from app.bootstrap import migrate
    from app.embedded import EmbeddedWorker
    from app.main import create_app

    settings = _service_settings()
    # Embedded SQLite is migrated here; a shared PostgreSQL is migrated by a one-shot `mtl migrate`.
    if not args.no_migrate and settings.resolved_database_url.startswith("sqlite"):
        migrate(settings)
    worker = None
    if not args.no_worker:
        # A worker that keeps dying stops the whole service (non-zero exit), as SIGTERM would.
        worker = EmbeddedWorker(settings, on_give_up=lambda: os.kill(os.getpid(), signal.SIGTERM))
        worker.start()

    def stop(signum: int, _frame: Any) -> None:
        raise SystemExit(0)

    # uvicorn re-raises the SIGTERM or SIGINT it caught once it has shut down; with these
    # handlers that ends in the `finally` below, so the worker is stopped instead of orphaned.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        # A console following a job holds an event stream open: without a limit, shutting
        # down would wait for every browser to go away.
        uvicorn.run(
            create_app(settings, embedded_worker=worker),
            host=args.host,
            port=args.port,
            timeout_graceful_shutdown=5,
        )
    except SystemExit:
        pass
    finally:
        if worker is not None:
            worker.stop()
    if worker is not None and worker.gave_up:
        print("error: the embedded worker kept dying; see its log above", file=sys.stderr)
        return 1
    return 0


def _add_worker(sub: argparse._SubParsersAction) -> None:
    # The worker is its own program (`python -m worker`, which owns its options); `mtl worker`
    # hands this process over to it, so the API's code never imports the worker's.
    p = sub.add_parser(
        "worker", help="run a training worker (Celery, solo pool): python -m worker", add_help=False
    )
    p.set_defaults(handler=_worker, passes_on=True)


def _worker(args: argparse.Namespace) -> int:
    os.execv(sys.executable, [sys.executable, "-m", "worker", *args.passed_on])


def _add_keys(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keys", help="manage API keys")
    keys = p.add_subparsers(dest="keys_command", required=True)
    c = keys.add_parser("create", help="create a key and print it (shown only once)")
    c.add_argument("--tenant", required=True)
    c.add_argument("--admin", action="store_true", help="an admin key (may use /v1/admin)")
    c.set_defaults(handler=_keys_create)


def _keys_create(args: argparse.Namespace) -> int:
    import re

    from sqlalchemy.exc import OperationalError, ProgrammingError

    from app.db import session_scope
    from app.security import create_api_key

    if not re.fullmatch(r"[A-Za-z0-9_.@-]{1,200}", args.tenant):
        raise UsageError("--tenant must be 1-200 letters, digits or _.@-")
    settings = _service_settings()
    try:
        with session_scope(settings.resolved_database_url) as session:
            key, _ = create_api_key(session=session, tenant=args.tenant, admin=args.admin)
    except (OperationalError, ProgrammingError) as exc:
        raise UsageError(f"cannot write the key (run `mtl migrate` first?): {exc.orig}") from None
    print(key)
    return 0


# ----------------------------------------------------------------------------- main

def _add_bench(sub: argparse._SubParsersAction) -> None:
    # A thin entry: the benchmark's own options are parsed by `benchmarks.table1` (the same as
    # `python -m benchmarks.table1`), imported only when this command runs.
    p = sub.add_parser("bench", help="benchmarks whose reports are committed under benchmarks/results")
    bench = p.add_subparsers(dest="bench", required=True)
    table1 = bench.add_parser(
        "table1", help="the paper's Table 1 on unseen classes, all methods", add_help=False
    )
    table1.set_defaults(handler=_bench_table1, passes_on=True)


def _bench_table1(args: argparse.Namespace) -> int:
    from benchmarks import table1

    parser = argparse.ArgumentParser(prog="mtl bench table1", description=table1.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    table1.add_arguments(parser)
    bench_args = parser.parse_args(args.passed_on)
    bench_args.argv = args.argv
    return int(table1.main(bench_args))


# Commands that run torch in this process: they use `MTL_TORCH_THREADS` threads, as the service does.
TRAINING_COMMANDS = ("pretrain", "evaluate", "bench")

COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_pretrain,
    _add_evaluate,
    _add_bench,
    _add_serve,
    _add_worker,
    _add_migrate,
    _add_keys,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mtl", description="Meta-transfer learning service and tools")
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
            from app.threads import limit_threads

            limit_threads(_service_settings().resolved_torch_threads)
        return int(args.handler(args))
    except (MTLError, UsageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

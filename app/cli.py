"""The `mtl` command. Expected mistakes print one line, `error: ...`: a mistake on the command line
exits 2, an error the service answers (client commands) exits 1. Heavy imports happen inside the
command that needs them, so `mtl --help` and the API never pay for torch.

The client commands (`datasets`, `classifiers`, `predict`, `jobs`, `keys list|revoke`) talk to a
running service through `app.client` (MTL_URL, MTL_API_KEY); they print what a script needs (an
id, a table) on stdout and everything else on stderr."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, cast

Handler = Callable[[argparse.Namespace], int]


class UsageError(Exception):
    """A command-line mistake: printed as one line, exit status 2."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, as ArgumentDefaultsHelpFormatter does, unless
    the help already says what the default is (`default: the checkpoint's card` reads better than
    `(default: None)`); a required option says so instead."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.required and action.option_strings:
            return f"{text} (required)"
        if "default" in text.lower() or not action.option_strings:
            return text
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """A mistake in the arguments is one line, `error: ...`, exit status 2, as every expected
    mistake of this command is (subcommands' parsers are of this class too)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def _one_of(what: str, values: Sequence[str]) -> Callable[[str], str]:
    """An argument type for `choices=values` that names what was wrong as the ML core does."""

    def check(text: str) -> str:
        if text not in values:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {text!r}; known: {', '.join(values)}")
        return text

    check.__name__ = what
    return check


def _setting_int(field: str) -> Callable[[str], int]:
    """An argument type for an integer Settings field, bounded as the field is (one source for
    the bounds, so the flag and the environment variable refuse the same values)."""
    from annotated_types import Ge, Le

    from app.infra.settings import Settings

    metadata = Settings.model_fields[field].metadata
    low = next((cast(int, m.ge) for m in metadata if isinstance(m, Ge)), None)
    high = next((cast(int, m.le) for m in metadata if isinstance(m, Le)), None)

    def check(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {low} to {high}, got {value}")
        return value

    check.__name__ = field
    return check


def _command(sub: argparse._SubParsersAction, name: str, text: str, **kwargs: Any) -> Any:
    """A subcommand parser with `text` as its one-line help and description."""
    return sub.add_parser(name, help=text, description=text, formatter_class=HelpFormatter,
                          **kwargs)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


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


# One line of help for every numeric option of `mtl pretrain` (a PretrainConfig field each).
PRETRAIN_HELP: dict[str, tuple[type, str]] = {
    "filters": (int, "the backbone's width (conv4: channels of each block; resnet12: of the first)"),
    "image_size": (int, "images are resized to this many pixels a side"),
    "ways": (int, "classes in each task (N-way)"),
    "shots": (int, "images per class for the inner loop (MAML's support set)"),
    "queries": (int, "more images per class: MAML's query set; Reptile trains on them too"),
    "meta_batch": (int, "tasks in each iteration"),
    "inner_steps": (int, "SGD steps of the inner loop on each task"),
    "inner_batch": (int, "images in each inner step (0: all of the task's images)"),
    "inner_lr": (float, "the inner loop's SGD learning rate"),
    "outer_lr": (float, "the meta step's size (times the --meta-schedule)"),
    "transfer_lr": (float, "the transfer step's SGD learning rate"),
    "beta": (float, "--combine paper: the meta-learner's weight; authors: the transfer term's "
                    "(fixed to 0 or 1 by the plain algorithms)"),
    "iterations": (int, "training iterations (one meta step and one transfer step each)"),
    "protonet_lr": (float, "Adam's learning rate for ProtoNet's direction (times --outer-lr)"),
    "transfer_batch": (int, "images in each transfer step, drawn from all base images "
                            "(0: the sampled tasks' own images)"),
    "momentum": (float, "SGD momentum of the transfer step"),
    "weight_decay": (float, "weight decay of the transfer step"),
    "cosine_scale": (float, "logit scale of a cosine transfer head"),
    "transfer_ghost_batches": (int, "parts of the transfer batch, each with its own batch-norm "
                                    "statistics (spread over --nproc processes; results depend "
                                    "on it, never on --nproc)"),
    "seed": (int, "seeds random, numpy and torch: the tasks, the order and the initialisation"),
}


def _add_pretrain(sub: argparse._SubParsersAction) -> None:
    # models.config and app.service.params are torch-free: the algorithms are the real list, the
    # backbones and channels the values the API bounds them by (the backbones are tested against
    # the registry), the other enumerated fields their Literal types' values.
    import typing

    from app.service.params import PRETRAIN_BOUNDS, Choice
    from models.config import ALGORITHMS, PretrainConfig

    hints = typing.get_type_hints(PretrainConfig)
    choices = {name: typing.get_args(hints[name])
               for name in ("combine", "meta_schedule", "transfer_schedule", "transfer_head", "precision")}
    for name in ("backbone", "channels"):
        bound = PRETRAIN_BOUNDS[name]
        assert isinstance(bound, Choice)
        choices[name] = bound.values
    from_defaults = _pretrain_defaults()
    p = _command(sub, "pretrain", "train a base model on base classes")
    p.add_argument("--dataset", required=True, type=Path,
                   help="Omniglot .npz file, or a folder of class subfolders")
    p.add_argument("--algorithm", choices=list(ALGORITHMS), type=_one_of("algorithm", list(ALGORITHMS)),
                   default=from_defaults["algorithm"],
                   help="transfer learning, a meta-learner, or MTL (mtl-*: both, weighted by --beta)")
    p.add_argument("--out", required=True, type=Path, help="output folder for the checkpoint")
    for name, text in [
        ("backbone", "the network under both heads"),
        ("channels", "1: greyscale, 3: RGB"),
        ("combine", "how the meta and transfer updates combine (the README's table)"),
        ("meta_schedule", "the meta step's multiplier over training (linear: annealed to 0, as Reptile)"),
        ("transfer_schedule", "the transfer learning rate's decay"),
        ("transfer_head", "the C_base-way transfer head's kind and init"),
        ("precision", "bf16: the supervised step and ProtoNet's episodes under bf16 autocast "
                      "(Reptile/MAML/FOMAML inner loops and the weights stay fp32; fp32 with a "
                      "notice where the hardware lacks bf16)"),
    ]:
        typ = int if name == "channels" else _one_of(name.replace("_", " "), choices[name])
        p.add_argument("--" + name.replace("_", "-"), dest=name, choices=choices[name],
                       type=typ, default=from_defaults[name], help=text)
    for name, (typ, text) in PRETRAIN_HELP.items():
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=typ,
                       default=from_defaults[name], help=text)
    p.add_argument("--replacement", action="store_true",
                   help="draw a task's classes with replacement (as the authors' code)")
    p.add_argument("--augment", action="store_true", help="random flips and shifts")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda[:N]")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--checkpoint-every", type=float, default=300.0, help="seconds between checkpoints")
    p.add_argument("--nproc", dest="processes", type=int, default=1,
                   help="processes (torch.distributed: one GPU each, or gloo on CPU with the "
                        "threads divided); the result equals one process's")
    p.set_defaults(handler=_pretrain)


def _pretrain_defaults() -> dict[str, Any]:
    from dataclasses import fields

    from models.config import PretrainConfig

    skip = {"replacement", "augment"}
    return {f.name: f.default for f in fields(PretrainConfig) if f.name not in skip}


def _pretrain(args: argparse.Namespace) -> int:
    from models.data import load_dataset
    from models.distributed import launch, spread_warnings
    from models.training import PretrainConfig, Progress

    fields = _pretrain_defaults().keys()
    config = PretrainConfig(replacement=args.replacement, augment=args.augment,
                            **{k: getattr(args, k) for k in fields if hasattr(args, k)})
    data = load_dataset(args.dataset, image_size=config.image_size, channels=config.channels)
    for file, reason in data.rejected:
        print(f"warning: skipped {file}: {reason}", file=sys.stderr)
    for text in spread_warnings(config, config.processes, args.device):
        print(f"warning: {text}", file=sys.stderr)
    command = "mtl " + " ".join(args.argv)
    bar = _progress_bar(config.iterations, f"pretrain {config.algorithm}")

    def on_progress(p: Progress) -> None:
        bar.set_postfix(loss=f"{p.loss:.3f}", refresh=False)
        bar.update(p.iteration - bar.n)

    try:
        result = launch(config, data, processes=config.processes, device=args.device, out_dir=args.out,
                        resume=args.resume, checkpoint_every_s=args.checkpoint_every,
                        progress=on_progress, extra_card={"command": command})
    finally:
        bar.close()
    t = result.card["training"]
    print(f"wrote {args.out}/model.safetensors and model.json "
          f"({t['iterations']} iterations, {t['seconds']:.0f} s, {data.num_classes} base classes)")
    return 0


# ----------------------------------------------------------------------------- evaluate


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    from models.config import BN_STATS, HEAD_INITS, PRECISIONS  # torch-free

    p = _command(sub, "evaluate", "episodic evaluation of a base model on unseen classes")
    p.add_argument("--checkpoint", required=True, type=Path, help="folder written by mtl pretrain")
    p.add_argument("--dataset", required=True, type=Path, action="append",
                   help="unseen classes (.npz or folder); repeat to combine, e.g. val and test")
    p.add_argument("--ways", type=_int_list, default="5", help="classes per episode, e.g. 5,20,35")
    p.add_argument("--shots", type=_int_list, default="1,5",
                   help="labelled images per class, e.g. 1,5")
    p.add_argument("--episodes", type=int, default=600, help="episodes for each ways x shots cell")
    p.add_argument("--queries", type=int, default=None,
                   help="query images per class (default 15, or what the class size allows)")
    p.add_argument("--adapt-steps", type=int, default=None,
                   help="fine-tuning steps (default: the checkpoint's card)")
    p.add_argument("--adapt-lr", type=float, default=None,
                   help="fine-tuning learning rate (default: the checkpoint's card)")
    p.add_argument("--adapt-batch", type=int, default=None,
                   help="support images per step, 0: all (default: the checkpoint's card)")
    p.add_argument("--adapt-min-epochs", type=float, default=None,
                   help="take more steps where needed to show each support image this many times "
                        "(default: the checkpoint's card)")
    p.add_argument("--head-init", choices=HEAD_INITS, default=None,
                   help="the new head's initial weights (default: the checkpoint's card)")
    p.add_argument("--prototype-scale", type=float, default=None,
                   help="the prototype head's logit scale (default: the checkpoint's card)")
    p.add_argument("--bn-stats", choices=BN_STATS, default=None,
                   help="batch-norm statistics while fine-tuning: the base model's, or the support "
                        "set's (default: the checkpoint's card)")
    p.add_argument("--transductive", action="store_true",
                   help="batch-norm statistics from each episode's query batch (as the paper's code)")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds the episodes: the same episodes for every checkpoint")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda[:N]")
    p.add_argument("--precision", choices=PRECISIONS, type=_one_of("precision", PRECISIONS),
                   default="fp32", help="the fine-tuning's precision: bf16 autocast, or fp32")
    p.add_argument("--workers", type=_positive_int, default=1,
                   help="processes (one torch thread each) that share the episodes; the result "
                        "equals one process's at one thread")
    p.add_argument("--json", type=Path, default=None,
                   help="also write the results here (default: only print them)")
    p.add_argument("--record", metavar="NAME", default=None,
                   help="also store the results in the checkpoint's card as metrics[NAME] "
                        "(default: not stored)")
    p.set_defaults(handler=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    from models.adaptation import AdaptConfig, evaluate
    from models.checkpoint import load_base_model
    from models.data import concat, load_dataset
    from models.precision import effective_precision
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
    precision = effective_precision(args.precision, device)
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
                                transductive=args.transductive, device=device, progress=on_episode,
                                precision=args.precision, workers=args.workers)
            finally:
                bar.close()
            results.append(cell.as_dict())
    report = {
        "results": results,
        "checkpoint": str(args.checkpoint),
        "config": {"dataset": [str(p) for p in args.dataset], "algorithm": card.get("algorithm"),
                   "combine": card.get("combine"), "adaptation": vars(config),
                   "transductive": args.transductive, "seed": args.seed, "device": str(device),
                   "precision": precision, "workers": args.workers,
                   "seconds": round(time.perf_counter() - started, 1)},
    }
    mode = "transductive" if args.transductive else "non-transductive"
    print(f"{card.get('algorithm')} on {' + '.join(map(str, args.dataset))} ({mode}; "
          f"{precision}; adaptation {vars(config)})")
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

    from app.infra.settings import get_settings

    try:
        return get_settings()
    except ValidationError as exc:
        raise UsageError(f"bad MTL_* settings: {exc.errors()[0]['msg']}") from None


def _add_migrate(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "migrate", "create or upgrade the service database (alembic upgrade head)")
    p.set_defaults(handler=_migrate)


def _migrate(args: argparse.Namespace) -> int:
    from app.service.bootstrap import initialize, migrate

    settings = _service_settings()
    migrate(settings)
    initialize(settings)
    print(f"database at revision head: {_redacted(settings.resolved_database_url)}")
    return 0


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "serve", "run the API, with one training worker beside it")
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on")
    p.add_argument("--port", type=int, default=8000, help="the port to listen on")
    p.add_argument(
        "--no-worker",
        action="store_true",
        help="API only (distributed mode: workers run `mtl worker` elsewhere)",
    )
    p.add_argument(
        "--no-migrate",
        action="store_true",
        help="do not upgrade the database first (default: migrate SQLite, never PostgreSQL)",
    )
    p.add_argument(
        "--api-processes",
        type=_setting_int("api_processes"),
        default=None,
        metavar="N",
        help="API processes sharing the port (default: MTL_API_PROCESSES, 1); each has its own "
        "caches and interpreter lock, so predict throughput scales with cores",
    )
    p.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    import os
    import signal

    import uvicorn

    from app.infra.embedded import EmbeddedWorker
    from app.infra.logs import configure_logging
    from app.main import create_app
    from app.service.bootstrap import migrate

    if args.api_processes is not None:
        # The API processes are spawned and read their settings from the environment.
        os.environ["MTL_API_PROCESSES"] = str(args.api_processes)
    settings = _service_settings()
    processes = settings.api_processes
    # Embedded SQLite is migrated here; a shared PostgreSQL is migrated by a one-shot `mtl migrate`.
    if not args.no_migrate and settings.resolved_database_url.startswith("sqlite"):
        migrate(settings)
    worker = None
    if not args.no_worker:
        # A worker that keeps dying stops the whole service (non-zero exit), as SIGTERM would.
        worker = EmbeddedWorker(settings, on_give_up=lambda: os.kill(os.getpid(), signal.SIGTERM))
        worker.start()
        if processes > 1:
            os.environ["MTL_EMBEDDED_WORKER_READY_FILE"] = str(worker.ready_file)
    if processes > 1:
        os.environ["MTL_SERVE_PARENT_PID"] = str(os.getpid())

    def stop(signum: int, _frame: Any) -> None:
        raise SystemExit(0)

    # uvicorn re-raises the SIGTERM or SIGINT it caught once it has shut down; with these
    # handlers that ends in the `finally` below, so the worker is stopped instead of orphaned.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # Ours from the first line: uvicorn's own logging config (log_config=None: none) would
    # print its start-up lines as plain text before the app configures logging.
    configure_logging(settings.log_format)
    try:
        # A console following a job holds an event stream open: without a limit, shutting
        # down would wait for every browser to go away.
        if processes == 1:
            uvicorn.run(
                create_app(settings, embedded_worker=worker),
                host=args.host,
                port=args.port,
                timeout_graceful_shutdown=5,
                log_config=None,
            )
        else:
            # uvicorn's supervisor binds the port once and restarts an API process that dies;
            # this process keeps supervising the worker (the API processes only read its ready
            # file) and stops it when uvicorn returns.
            uvicorn.run(
                "app.main:app",
                host=args.host,
                port=args.port,
                workers=processes,
                timeout_graceful_shutdown=5,
                log_config=None,
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
    p = _command(sub, "worker", "run a training worker (Celery, solo pool): python -m worker",
                 add_help=False)
    p.set_defaults(handler=_worker, passes_on=True)


def _worker(args: argparse.Namespace) -> int:
    os.execv(sys.executable, [sys.executable, "-m", "worker", *args.passed_on])


def _add_keys(sub: argparse._SubParsersAction) -> None:
    # `create` writes to the database directly: it makes the first key, before any key exists to
    # call the API with (it runs where MTL_DATABASE_URL or MTL_DATA_DIR reaches the database).
    # `list` and `revoke` go through the admin API, like every other client command: they work
    # from any machine that reaches the service, and a key revoked through the API stops working
    # at once on that API process instead of after its key cache (MTL_API_KEY_CACHE_S) expires.
    p = _command(sub, "keys", "manage API keys")
    keys = p.add_subparsers(dest="keys_command", required=True, metavar="{create,list,revoke}")
    c = _command(keys, "create", "create a key in the database and print it (shown only once)")
    c.add_argument("--tenant", required=True,
                   help="whose key: 1-200 letters, digits or _.@- (each tenant sees its own data)")
    c.add_argument("--admin", action="store_true", help="an admin key (may use /v1/admin)")
    c.set_defaults(handler=_keys_create)
    ls = _command(keys, "list", "list every tenant's keys (admin key, through the API)")
    ls.set_defaults(handler=_through_client(_list_keys))
    rv = _command(keys, "revoke", "revoke a key (admin key, through the API)")
    rv.add_argument("prefix", help="the key's prefix, as `mtl keys list` shows it")
    rv.set_defaults(handler=_through_client(_revoke_key))


def _keys_create(args: argparse.Namespace) -> int:
    import re

    from sqlalchemy.exc import OperationalError, ProgrammingError

    from app.infra.db import session_scope
    from app.service.security import create_api_key

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


# ----------------------------------------------------------------------------- client

# The values of app.service.jobs.JobStatus, listed here so that `mtl --help` does not import the service's
# database code (tests/service/test_cli_help.py checks they match).
JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")


class CommandFailed(Exception):
    """The service refused a request or a job did not succeed: one line, exit status 1."""


ClientCommand = Callable[[Any, argparse.Namespace], int]


def _through_client(run: ClientCommand) -> Handler:
    """A handler calling `run(client, args)` with an `app.client.Client` (MTL_URL, MTL_API_KEY):
    the service's refusals become CommandFailed (exit 1), mistakes on this side UsageError."""

    def handler(args: argparse.Namespace) -> int:
        from app.client import ApiError, Client, ClientError

        try:
            with Client() as mtl:
                return run(mtl, args)
        except ApiError as exc:
            raise CommandFailed(str(exc)) from None
        except ClientError as exc:
            raise UsageError(str(exc)) from None

    return handler


def _note(text: str) -> None:
    """What a person reads; stdout is kept for what a script reads (an id, a table)."""
    print(text, file=sys.stderr)


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def _add_datasets(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "datasets", "datasets on a running service (MTL_URL, MTL_API_KEY)")
    datasets = p.add_subparsers(dest="datasets_command", required=True)
    up = _command(datasets, "upload",
                  "upload a folder of class folders or a .zip of one; prints the dataset's id")
    up.add_argument("source", type=Path,
                    help="a folder whose subfolders are the class names, or a .zip of one")
    up.add_argument("--name", default=None,
                    help="the dataset's name (default: the folder's or the zip's name)")
    up.set_defaults(handler=_through_client(_datasets_upload))


def _datasets_upload(mtl: Any, args: argparse.Namespace) -> int:
    ds = mtl.upload_dataset(args.source, name=args.name)
    counts = ", ".join(f"{c.name}: {c.count}" for c in ds.classes[:10])
    more = f", and {len(ds.classes) - 10} more" if len(ds.classes) > 10 else ""
    _note(f"dataset {ds.id} '{ds.name}': {ds.num_images} images in {len(ds.classes)} classes "
          f"({counts}{more})")
    for r in ds.rejected:
        _note(f"warning: left out {r.file}: {r.reason}")
    print(ds.id)
    return 0


def _add_classifiers(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "classifiers", "classifiers on a running service (MTL_URL, MTL_API_KEY)")
    classifiers = p.add_subparsers(dest="classifiers_command", required=True)
    c = _command(classifiers, "create",
                 "train a classifier on a dataset; prints the classifier's id")
    c.add_argument("--dataset", required=True, help="the dataset's id (mtl datasets upload prints it)")
    c.add_argument("--name", default=None, help="the classifier's name (default: the dataset's)")
    c.add_argument("--base-model", default=None,
                   help="the base model's id, e.g. handwriting or natural (default: the service's "
                        "default base model)")
    c.add_argument("--params", type=_json_object, default=None,
                   help="""training parameters as a JSON object, e.g. '{"steps": 50}' (default: """
                        "the base model card's)")
    c.add_argument("--wait", action="store_true",
                   help="follow the training job with a progress bar; exit 1 unless it succeeds")
    c.add_argument("--timeout", type=float, default=None,
                   help="with --wait: stop waiting after this many seconds (default: until the "
                        "job finishes)")
    c.set_defaults(handler=_through_client(_classifiers_create))
    ls = _command(classifiers, "list", "this key's classifiers, oldest first, as a table")
    ls.set_defaults(handler=_through_client(_classifiers_list))
    _on_one(classifiers, "show", "one classifier as JSON: status, labels, parameters and "
            "holdout metrics", "classifier", _classifiers_show)
    _on_one(classifiers, "delete", "delete a classifier (its training job is cancelled if still "
            "running)", "classifier", _classifiers_delete)


def _on_one(sub: argparse._SubParsersAction, name: str, help: str, what: str,
            run: ClientCommand) -> None:
    """A client command on one resource given by its id (`args.<what>`)."""
    p = _command(sub, name, help)
    p.add_argument(what, help=f"the {what}'s id")
    p.set_defaults(handler=_through_client(run))


def _classifiers_list(mtl: Any, args: argparse.Namespace) -> int:
    rows = []
    for c in mtl.classifiers():
        accuracy = "" if c.metrics is None else f"{100 * c.metrics.holdout_accuracy:.1f}%"
        rows.append([c.id, c.name, c.status, c.base_model_id, str(len(c.labels)), accuracy,
                     c.created_at.strftime("%Y-%m-%d %H:%M:%S")])
    _table(["classifier", "name", "status", "base model", "classes", "holdout", "created"], rows)
    return 0


def _classifiers_show(mtl: Any, args: argparse.Namespace) -> int:
    print(mtl.classifier(args.classifier).model_dump_json(indent=2))
    return 0


def _classifiers_delete(mtl: Any, args: argparse.Namespace) -> int:
    mtl.delete_classifier(args.classifier)
    _note(f"classifier {args.classifier} deleted")
    return 0


def _classifiers_create(mtl: Any, args: argparse.Namespace) -> int:
    name = args.name or mtl.dataset(args.dataset).name
    created = mtl.create_classifier(args.dataset, name=name, base_model_id=args.base_model,
                                    params=args.params)
    _note(f"classifier {created.id}: training job {created.job_id} {created.status}")
    if args.wait:
        job = _follow(mtl, created.job_id, args.timeout)
        if job.status != "succeeded":
            raise CommandFailed(f"job {job.id} of classifier {created.id} {job.status}"
                                + (f": {job.error}" if job.error else ""))
        metrics = mtl.classifier(created.id).metrics
        if metrics is not None:
            _note(f"classifier {created.id} is ready: holdout accuracy "
                  f"{100 * metrics.holdout_accuracy:.1f}%")
    print(created.id)
    return 0


def _follow(mtl: Any, job_id: str, timeout: float | None) -> Any:
    """Wait for a job with a progress bar fed by its progress; Ctrl-C stops waiting only."""
    bar = _progress_bar(0, "queued")

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
        _note(f"stopped waiting; job {job_id} goes on (mtl jobs show {job_id}, "
              f"mtl jobs cancel {job_id})")
        raise
    finally:
        bar.close()


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "predict", "classify images with a trained classifier; prints the top "
                 "labels of each (MTL_URL, MTL_API_KEY)")
    p.add_argument("classifier", help="the classifier's id")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files")
    p.add_argument("--top-k", type=int, default=3, help="labels to show for each image")
    p.add_argument("--json", action="store_true",
                   help="print the service's answer as JSON instead of a table")
    p.set_defaults(handler=_through_client(_predict_images))


def _predict_images(mtl: Any, args: argparse.Namespace) -> int:
    if args.top_k < 1:
        raise UsageError("--top-k must be at least 1")
    answer = mtl.predict(args.classifier, args.images, top_k=args.top_k)
    if args.json:
        print(answer.model_dump_json(indent=2, exclude_none=True))
        return 0
    rows = []
    for image, result in zip(args.images, answer.results, strict=True):
        if result.error is not None:
            rows.append([str(image), f"error: {result.error}", ""])
            continue
        for rank, p in enumerate(result.predictions or []):
            rows.append([str(image) if rank == 0 else "", p.label, f"{p.probability:.3f}"])
    _table(["image", "label", "probability"], rows)
    return 0


def _add_jobs(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "jobs", "training and pretraining jobs on a running service "
                 "(MTL_URL, MTL_API_KEY)")
    jobs = p.add_subparsers(dest="jobs_command", required=True)
    ls = _command(jobs, "list", "the newest jobs, as a table")
    ls.add_argument("--status", choices=JOB_STATUSES, default=None,
                    help="only jobs with this status (default: any)")
    ls.add_argument("--tenant", default=None,
                    help="admin keys: only this tenant's jobs (default: every tenant's)")
    ls.add_argument("--limit", type=int, default=20, help="at most this many jobs (1-500)")
    ls.set_defaults(handler=_through_client(_jobs_list))
    _on_one(jobs, "show", "one job as JSON: status, phase, progress and outcome", "job", _jobs_show)
    _on_one(jobs, "cancel", "cancel a job: a queued one at once, a running one at its next step",
            "job", _jobs_cancel)


def _jobs_list(mtl: Any, args: argparse.Namespace) -> int:
    page = mtl.jobs(limit=args.limit, status=args.status, tenant=args.tenant)
    _table(["job", "kind", "status", "phase", "step", "created"],
           [[j.id, j.kind, j.status, j.phase or "", f"{j.progress.step}/{j.progress.total_steps}",
             j.created_at.strftime("%Y-%m-%d %H:%M:%S")] for j in page.data])
    if page.next_cursor is not None:
        _note(f"(the newest {len(page.data)}; more with --limit)")
    return 0


def _jobs_show(mtl: Any, args: argparse.Namespace) -> int:
    print(mtl.job(args.job).model_dump_json(indent=2))
    return 0


def _jobs_cancel(mtl: Any, args: argparse.Namespace) -> int:
    job = mtl.cancel_job(args.job)
    print(f"job {job.id}: {job.status}"
          + (" (it stops at its next step)" if job.status == "running" else ""))
    return 0


def _list_keys(mtl: Any, args: argparse.Namespace) -> int:
    _table(["prefix", "tenant", "scope", "created"],
           [[k.prefix, k.tenant, k.scope, k.created_at.strftime("%Y-%m-%d %H:%M:%S")]
            for k in mtl.api_keys()])
    return 0


def _revoke_key(mtl: Any, args: argparse.Namespace) -> int:
    mtl.revoke_api_key(args.prefix)
    print(f"revoked the key with prefix {args.prefix}")
    return 0


# ----------------------------------------------------------------------------- main

def _add_bench(sub: argparse._SubParsersAction) -> None:
    # A thin entry: the benchmark's own options are parsed by `benchmarks.table1` (the same as
    # `python -m benchmarks.table1`), imported only when this command runs.
    p = _command(sub, "bench", "benchmarks whose reports are committed under benchmarks/results")
    bench = p.add_subparsers(dest="bench", required=True)
    table1 = _command(bench, "table1", "the paper's Table 1 on unseen classes, all methods",
                      add_help=False)
    table1.set_defaults(handler=_bench_table1, passes_on=True)


class _RawDescriptionHelpFormatter(argparse.RawDescriptionHelpFormatter, HelpFormatter):
    """The benchmark's docstring as written, and every option's default."""


def _bench_table1(args: argparse.Namespace) -> int:
    from benchmarks import table1

    parser = Parser(prog="mtl bench table1", description=table1.__doc__,
                    formatter_class=_RawDescriptionHelpFormatter)
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
    _add_datasets,
    _add_classifiers,
    _add_predict,
    _add_jobs,
]


def package_version() -> str:
    """The installed mtl-service version ('unknown' in a tree that was never installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mtl-service")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="mtl", description="Meta-transfer learning service and tools",
                                     formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}",
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

            limit_threads(_service_settings().resolved_torch_threads)
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


if __name__ == "__main__":
    sys.exit(main())

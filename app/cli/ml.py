"""`mtl pretrain` and `mtl evaluate`: the ML core on this machine, no service needed."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from app.cli.common import UsageError, command, int_list, one_of, positive_int, progress_bar

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


def add_pretrain(sub: argparse._SubParsersAction) -> None:
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
    p = command(sub, "pretrain", "train a base model on base classes")
    p.add_argument("--dataset", required=True, type=Path,
                   help="Omniglot .npz file, or a folder of class subfolders")
    p.add_argument("--algorithm", choices=list(ALGORITHMS), type=one_of("algorithm", list(ALGORITHMS)),
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
        typ = int if name == "channels" else one_of(name.replace("_", " "), choices[name])
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
    from models.distributed import launch, spread_warnings
    from models.loaders import load_dataset
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
    bar = progress_bar(config.iterations, f"pretrain {config.algorithm}")

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


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    from models.config import BN_STATS, HEAD_INITS, PRECISIONS  # torch-free

    p = command(sub, "evaluate", "episodic evaluation of a base model on unseen classes")
    p.add_argument("--checkpoint", required=True, type=Path, help="folder written by mtl pretrain")
    p.add_argument("--dataset", required=True, type=Path, action="append",
                   help="unseen classes (.npz or folder); repeat to combine, e.g. val and test")
    p.add_argument("--ways", type=int_list, default="5", help="classes per episode, e.g. 5,20,35")
    p.add_argument("--shots", type=int_list, default="1,5",
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
    p.add_argument("--precision", choices=PRECISIONS, type=one_of("precision", PRECISIONS),
                   default="fp32", help="the fine-tuning's precision: bf16 autocast, or fp32")
    p.add_argument("--workers", type=positive_int, default=1,
                   help="processes (one torch thread each) that share the episodes; the result "
                        "equals one process's at one thread")
    p.add_argument("--json", type=Path, default=None,
                   help="also write the results here (default: only print them)")
    p.add_argument("--record", metavar="NAME", default=None,
                   help="also store the results in the checkpoint's card as metrics[NAME] "
                        "(default: not stored)")
    p.set_defaults(handler=_evaluate)


def _print_results(card: dict[str, Any], args: argparse.Namespace, precision: str, config: Any,
                   results: list[dict[str, Any]]) -> None:
    mode = "transductive" if args.transductive else "non-transductive"
    print(f"{card.get('algorithm')} on {' + '.join(map(str, args.dataset))} ({mode}; "
          f"{precision}; adaptation {vars(config)})")
    print(f"{'ways':>5} {'shots':>5} {'queries':>7} {'episodes':>8} {'accuracy':>9} {'ci95':>7}")
    for r in results:
        print(f"{r['ways']:>5} {r['shots']:>5} {r['queries']:>7} {r['episodes']:>8} "
              f"{100 * r['accuracy']:>8.2f}% {100 * r['ci95']:>6.2f}%")


def _evaluate(args: argparse.Namespace) -> int:
    from models.adaptation import AdaptConfig, evaluate
    from models.checkpoint import load_base_model
    from models.data import concat
    from models.loaders import load_dataset
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
            bar = progress_bar(args.episodes, f"{ways}-way {shots}-shot")

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
    _print_results(card, args, precision, config, results)
    _save_report(args, report)
    return 0


def _save_report(args: argparse.Namespace, report: dict[str, Any]) -> None:
    """`--json` and `--record` of `mtl evaluate`."""
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.record:
        from models.checkpoint import record_metrics

        record_metrics(args.checkpoint, args.record,
                       {**report, "command": "mtl " + " ".join(args.argv)})



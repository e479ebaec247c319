"""A Table 1 run: pretrain (or reuse) each method's base model, choose its adaptation on validation
classes, and score it in the profile's cells, writing the report after each cell."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from benchmarks.harness import REPO, git_commit, machine_description
from benchmarks.table1.data import Splits, load_splits
from benchmarks.table1.profiles import (
    METHODS,
    PREREG_CHOICES,
    PREREG_PROFILES,
    PREREG_VERSION,
    PROFILES,
    RECIPES,
    UNSEEN_CLASSES,
    Profile,
    method_config,
)
from benchmarks.table1.report import write_report


def _command(dataset: str, profile_name: str, methods: list[str], cells: list[tuple[int, int]] | None,
             seed: int, precision: str, eval_precision: str, workers: int) -> str:
    return (f"mtl bench table1 --dataset {dataset} --profile {profile_name}"
            + (f" --methods {','.join(methods)}" if methods != METHODS else "")
            + (f" --cells {','.join(f'{w}x{k}' for w, k in cells)}" if cells else "")
            + (f" --seed {seed}" if seed else "")
            + (f" --precision {precision}" if precision != "fp32" else "")
            + (f" --eval-precision {eval_precision}" if eval_precision != precision else "")
            + (f" --workers {workers}" if workers > 1 else ""))


def _header(dataset: str, profile_name: str, methods: list[str], cells: list[tuple[int, int]] | None,
            seed: int, precision: str, eval_precision: str, workers: int) -> dict[str, Any]:
    """What a report says about how it was made."""
    profile = PROFILES[(dataset, profile_name)]
    return {
        "dataset": dataset, "profile": profile_name, "profile_settings": asdict(profile),
        "budget": f"{profile.budget_passes} image forward+backward passes per method",
        "machine": machine_description(), "commit": git_commit(),
        "command": _command(dataset, profile_name, methods, cells, seed, precision, eval_precision,
                            workers),
        "precision": {"pretraining": precision, "evaluation": eval_precision},
        "unseen_classes": UNSEEN_CLASSES[dataset],
        "evaluation": "non-transductive; identical seeded episodes for every method",
    }


def _check_prereg(profile_name: str, dataset: str, methods: list[str], report: dict[str, Any]) -> None:
    """A prereg run only of methods whose validation choice is entered; its report names the
    pre-registration's version."""
    if profile_name not in PREREG_PROFILES:
        return
    missing = [m for m in methods if m not in PREREG_CHOICES[dataset]]
    if missing:
        raise SystemExit(f"error: {', '.join(missing)}: no validation choice entered for {dataset} "
                         "(docs/preregistration.md; run benchmarks/prereg_sweep.py first)")
    report["preregistration"] = f"docs/preregistration.md, version {PREREG_VERSION}"


@dataclass
class _Scoring:
    """What every method of one `run` shares: where, on which data, how."""

    profile: Profile
    splits: Splits
    dev: Any
    eval_precision: str
    workers: int
    report: dict[str, Any]
    results_path: Path


def _pretrained(method: str, config: Any, ckpt: Path, sc: _Scoring, adapt: Any) -> None:
    """Pretrain `method` into `ckpt` unless a completed checkpoint is there (resuming one that
    is not)."""
    from models.checkpoint import load_checkpoint
    from models.errors import CheckpointError
    from models.training import pretrain

    try:
        if load_checkpoint(ckpt)[1]["training"]["completed"]:
            return
    except CheckpointError:
        pass
    profile, splits = sc.profile, sc.splits
    print(f"[{method}] pretraining {config.iterations} iterations "
          f"({config.passes_per_iteration()} passes each)", file=sys.stderr, flush=True)
    val = splits.validation
    validate = (validation_curve(val, adapt, profile, sc.eval_precision, sc.workers)
                if val is not None else None)
    rotated = profile.method_rotations(method) and not profile.rotations
    if rotated and "rotated" not in splits.cache:
        from models.data import with_rotations

        splits.cache["rotated"] = with_rotations(splits.base)
    pretrain(config, splits.cache["rotated"] if rotated else splits.base, device=sc.dev,
             out_dir=ckpt, resume=ckpt.exists(), checkpoint_every_s=120,
             validate=validate, validate_every=max(1, profile.validate_every
                                                   // config.passes_per_iteration()))


def _adaptation(method: str, net: Any, card: dict[str, Any], candidates: list[Any],
                sc: _Scoring) -> tuple[Any, list[dict[str, Any]] | None]:
    """The method's adaptation: its recipe's only one, or the best on validation classes (made
    again if the checkpoint changed since the report's cells were scored)."""
    from models.config import AdaptConfig

    report, val = sc.report, sc.splits.validation
    previous = report["methods"].get(method, {})
    if previous.get("weights_sha256") and previous["weights_sha256"] != card.get("weights_sha256"):
        # The checkpoint was trained again since these cells and this choice were made: they
        # belong to another model and would be reported beside the new one's.
        print(f"[{method}] its checkpoint changed since {sc.results_path} was written: its cells "
              "and adaptation choice are made again", file=sys.stderr, flush=True)
        previous = {}
        report["cells"] = [c for c in report["cells"] if c["method"] != method]
    choice = previous.get("adaptation_choice")
    if len(candidates) > 1 and val is not None and not choice:
        choice = choose_adaptation(net, val, candidates, sc.profile, sc.eval_precision, sc.workers)
        print(f"[{method}] adaptation on validation: {json.dumps(choice)}", file=sys.stderr, flush=True)
    if choice:
        return AdaptConfig(**max(choice, key=lambda c: c["accuracy"])["adaptation"]), choice
    return candidates[0], choice


def _score_cells(method: str, net: Any, adapt: Any, cells: list[tuple[int, int]] | None,
                 sc: _Scoring, started: float) -> float:
    """Score the method in each cell not yet in the report, writing the report after each."""
    from models.adaptation import evaluate

    profile, report, unseen = sc.profile, sc.report, sc.splits.unseen
    smallest = min(unseen.class_counts())
    for ways in profile.ways:
        for shots in profile.shots:
            if cells and (ways, shots) not in cells:
                continue
            if any(c["method"] == method and c["ways"] == ways and c["shots"] == shots
                   for c in report["cells"]):
                continue
            queries = profile.max_shot_queries if shots == max(profile.shots) else 15
            queries = min(queries, smallest - shots)
            t0 = time.perf_counter()
            cell = evaluate(net, unseen, ways=ways, shots=shots, queries=queries,
                            episodes=profile.episodes_for(shots), config=adapt, seed=2019,
                            device=sc.dev, precision=sc.eval_precision, workers=sc.workers)
            row = {"method": method, **cell.as_dict(), "seconds": round(time.perf_counter() - t0, 1)}
            print(json.dumps({k: v for k, v in row.items() if k != "per_episode"}),
                  file=sys.stderr, flush=True)
            report["cells"].append(row)
            report["wall_clock_seconds"] = round(report.get("wall_clock_seconds", 0)
                                                 + time.perf_counter() - started, 1)
            started = time.perf_counter()
            sc.results_path.write_text(json.dumps(report, indent=2) + "\n")
    return started


def run(dataset: str, profile_name: str, out: Path, methods: list[str], device: str,
        cells: list[tuple[int, int]] | None = None, seed: int = 0, precision: str | None = None,
        eval_precision: str | None = None, workers: int = 1) -> dict[str, Any]:
    """Pretrain (or reuse) each method's base model and score it in the profile's cells (only
    `cells`, (ways, shots) pairs, when given: a method's cells can then run in several processes
    side by side and be merged). `seed` is the pretraining seed (0 in every committed report);
    another one pretrains into its own checkpoint folder and scores on the same episodes, which
    is how a result is replicated. `precision` is the pretraining's (default: the profile's, else
    fp32; a bf16 run pretrains into its own checkpoint folder), `eval_precision` the
    adaptation's (default: the same); `workers`
    spreads each cell's episodes over that many one-thread processes (the same result as one
    process at one thread)."""
    from models.checkpoint import load_base_model
    from models.config import AdaptConfig
    from models.training import resolve_device

    profile = PROFILES[(dataset, profile_name)]
    precision = precision or str(profile.common.get("precision", "fp32"))
    eval_precision = eval_precision or precision
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    report: dict[str, Any] = json.loads(results_path.read_text()) if results_path.exists() else {}
    report.update(_header(dataset, profile_name, methods, cells, seed, precision, eval_precision,
                          workers))
    _check_prereg(profile_name, dataset, methods, report)
    report.setdefault("methods", {})
    report.setdefault("cells", [])
    splits = load_splits(dataset, profile)
    if splits.validation is not None:
        report["base_classes"], report["validation_classes"] = splits.base_text, splits.validation_text
    sc = _Scoring(profile, splits, resolve_device(device), eval_precision, workers, report,
                  results_path)
    # Smoke runs (the tests) keep their checkpoints with their report, never reusing an old one.
    smoke = profile_name.endswith("smoke")
    ckpt_root = ((out / "checkpoints" if smoke else REPO / "runs" / "bench")
                 / (f"{dataset}-{profile_name}" + (f"-seed{seed}" if seed else "")
                    + (f"-{precision}" if precision != "fp32" else "")))
    started = time.perf_counter()
    for method in methods:
        config = replace(method_config(method, profile), seed=seed, precision=precision)
        ckpt = ckpt_root / method
        candidates = [AdaptConfig(**{**a, "batch_size": profile.adapt_batch})
                      for a in RECIPES[profile.recipe][2][method]]
        _pretrained(method, config, ckpt, sc, candidates[0])
        net, card = load_base_model(ckpt, device=sc.dev)
        adapt, choice = _adaptation(method, net, card, candidates, sc)
        report["methods"][method] = {"config": asdict(config), "adaptation": asdict(adapt),
                                     "adaptation_choice": choice or [],
                                     "train_seconds": card["training"]["seconds"],
                                     "iterations": config.iterations,
                                     "checkpoint": str(ckpt),
                                     "weights_sha256": card.get("weights_sha256"),
                                     "validation": card.get("validation", [])}
        started = _score_cells(method, net, adapt, cells, sc, started)
    write_report(report, out)
    return report


CURVE_EPISODES = 60


def validation_curve(val: Any, adapt: Any, profile: Profile, precision: str = "fp32",
                     workers: int = 1) -> Any:
    """The `validate` callback of a training curve: 5-way 1-shot on the validation classes with
    `adapt` (the method's first candidate adaptation: for the fair recipe, fine-tuning a zero head;
    the one it keeps is chosen after pretraining), and with the prototype head alone (a probe of
    the features)."""
    from models.adaptation import evaluate
    from models.config import AdaptConfig

    probe = AdaptConfig(steps=0, lr=0.0, head_init="prototype", bn_stats="frozen")

    def validate(net: Any) -> dict[str, float]:
        scores: dict[str, float] = {}
        # On the network's own device: evaluate() moves the network it is given, and this one is
        # still being trained (on a GPU it would otherwise come back on the CPU).
        device = str(next(net.parameters()).device)
        for key, config in (("accuracy", adapt), ("probe_accuracy", probe)):
            cell = evaluate(net, val, ways=5, shots=1, queries=15, episodes=min(CURVE_EPISODES, profile.episodes),
                            config=config, seed=12345, device=device, precision=precision,
                            workers=workers)
            scores[key], scores[key.replace("accuracy", "ci95")] = cell.accuracy, cell.ci95
        return scores

    return validate


def choice_cells(val: Any, profile: Profile) -> list[tuple[int, int]]:
    """The validation cells an adaptation is chosen on: the profile's smallest task (fewest ways
    and shots) and its largest that the validation classes allow. One cell was not enough: on
    the Vinyals split three candidates tied within 0.03 points at 5-way 1-shot, and the one that
    won (fine-tuning a zero head) scored 4-5 points below the others at 20-way 5-shot."""
    small = (min(profile.ways), min(profile.shots))
    ways = [w for w in profile.ways if w <= val.num_classes] or [min(profile.ways)]
    large = (max(ways), max(profile.shots))
    return [small] if large == small else [small, large]


def choose_adaptation(net: Any, val: Any, candidates: list[Any], profile: Profile,
                      precision: str = "fp32", workers: int = 1) -> list[dict[str, Any]]:
    """Each candidate adaptation's accuracy on the validation classes at `choice_cells` (100
    episodes at the smallest, 50 at the largest, the tuning seed), and their mean as
    `accuracy`: the report keeps them all and uses the best mean."""
    from models.adaptation import evaluate

    smallest_class = min(val.class_counts())
    rows = []
    for config in candidates:
        cells = []
        for i, (ways, shots) in enumerate(choice_cells(val, profile)):
            cell = evaluate(net, val, ways=ways, shots=shots, queries=min(15, smallest_class - shots),
                            episodes=min(100 if i == 0 else profile.choice_large_episodes,
                                         profile.episodes_for(shots)), config=config,
                            seed=12345, device="cpu", precision=precision, workers=workers)
            cells.append({"ways": ways, "shots": shots, "accuracy": round(cell.accuracy, 5),
                          "ci95": round(cell.ci95, 5)})
        rows.append({"adaptation": asdict(config),
                     "accuracy": round(sum(c["accuracy"] for c in cells) / len(cells), 5),
                     "cells": cells})
    return rows

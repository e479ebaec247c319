"""How well a classifier tells its own classes from images of another domain (issue 29's
"unknown"): the AUROC of known-class holdout images against out-of-domain ones, for two open-set
scores, on the built-in base models as the service trains classifiers on them.

Each task: N classes of unseen images (Omniglot evaluation characters for `handwriting`,
miniImageNet-lite test classes for `natural`), split per class as the service does (holdout
fraction 0.2), adapted on the training split with the base model's default adaptation; scored on
the holdout (known) and on images of the other data set, decoded to the model's input as predict
decodes them (out of domain: photos for the glyph classifier, glyphs for the photo classifier).

Scores: `max_probability` (the top softmax probability) and `prototype_cosine` (the cosine
similarity of the image's features to the nearest class mean of the training split's features).

    python -m benchmarks.open_set [--tasks 5] [--out benchmarks/results/open-set.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.harness import REPO, git_commit, machine_description

SCENARIOS = {
    # base model -> (its unseen classes, the out-of-domain images)
    "handwriting": ("omniglot/images_evaluation.npz", "miniimagenet-lite/test"),
    "natural": ("miniimagenet-lite/test", "omniglot/images_evaluation.npz"),
}


def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """P(a known image scores above an out-of-domain one), ties counting half."""
    scores = np.concatenate([known, unknown])
    ranks = scores.argsort().argsort().astype(float) + 1
    # Average ranks over ties.
    for value in np.unique(scores):
        same = scores == value
        ranks[same] = ranks[same].mean()
    n_k, n_u = len(known), len(unknown)
    return float((ranks[:n_k].sum() - n_k * (n_k + 1) / 2) / (n_k * n_u))


def scores(clf: Any, x: torch.Tensor, prototypes: torch.Tensor) -> dict[str, np.ndarray]:
    from models.data import to_float

    with torch.no_grad():
        clf.eval()
        feats = clf.features(to_float(x))
        probs = torch.softmax(clf.head(feats), dim=1)
        cos = torch.nn.functional.normalize(feats, dim=1) @ prototypes.T
    return {"max_probability": probs.max(1).values.numpy(),
            "prototype_cosine": cos.max(1).values.numpy()}


def run_task(base: str, known_set: Any, ood: torch.Tensor, ways: int, per_class: int,
             seed: int) -> dict[str, Any]:
    from app.service.holdout import holdout_split
    from models.adaptation import adapt, class_prototypes
    from models.checkpoint import load_base_model
    from models.config import AdaptConfig
    from models.data import to_float

    net, card = load_base_model(REPO / "app" / "builtin_models" / base)
    rng = np.random.default_rng(seed)
    classes = rng.choice(known_set.num_classes, ways, replace=False)
    idx = []
    for new, c in enumerate(classes):
        members = np.flatnonzero(known_set.labels.numpy() == c)
        idx += [(i, new) for i in rng.choice(members, min(per_class, len(members)), replace=False)]
    x = known_set.images[[i for i, _ in idx]]
    y = torch.tensor([c for _, c in idx])
    train, hold = holdout_split(y.tolist(), 0.2, seed)
    config = AdaptConfig.from_card(card)
    clf = adapt(net, to_float(x[train]), y[train], config=config, seed=seed)
    prototypes = class_prototypes(clf, to_float(x[train]), y[train])
    known = scores(clf, x[hold], prototypes)
    pick = rng.choice(len(ood), min(len(ood), 200), replace=False)
    unknown = scores(clf, ood[pick], prototypes)
    return {"seed": seed, "classes": [known_set.class_names[c] for c in classes],
            "known": len(hold), "out_of_domain": len(pick),
            **{name: round(auroc(known[name], unknown[name]), 4) for name in known}}


def main() -> None:
    from models.data import data_root
    from models.loaders import load_dataset

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=int, default=5)
    p.add_argument("--ways", type=int, default=5)
    p.add_argument("--per-class", type=int, default=20)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "open-set.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    report: dict[str, Any] = {"command": "python -m benchmarks.open_set", "commit": git_commit(),
                              "machine": machine_description(), "scenarios": {}}
    started = time.perf_counter()
    for base, (known_path, ood_path) in SCENARIOS.items():
        card = json.loads((REPO / "app" / "builtin_models" / base / "model.json").read_text())
        size, channels = card["image_size"], card["channels"]
        known_set = load_dataset(data_root() / known_path, image_size=size, channels=channels)
        ood = load_dataset(data_root() / ood_path, image_size=size, channels=channels,
                           max_per_class=10).images
        tasks = [run_task(base, known_set, ood, args.ways, args.per_class, seed)
                 for seed in range(args.tasks)]
        report["scenarios"][base] = {
            "known": known_path, "out_of_domain": ood_path, "tasks": tasks,
            **{f"mean_{k}": round(float(np.mean([t[k] for t in tasks])), 4)
               for k in ("max_probability", "prototype_cosine")}}
        print(base, {k: v for k, v in report["scenarios"][base].items() if k.startswith("mean")})
    report["seconds"] = round(time.perf_counter() - started, 1)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

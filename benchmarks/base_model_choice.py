"""Does the service's base-model choice pick the base model that trains the better classifier?

Ten datasets as users would upload them, made from unseen classes of the shared data (Omniglot
evaluation alphabets as PNG glyphs; miniImageNet-lite test classes as JPEG photos), of several
widths and sizes. For each dataset and each built-in base model: the proxy the service scores
(`models.selection.prototype_loo_accuracy`, on images decoded exactly as the worker decodes
them), and the real outcome, the holdout accuracy of the classifier the service would train (the
base model card's default parameters, the service's holdout split, its holdout pass). The choice
is right when the proxy's pick has the best holdout accuracy (ties count as right).

    python -m benchmarks.base_model_choice [--out benchmarks/results/base-model-choice.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.service.base_model_choice import PROXY_IMAGES_PER_CLASS, RULE
from app.service.base_model_choice import pick as pick_rule
from app.service.holdout import holdout_split
from app.service.params import adapt_config
from app.service.schemas import ClassifierParams, resolve_params
from models.adaptation import adapt
from models.checkpoint import load_base_model
from models.data import to_float
from models.loaders import decode_image
from models.selection import prototype_loo_accuracy, sample_per_class
from tests.utils.images import data_root, omniglot_eval, png

REPO = Path(__file__).resolve().parents[1]
# Every committed built-in, in the order the service lists the candidates: the default
# (natural) first, then newest registered first (handwriting-mtl was added after handwriting).
BUILTINS = ("natural", "handwriting-mtl", "handwriting")
# (kind, classes, images a class): glyphs have 20 drawings a character, photos 120 a class.
DATASETS = [("glyphs", 5, 5), ("glyphs", 5, 10), ("glyphs", 10, 5), ("glyphs", 20, 10),
            ("glyphs", 5, 20), ("photos", 5, 5), ("photos", 5, 10), ("photos", 10, 10),
            ("photos", 5, 30), ("photos", 10, 50)]


def dataset_files(kind: str, classes: int, per_class: int, seed: int) -> tuple[list[bytes], list[int]]:
    """A dataset's files as a user uploads them, and their labels."""
    rng = np.random.default_rng(seed)
    files: list[bytes] = []
    labels: list[int] = []
    if kind == "glyphs":
        images = omniglot_eval()
        for c, char in enumerate(rng.choice(len(images), classes, replace=False)):
            for drawing in rng.choice(20, per_class, replace=False):
                files.append(png((images[char, drawing] * 255).astype(np.uint8)))
                labels.append(c)
    else:
        folders = sorted(p for p in (data_root() / "miniimagenet-lite" / "test").iterdir() if p.is_dir())
        for c, i in enumerate(rng.choice(len(folders), classes, replace=False)):
            photos = sorted(folders[i].glob("*.jpg"))
            for j in rng.choice(len(photos), per_class, replace=False):
                files.append(photos[j].read_bytes())
                labels.append(c)
    return files, labels


def holdout_accuracy(net: Any, x: torch.Tensor, y: torch.Tensor, params: dict[str, Any]) -> float:
    """The service's holdout pass: adapt on the training split, score the holdout."""
    train, hold = holdout_split(y.tolist(), params["holdout_fraction"], params["seed"])
    names = [str(c) for c in range(int(y.max()) + 1)]
    clf = adapt(net, x[train], y[train], class_names=names, config=adapt_config(params),
                seed=params["seed"])
    predicted = clf.predict_proba(x[hold]).argmax(1)
    return round(float((predicted == y[hold]).float().mean()), 4)


def run(out: Path) -> dict[str, Any]:
    torch.set_num_threads(1)
    load_start = os.getloadavg()
    models = {name: load_base_model(REPO / "app" / "builtin_models" / name) for name in BUILTINS}
    rows = []
    for n, (kind, classes, per_class) in enumerate(DATASETS):
        files, labels = dataset_files(kind, classes, per_class, seed=n)
        y = torch.tensor(labels)
        row: dict[str, Any] = {"dataset": f"{kind} {classes} classes x {per_class} images",
                               "kind": kind, "proxy": {}, "holdout_accuracy": {}, "seconds": {}}
        for name, (net, card) in models.items():
            x = to_float(torch.from_numpy(np.stack([
                decode_image(f, channels=card["channels"], image_size=card["image_size"])
                for f in files])))
            start = time.perf_counter()
            keep = sample_per_class(y, PROXY_IMAGES_PER_CLASS, seed=0)
            score = prototype_loo_accuracy(net, x[keep], y[keep])
            row["proxy"][name] = {"score": score.accuracy, "margin": score.margin}
            row["seconds"][name] = round(time.perf_counter() - start, 3)
            params = resolve_params(ClassifierParams(), card.get("adaptation") or {})
            row["holdout_accuracy"][name] = holdout_accuracy(net, x, y, params)
        # The service's rule (app.service.base_model_choice.pick), candidates in its order.
        scores = {m: (p["score"], p["margin"], 0) for m, p in row["proxy"].items()}
        choice = {"candidates": [{"base_model_id": m} for m in BUILTINS]}
        pick = pick_rule(choice, scores)["chosen"]
        best = max(row["holdout_accuracy"].values())
        row["picked"], row["right"] = pick, row["holdout_accuracy"][pick] >= best
        rows.append(row)
        print(json.dumps(row), flush=True)
    report = {
        "what": "the base model the service's proxy picks vs the one whose classifier has the "
                "better holdout accuracy (default parameters of each card, the service's split)",
        "proxy": RULE,
        "command": "python -m benchmarks.base_model_choice",
        "right": sum(r["right"] for r in rows),
        # Datasets whose two classifiers' holdout accuracies differ (small holdouts often tie).
        "decisive": sum(len(set(r["holdout_accuracy"].values())) > 1 for r in rows),
        "right_of_decisive": sum(r["right"] and len(set(r["holdout_accuracy"].values())) > 1
                                 for r in rows),
        "datasets": len(rows),
        "rows": rows,
        "load_average_at_start": load_start,
        "load_average_at_end": os.getloadavg(),
        "torch_threads": 1,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"right on {report['right']} of {report['datasets']} datasets ({report['right_of_decisive']} "
          f"of the {report['decisive']} whose holdout accuracies differ) -> {out}")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/base-model-choice.json")
    run(parser.parse_args().out)


if __name__ == "__main__":
    main()

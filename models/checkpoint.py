"""Checkpoints: `model.safetensors` (tensors only, never a pickle) plus `model.json` (the card).

Both files are written to temporary names and `os.replace`d, weights first; the card carries the
weights' sha256, so a card never describes weights other than its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from models.config import code_version
from models.errors import CheckpointError
from models.network import Classifier, MetaNet, build_metanet

WEIGHTS = "model.safetensors"
CARD = "model.json"
FORMAT_VERSION = 1
# Read once: os.umask can only be read by setting it, which is not thread-safe later on.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _atomic_write(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        # mkstemp creates 0600; give the file the permissions a plain open() would (umask applies),
        # so workers and API processes running as other users can read checkpoints.
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(directory: Path | str, tensors: dict[str, torch.Tensor], card: dict[str, Any]) -> None:
    """Write weights and card atomically into `directory` (created if needed)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / WEIGHTS
    contiguous = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    _atomic_write(weights, lambda tmp: save_file(contiguous, tmp))
    card = {**card, "format_version": FORMAT_VERSION, "code_version": code_version(),
            "weights_sha256": _sha256(weights)}
    text = json.dumps(card, indent=2, sort_keys=False)
    _atomic_write(directory / CARD, lambda tmp: Path(tmp).write_text(text + "\n"))


def load_checkpoint(directory: Path | str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read tensors and card; refuses anything that is not valid safetensors, never unpickles."""
    directory = Path(directory)
    weights, card_path = directory / WEIGHTS, directory / CARD
    if not weights.exists() or not card_path.exists():
        raise CheckpointError(f"no checkpoint in {directory} (expected {WEIGHTS} and {CARD})")
    try:
        card = json.loads(card_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{card_path} is not valid JSON: {exc}") from None
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights} is not a valid safetensors file ({exc}); refusing to load it") from None
    expected = card.get("weights_sha256")
    if expected and expected != _sha256(weights):
        raise CheckpointError(f"{weights} does not match the sha256 recorded in {card_path}")
    return tensors, card


def record_metrics(directory: Path | str, key: str, value: Any) -> None:
    """Store `value` under `metrics[key]` in a checkpoint's card, leaving the weights alone."""
    directory = Path(directory)
    _, card = load_checkpoint(directory)
    card.setdefault("metrics", {})[key] = value
    text = json.dumps(card, indent=2)
    _atomic_write(directory / CARD, lambda tmp: Path(tmp).write_text(text + "\n"))


def save_base_model(
    directory: Path | str, net: MetaNet, card: dict[str, Any],
    extra_tensors: dict[str, torch.Tensor] | None = None,
) -> None:
    tensors = dict(net.state_dict())
    for k, v in (extra_tensors or {}).items():
        tensors[f"_state.{k}"] = v
    save_checkpoint(directory, tensors, card)


def load_base_model(
    directory: Path | str, device: torch.device | str = "cpu"
) -> tuple[MetaNet, dict[str, Any]]:
    """Rebuild the MetaNet a pretraining run wrote; training-state tensors are ignored."""
    tensors, card = load_checkpoint(directory)
    if card.get("kind") != "base_model":
        raise CheckpointError(f"{directory} holds a {card.get('kind')!r}, not a base model")
    try:
        net = build_metanet(
            backbone=card["backbone"]["name"], filters=card["backbone"]["filters"],
            channels=card["channels"], image_size=card["image_size"], meta_ways=card["meta_ways"],
            num_base_classes=len(card["base_classes"]), mean=card["normalization"]["mean"],
            std=card["normalization"]["std"],
            transfer_head=card.get("hyperparameters", {}).get("transfer_head", "zeros"),
            cosine_scale=card.get("hyperparameters", {}).get("cosine_scale", 10.0),
        )
        net.load_state_dict({k: v for k, v in tensors.items() if not k.startswith("_state.")})
    except (KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{directory}: card and weights disagree: {exc}") from None
    return net.to(device).eval(), card


def save_classifier(directory: Path | str, clf: Classifier, card: dict[str, Any]) -> None:
    card = {**card, "kind": "classifier", "labels": clf.labels}
    save_checkpoint(directory, dict(clf.state_dict()), card)


def load_classifier(directory: Path | str, device: torch.device | str = "cpu") -> tuple[Classifier, dict[str, Any]]:
    from models.backbones import create_backbone

    tensors, card = load_checkpoint(directory)
    if card.get("kind") != "classifier":
        raise CheckpointError(f"{directory} holds a {card.get('kind')!r}, not a classifier")
    try:
        backbone = create_backbone(card["backbone"]["name"], in_channels=card["channels"],
                                   filters=card["backbone"]["filters"])
        head = torch.nn.Linear(tensors["head.weight"].shape[1], tensors["head.weight"].shape[0])
        clf = Classifier(backbone, head, tensors["mean"], tensors["std"], card["labels"])
        if "prototypes" in tensors:  # classifiers trained before open-set scores have none
            clf.set_open_set(tensors["prototypes"], float(tensors["open_set_threshold"]))
        clf.load_state_dict(tensors)
    except (KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{directory}: card and weights disagree: {exc}") from None
    return clf.to(device).eval(), card

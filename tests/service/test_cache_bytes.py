"""The predict cache is bounded in bytes of real classifiers' tensors, evicts the least recently
used first, and counts hits, misses and evictions."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.service.classifier_cache import ClassifierCache, classifier_bytes


@pytest.fixture(scope="module")
def classifiers(builtin_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Four classifiers adapted from the handwriting base model: 3, 3, 3 and 40 classes (a
    larger head)."""
    import torch

    from models.adaptation import adapt
    from models.checkpoint import load_base_model, save_classifier
    from models.config import AdaptConfig

    net, card = load_base_model(builtin_dir / "handwriting")
    root = tmp_path_factory.mktemp("classifiers")
    out = {}
    for name, ways in (("a", 3), ("b", 3), ("c", 3), ("wide", 40)):
        x = torch.rand(2 * ways, card["channels"], card["image_size"], card["image_size"],
                       generator=torch.Generator().manual_seed(ways))
        clf = adapt(net, x, torch.arange(ways).repeat(2), class_names=[f"k{i}" for i in range(ways)],
                    config=AdaptConfig(steps=0))
        save_classifier(root / name, clf, {"backbone": card["backbone"], "channels": card["channels"],
                                           "image_size": card["image_size"]})
        out[name] = root / name
    return out


def test_eviction_by_bytes(classifiers: dict[str, Path]) -> None:
    probe = ClassifierCache(size=100)
    small = classifier_bytes(probe.get("a", classifiers["a"])[0])
    wide = classifier_bytes(probe.get("wide", classifiers["wide"])[0])
    # The size is the tensors': the backbone and a head of one row per class.
    assert wide - small == (40 - 3) * (probe.get("wide", classifiers["wide"])[0].head.in_features + 1) * 4

    cache = ClassifierCache(size=100, max_bytes=2 * small + small // 2)  # room for two small ones
    cache.get("a", classifiers["a"])
    cache.get("b", classifiers["b"])
    cache.get("a", classifiers["a"])  # a is now the most recently used
    cache.get("c", classifiers["c"])
    assert cache.ids() == ["a", "c"]  # b, least recently used, went
    assert cache.bytes == 2 * small
    assert cache.stats() == {"classifiers": 2, "bytes": 2 * small, "max_classifiers": 100,
                             "max_bytes": 2 * small + small // 2, "hits": 1, "misses": 3,
                             "evictions": 1}
    # A larger one evicts as many bytes as it needs.
    cache.get("wide", classifiers["wide"])
    assert cache.ids() == ["c", "wide"] and cache.bytes == small + wide
    # A classifier larger than the whole bound is still served, alone, until the next one.
    tight = ClassifierCache(size=100, max_bytes=small // 2)
    tight.get("a", classifiers["a"])
    assert tight.ids() == ["a"]
    tight.get("b", classifiers["b"])
    assert tight.ids() == ["b"] and tight.bytes == small and tight.evictions == 1


def test_count_bound_and_reload_keep_the_byte_total(classifiers: dict[str, Path]) -> None:
    cache = ClassifierCache(size=2, max_bytes=None)
    for name in ("a", "b", "c"):
        cache.get(name, classifiers[name])
    assert cache.ids() == ["b", "c"] and cache.stats()["evictions"] == 1
    small = cache.bytes // 2
    # A changed card reloads the classifier in place: a miss, and its bytes counted once.
    card = classifiers["c"] / "model.json"
    stamp = card.stat().st_mtime
    os.utime(card, (stamp + 5, stamp + 5))
    cache.get("c", classifiers["c"])
    assert cache.ids() == ["b", "c"] and cache.bytes == 2 * small and cache.misses == 4
    cache.evict("b")
    assert cache.bytes == small and cache.ids() == ["c"]

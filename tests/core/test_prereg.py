"""Issue 26's design: the prereg profiles, per-method choices, the validation sweep's rule, and
the many-shot, many-way episodes miniImageNet-lite must supply."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from benchmarks import table1
from benchmarks.prereg_sweep import candidates, winner
from benchmarks.table1 import PREREG_METHODS, PROFILES, method_config
from models.data import ImageSet, concat
from models.episodes import EpisodeSampler
from models.loaders import load_dataset


def test_many_way_many_shot_episodes_on_miniimagenet_lite(shared_data: Path) -> None:
    """35-way 100-shot episodes with 20 queries a class come from the 36 unseen classes: every
    class distinct, 100 + 20 distinct images each, support and queries disjoint."""
    root = shared_data / "miniimagenet-lite"
    unseen = concat([load_dataset(root / s, image_size=84, channels=3) for s in ("val", "test")])
    assert unseen.num_classes == 36 and min(unseen.class_counts()) >= 120
    sampler = EpisodeSampler(unseen.labels, ways=35, shots=100, queries=20, seed=[2019, 35, 100, 20])
    for _ in range(2):
        ep = sampler.sample()
        assert len(set(ep.classes.tolist())) == 35
        assert len(ep.support) == 3500 and len(ep.query) == 700
        assert not set(ep.support.tolist()) & set(ep.query.tolist())
        for label, cls in enumerate(ep.classes):
            picked = torch.cat([ep.support[ep.support_labels == label], ep.query[ep.query_labels == label]])
            assert (unseen.labels[picked] == int(cls)).all() and len(set(picked.tolist())) == 120
    with pytest.raises(Exception, match="the smallest class has 120"):
        EpisodeSampler(unseen.labels, ways=5, shots=101, queries=20)


def test_prereg_profiles_follow_the_preregistration() -> None:
    omniglot, mini = PROFILES[("omniglot", "prereg")], PROFILES[("miniimagenet-lite", "prereg")]
    assert (omniglot.ways, omniglot.shots, omniglot.episodes) == ([5, 20, 35], [1, 5, 15], 200)
    assert (mini.ways, mini.shots) == ([5, 20, 35], [1, 5, 100])
    assert (mini.episodes_for(1), mini.episodes_for(5), mini.episodes_for(100)) == (200, 200, 20)
    assert omniglot.budget_passes * 4 == PROFILES[("omniglot", "prereg-long")].budget_passes
    assert mini.budget_passes * 2 == PROFILES[("miniimagenet-lite", "prereg-long")].budget_passes
    assert method_config("mtl-protonet", omniglot).beta == 0.75
    assert method_config("mtl-reptile", omniglot).beta == 0.5
    # A per-method choice reaches that method's config only; "rotations" is not a config field.
    chosen = replace(omniglot, per_method={"protonet": {"ways": 20, "rotations": True}})
    assert method_config("protonet", chosen).ways == 20 and method_config("mtl-protonet", chosen).ways == 5
    assert chosen.method_rotations("protonet") and not chosen.method_rotations("transfer")


def test_the_sweeps_candidates_and_its_tie_rule() -> None:
    assert candidates("omniglot", "protonet") == [
        {"ways": 5, "rotations": False}, {"ways": 20, "rotations": False},
        {"ways": 5, "rotations": True}, {"ways": 20, "rotations": True}]
    assert candidates("omniglot", "transfer") == [{"ways": 5, "rotations": False}, {"ways": 5, "rotations": True}]
    assert candidates("miniimagenet-lite", "mtl-protonet") == [{"ways": 5, "rotations": False},
                                                                {"ways": 20, "rotations": False}]
    assert set(PREREG_METHODS) == {"transfer", "protonet", "mtl-protonet", "mtl-reptile"}
    rows: list[dict[str, Any]] = [{"candidate": "simple", "score": 0.9}, {"candidate": "wide", "score": 0.9},
                                  {"candidate": "other", "score": 0.8}]
    assert winner(rows)["candidate"] == "simple"
    rows[2]["score"] = 0.91
    assert winner(rows)["candidate"] == "other"


def test_a_methods_rotations_choice_turns_its_base_classes_only(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, omniglot_background: ImageSet,
) -> None:
    smoke = PROFILES[("omniglot", "smoke")]
    monkeypatch.setitem(PROFILES, ("omniglot", "smoke-rotations"),
                        replace(smoke, shots=[1], per_method={"transfer": {"rotations": True}}))
    table1.run("omniglot", "smoke-rotations", tmp_path, ["transfer", "protonet"], "cpu")
    report = json.loads((tmp_path / "results.json").read_text())
    classes = {}
    for method in ("transfer", "protonet"):
        card = json.loads((Path(report["methods"][method]["checkpoint"]) / "model.json").read_text())
        classes[method] = card["data"]["num_classes"]
    assert classes == {"transfer": 4 * omniglot_background.num_classes,
                       "protonet": omniglot_background.num_classes}


def test_a_prereg_run_needs_the_methods_validation_choice(tmp_path: Path) -> None:
    """A method whose sweep has not been entered (PREREG_CHOICES) cannot be run, let alone scored;
    the ones entered match the sweep's committed winners exactly."""
    missing = [m for m in PREREG_METHODS if m not in table1.PREREG_CHOICES["miniimagenet-lite"]]
    assert missing, "every choice is entered: pick another way to exercise the refusal"
    with pytest.raises(SystemExit, match="no validation choice entered for miniimagenet-lite"):
        table1.run("miniimagenet-lite", "prereg", tmp_path, missing[:1], "cpu")
    sweeps = Path(table1.REPO) / "benchmarks" / "results" / "prereg-sweep"
    for dataset, chosen in table1.PREREG_CHOICES.items():
        for method, choice in chosen.items():
            sweep = json.loads((sweeps / f"{dataset}-{method}.json").read_text())
            assert sweep["complete"] and choice == sweep["winner"], (dataset, method)

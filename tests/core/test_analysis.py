"""The pre-registered analysis (benchmarks/analysis.py) on synthetic data with known answers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks.analysis import (
    Comparison,
    analyse,
    bootstrap_means,
    claim_holds,
    holm_adjust,
    paired_differences,
    write_analysis,
)


def synthetic(mean: float, *, seeds: int = 3, episodes: int = 200, seed_sd: float = 0.0,
              episode_sd: float = 0.05, rng_seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(rng_seed)
    per_seed = mean + seed_sd * rng.standard_normal((seeds, 1))
    shared = episode_sd * rng.standard_normal((1, episodes))  # episode difficulty, shared by seeds
    return per_seed + shared + 0.01 * rng.standard_normal((seeds, episodes))


def test_known_better_as_good_and_worse() -> None:
    family = [Comparison((5, 1), "transfer", synthetic(+0.03)),
              Comparison((5, 5), "transfer", synthetic(-0.001, episode_sd=0.01, rng_seed=1)),
              Comparison((20, 1), "transfer", synthetic(-0.03, rng_seed=2))]
    verdicts = analyse(family, margin=0.005, resamples=4000)
    assert [v.verdict for v in verdicts] == ["better", "as good", "worse"]
    assert verdicts[0].lower > 0 > verdicts[2].upper
    assert verdicts[0].difference == pytest.approx(family[0].differences.mean())
    assert claim_holds(verdicts) == {(5, 1): True, (5, 5): True, (20, 1): False}


def test_holm_adjusts_in_step_down_order() -> None:
    assert holm_adjust([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm_adjust([0.5]) == [0.5]
    assert holm_adjust([0.6, 0.6]) == [1.0, 1.0]


def test_a_marginal_win_alone_is_not_one_among_many() -> None:
    """Holm: the same small effect is *better* on its own and not in a family of 12."""
    noise = synthetic(0.0, episode_sd=0.0, rng_seed=3)
    noise -= noise.mean()
    sd = bootstrap_means(noise, resamples=4000, rng=np.random.default_rng(9)).std()
    edge = noise + 2.4 * sd  # one-sided p about 0.008: below 0.05, above 0.05 / 12
    alone = analyse([Comparison((5, 1), "transfer", edge)], margin=0.005, resamples=4000)
    assert alone[0].verdict == "better"
    nulls = [Comparison((20, k), "protonet", synthetic(0.0, rng_seed=10 + k, episode_sd=0.0))
             for k in range(11)]
    among = analyse([Comparison((5, 1), "transfer", edge), *nulls], margin=0.005, resamples=4000)
    assert among[0].verdict != "better"
    assert among[0].lower < alone[0].lower  # a wider interval at its corrected level


def test_seeds_that_disagree_widen_the_interval() -> None:
    """Three seeds at +4, 0 and -2 points with tiny episode noise: the episodes alone would call
    it a win; the seed level of the bootstrap does not."""
    d = np.stack([np.full(200, v) for v in (0.04, 0.0, -0.02)])
    d = d + 0.005 * np.random.default_rng(0).standard_normal(d.shape)
    one_level = np.random.default_rng(1)
    episode_only = [d[:, one_level.integers(0, 200, 200)].mean() for _ in range(2000)]
    assert np.quantile(episode_only, 0.025) > 0
    verdict = analyse([Comparison((5, 1), "transfer", d)], margin=0.005, resamples=4000)[0]
    assert verdict.verdict == "worse" and verdict.lower < -0.005
    assert verdict.seed_differences == pytest.approx([0.04, 0.0, -0.02], abs=0.002)


def test_bootstrap_centres_on_the_seed_mean_difference_and_checks_shapes() -> None:
    d = synthetic(0.02, seed_sd=0.01)
    boots = bootstrap_means(d, resamples=3000, rng=np.random.default_rng(0))
    assert abs(boots.mean() - d.mean()) < 0.003
    assert paired_differences([[1.0, 0.5]], [[0.5, 0.5]]).tolist() == [[0.5, 0.0]]
    with pytest.raises(ValueError, match="equal"):
        paired_differences([[1.0, 0.5]], [[0.5]])


def test_reports_of_three_seeds_give_the_tables_verdicts(tmp_path: Path) -> None:
    """Three seeds' Table 1 reports in, analysis.json / .md / .png out: MTL 3 points above
    Transfer at 5-way 1-shot, 3 points below ProtoNet at 20-way 1-shot."""
    rng = np.random.default_rng(0)

    def report(seed: int) -> dict[str, Any]:
        shared = rng.uniform(0.5, 0.9, size=(2, 100))  # episode difficulty, per cell
        means = {"mtl-protonet": (0.03, 0.0), "transfer": (0.0, 0.0), "protonet": (0.0, 0.03)}
        cells = [{"method": m, "ways": w, "shots": 1, "accuracy": 0.0,
                  "per_episode": (shared[i] + means[m][i] + 0.01 * rng.standard_normal(100)).tolist()}
                 for m in means for i, w in enumerate((5, 20))]
        for c in cells:
            c["accuracy"] = float(np.mean(c["per_episode"]))
        return {"cells": cells, "command": f"seed {seed}",
                "methods": {m: {"config": {"seed": seed}} for m in means}}

    reports = [report(s) for s in range(3)]
    verdicts = write_analysis(reports, "omniglot", "mtl-protonet", ["transfer", "protonet"], tmp_path)
    by = {(v.cell, v.baseline): v.verdict for v in verdicts}
    assert by[((5, 1), "transfer")] == "better" and by[((20, 1), "protonet")] == "worse"
    saved = json.loads((tmp_path / "analysis.json").read_text())
    assert saved["claim"] == {"5x1": True, "20x1": False} and saved["seeds"] == 3
    table = (tmp_path / "analysis.md").read_text()
    assert "| 20-way 1-shot |" in table and table.count("| no |") == 1
    assert (tmp_path / "analysis.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="different pretraining seed"):
        write_analysis([reports[0], reports[0]], "omniglot", "mtl-protonet", ["transfer"], tmp_path)

"""The pre-registered analysis of a multi-seed Table 1 (docs/preregistration.md), pure Python.

For one MTL method against one baseline in one cell, the data are per-episode accuracies of both
for each pretraining seed, on the same seeded episodes (the episodes do not depend on the seed).
The effect is the seed-mean paired difference: the mean over seeds of the mean over episodes of
MTL minus baseline.

Its uncertainty comes from a two-level bootstrap: each replicate draws the seeds with
replacement, then the episodes with replacement (one draw of episode indices applied to every
drawn seed, since every seed was scored on the same episodes: the design is crossed, and
resampling episodes independently per seed would count their shared difficulty as independent).

Every cell x baseline comparison of a report is one family, corrected with Holm's step-down
method, twice: for superiority (H0: difference <= 0) and for non-inferiority (H0: difference <=
-margin). The verdict of a comparison is *better* when superiority is rejected, *as good* when
only non-inferiority is, *worse* otherwise. The paper's claim holds in a cell when MTL is at least
as good as every baseline there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# One-sided: the lower end of a two-sided 95% interval (docs/preregistration.md).
ALPHA = 0.025
RESAMPLES = 10_000
# Non-inferiority margins (accuracy, not percentage points), fixed in docs/preregistration.md.
MARGINS = {"omniglot": 0.005, "miniimagenet-lite": 0.010}


@dataclass(frozen=True)
class Comparison:
    """One MTL method against one baseline in one cell, over seeds and episodes."""

    cell: tuple[int, int]  # (ways, shots)
    baseline: str
    differences: np.ndarray  # (seeds, episodes): MTL minus baseline, per seed and episode


@dataclass(frozen=True)
class Verdict:
    cell: tuple[int, int]
    baseline: str
    seeds: int
    episodes: int
    difference: float  # the seed-mean paired difference
    seed_differences: list[float]  # each seed's mean paired difference
    lower: float  # lower bound at the comparison's Holm-corrected level (superiority order)
    upper: float  # the matching upper bound
    p_better: float  # Holm-adjusted one-sided p-value against difference <= 0
    p_as_good: float  # Holm-adjusted one-sided p-value against difference <= -margin
    verdict: str  # "better", "as good" or "worse"


def paired_differences(mtl: Sequence[Sequence[float]], baseline: Sequence[Sequence[float]]) -> np.ndarray:
    """(seeds, episodes) MTL minus baseline; both are per-seed lists of per-episode accuracies on
    the same episodes, seeds in the same order."""
    a, b = np.asarray(mtl, dtype=float), np.asarray(baseline, dtype=float)
    if a.shape != b.shape or a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 2:
        raise ValueError(f"need equal (seeds, episodes) arrays with at least 2 episodes, got "
                         f"{a.shape} and {b.shape}")
    return a - b


def bootstrap_means(differences: np.ndarray, *, resamples: int = RESAMPLES,
                    rng: np.random.Generator) -> np.ndarray:
    """`resamples` seed-mean differences of the two-level bootstrap (seeds, then shared episodes)."""
    seeds, episodes = differences.shape
    out = np.empty(resamples)
    # In chunks: a (chunk, seeds, episodes) gather stays small in memory.
    chunk = max(1, 2_000_000 // max(1, seeds * episodes))
    for start in range(0, resamples, chunk):
        n = min(chunk, resamples - start)
        s = rng.integers(0, seeds, size=(n, seeds))
        e = rng.integers(0, episodes, size=(n, episodes))
        drawn = differences[s[:, :, None], e[:, None, :]]
        out[start:start + n] = drawn.mean(axis=(1, 2))
    return out


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input's order."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def analyse(comparisons: Sequence[Comparison], *, margin: float, alpha: float = ALPHA,
            resamples: int = RESAMPLES, seed: int = 0) -> list[Verdict]:
    """The verdict of every comparison of one family (a report's cells x baselines)."""
    rng = np.random.default_rng(seed)
    boots = [bootstrap_means(c.differences, resamples=resamples, rng=rng) for c in comparisons]
    # One-sided bootstrap p-values; +1 in both counts so that no p-value is exactly 0.
    p_better = [(np.sum(b <= 0.0) + 1) / (len(b) + 1) for b in boots]
    p_as_good = [(np.sum(b <= -margin) + 1) / (len(b) + 1) for b in boots]
    adj_better, adj_as_good = holm_adjust(p_better), holm_adjust(p_as_good)
    # Each comparison's interval at the level Holm's order gives it (each side `level`).
    m = len(comparisons)
    rank = {i: r for r, i in enumerate(sorted(range(m), key=lambda i: p_better[i]))}
    verdicts = []
    for i, (c, b) in enumerate(zip(comparisons, boots, strict=True)):
        level = alpha / (m - rank[i])
        lower, upper = np.quantile(b, [level, 1 - level])
        if adj_better[i] < alpha:
            word = "better"
        elif adj_as_good[i] < alpha:
            word = "as good"
        else:
            word = "worse"
        verdicts.append(Verdict(
            cell=c.cell, baseline=c.baseline, seeds=c.differences.shape[0],
            episodes=c.differences.shape[1], difference=float(c.differences.mean()),
            seed_differences=[float(v) for v in c.differences.mean(axis=1)],
            lower=float(lower), upper=float(upper), p_better=float(adj_better[i]),
            p_as_good=float(adj_as_good[i]), verdict=word))
    return verdicts


def claim_holds(verdicts: Sequence[Verdict]) -> dict[tuple[int, int], bool]:
    """Per cell: whether MTL is at least as good as every baseline compared there."""
    cells: dict[tuple[int, int], bool] = {}
    for v in verdicts:
        cells[v.cell] = cells.get(v.cell, True) and v.verdict in ("better", "as good")
    return cells

"""The pre-registered analysis of a multi-seed Table 1 (docs/preregistration.md).

    python -m benchmarks.analysis --dataset omniglot --reports RUN_SEED0 RUN_SEED1 RUN_SEED2 --out DIR


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
from dataclasses import asdict, dataclass
from pathlib import Path

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


# ----------------------------------------------------------------------------- reports


def comparisons_from_reports(reports: Sequence[dict], mtl: str, baselines: Sequence[str]) -> list[Comparison]:
    """The family of `mtl` against each baseline in every cell that all `reports` (one a seed,
    Table 1 results.json) hold for both methods, on their shared episodes."""
    per_seed: list[dict[tuple[str, int, int], list[float]]] = [
        {(c["method"], c["ways"], c["shots"]): c["per_episode"] for c in r["cells"]} for r in reports]
    seeds = [r["methods"][mtl]["config"]["seed"] for r in reports if mtl in r.get("methods", {})]
    if len(set(seeds)) != len(reports):
        raise ValueError(f"every report must hold {mtl} from a different pretraining seed, got seeds {seeds}")
    cells = sorted({(w, k) for cells in per_seed for (m, w, k) in cells if m == mtl})
    family = []
    for ways, shots in cells:
        for baseline in baselines:
            keys = [(mtl, ways, shots), (baseline, ways, shots)]
            if not all(k in cells_ for cells_ in per_seed for k in keys):
                continue
            family.append(Comparison((ways, shots), baseline, paired_differences(
                [s[keys[0]] for s in per_seed], [s[keys[1]] for s in per_seed])))
    return family


def seed_mean_accuracy(reports: Sequence[dict], method: str, cell: tuple[int, int]) -> float:
    values = [c["accuracy"] for r in reports for c in r["cells"]
              if c["method"] == method and (c["ways"], c["shots"]) == cell]
    return float(np.mean(values))


def write_analysis(reports: Sequence[dict], dataset: str, mtl: str, baselines: Sequence[str],
                   out: Path, note: str = "") -> list[Verdict]:
    """analysis.json, analysis.md and analysis.png of one family in `out`."""
    import json

    family = comparisons_from_reports(reports, mtl, baselines)
    if not family:
        raise ValueError(f"no cell holds {mtl} and a baseline in every report")
    margin = MARGINS[dataset]
    verdicts = analyse(family, margin=margin)
    claim = claim_holds(verdicts)
    out.mkdir(parents=True, exist_ok=True)
    (out / "analysis.json").write_text(json.dumps({
        "dataset": dataset, "mtl": mtl, "baselines": list(baselines), "margin": margin,
        "alpha_one_sided": ALPHA, "resamples": RESAMPLES, "seeds": len(reports),
        "preregistration": "docs/preregistration.md", "note": note,
        "verdicts": [asdict(v) for v in verdicts],
        "claim": {f"{w}x{k}": held for (w, k), held in claim.items()},
        "commands": [r.get("command") for r in reports]}, indent=2) + "\n")
    lines = [f"# {mtl} against {', '.join(baselines)} on {dataset}: the pre-registered analysis", "",
             f"{len(reports)} pretraining seeds; seed-mean accuracy (%); difference = {mtl} minus the "
             f"baseline, seed mean, with its Holm-corrected interval (two-level bootstrap); margin "
             f"{100 * margin:.1f} points. {note}".rstrip(), "",
             "| cell | " + " | ".join([mtl, *baselines]) + " | " +
             " | ".join(f"− {b}" for b in baselines) + " | claim holds |",
             "|---|" + "---|" * (1 + 2 * len(baselines) + 1)]
    for cell in sorted(claim):
        accs = [f"{100 * seed_mean_accuracy(reports, m, cell):.2f}" for m in [mtl, *baselines]]
        diffs = []
        for b in baselines:
            v = next((v for v in verdicts if v.cell == cell and v.baseline == b), None)
            diffs.append("–" if v is None else f"{100 * v.difference:+.2f} [{100 * v.lower:+.2f}, "
                         f"{100 * v.upper:+.2f}] {v.verdict}")
        lines.append(f"| {cell[0]}-way {cell[1]}-shot | " + " | ".join(accs + diffs)
                     + f" | {'yes' if claim[cell] else 'no'} |")
    (out / "analysis.md").write_text("\n".join(lines) + "\n")
    _plot(verdicts, margin, f"{mtl}, {dataset}", out / "analysis.png")
    return verdicts


def _plot(verdicts: Sequence[Verdict], margin: float, title: str, path: Path) -> None:
    """Per comparison: each seed's difference as a dot, the corrected interval as a bar, the
    margin as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(verdicts)), 4))
    for i, v in enumerate(verdicts):
        ax.plot([i, i], [100 * v.lower, 100 * v.upper], color="tab:blue", linewidth=3, alpha=0.5)
        ax.scatter([i] * len(v.seed_differences), [100 * d for d in v.seed_differences], color="black", s=12)
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.axhline(-100 * margin, color="tab:red", linestyle="--", linewidth=0.8, label="margin")
    ax.set_xticks(range(len(verdicts)),
                  [f"{v.cell[0]}w{v.cell[1]}s\nvs {v.baseline}" for v in verdicts], fontsize=7)
    ax.set_ylabel("difference (points)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    import argparse
    import json

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=sorted(MARGINS), required=True)
    p.add_argument("--reports", type=Path, nargs="+", required=True,
                   help="Table 1 --out folders, one a pretraining seed")
    p.add_argument("--mtl", default="mtl-protonet", help="the MTL method (default: the primary)")
    p.add_argument("--baselines", default="transfer,protonet")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    reports = [json.loads((d / "results.json").read_text()) for d in args.reports]
    try:
        verdicts = write_analysis(reports, args.dataset, args.mtl, args.baselines.split(","), args.out)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    for v in verdicts:
        print(f"{v.cell[0]:>2}-way {v.cell[1]:>3}-shot vs {v.baseline:<9} {100 * v.difference:+6.2f} "
              f"[{100 * v.lower:+.2f}, {100 * v.upper:+.2f}] {v.verdict}")


if __name__ == "__main__":
    main()

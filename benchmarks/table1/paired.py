"""Best MTL variant against best baseline, paired over the same episodes: per row, per variant,
and with each side's method chosen on validation classes."""

from __future__ import annotations

from typing import Any

from benchmarks.table1.profiles import METHODS


def is_mtl(method: str) -> bool:
    """Whether a method is an MTL variant (the rest are the baselines it is compared with)."""
    return method.startswith("mtl-")


def verdict(difference: float, ci95: float) -> str:
    """'won' if the 95% interval of a difference lies above 0, 'lost' if below, else 'tied'."""
    if difference - ci95 > 0:
        return "won"
    if difference + ci95 < 0:
        return "lost"
    return "tied"


def add_paired_comparison(report: dict[str, Any]) -> None:
    """Set `report["paired"]` and `report["summary"]`: per (ways, shots) row, the best MTL variant
    minus the best baseline (highest mean accuracy of each group), paired over their shared
    episodes.

    A row is left out when it lacks either group, or when either best cell has no per-episode
    accuracies to pair (reports written before they were kept) or they are of unequal length.
    """
    from models.adaptation import paired_difference

    def best(group: list[dict[str, Any]]) -> dict[str, Any] | None:
        # Highest mean wins; an exact tie goes to the method listed first in METHODS, so the
        # choice does not depend on the order the cells were run or merged in.
        return min(group, key=lambda c: (-c["accuracy"], *_listed(c["method"])), default=None)

    rows: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for c in report.get("cells", []):
        rows.setdefault((c["ways"], c["shots"]), []).append(c)
    def pair(ways: int, shots: int, mtl: dict[str, Any] | None,
             base: dict[str, Any] | None) -> list[dict[str, Any]]:
        """`mtl` minus `base` over their shared episodes, or nothing when they cannot pair."""
        if mtl is None or base is None:
            return []
        a, b = mtl.get("per_episode"), base.get("per_episode")
        if not a or not b or len(a) != len(b) or len(a) < 2:
            return []
        difference, ci95 = paired_difference(a, b)
        return [{"ways": ways, "shots": shots, "best_mtl": mtl["method"],
                 "best_baseline": base["method"], "difference": difference, "ci95": ci95,
                 "verdict": verdict(difference, ci95)}]

    paired: list[dict[str, Any]] = []
    # The paper's own claim, per variant: MTL-X against the better of Transfer and X itself.
    per_variant: list[dict[str, Any]] = []
    for (ways, shots), cells in sorted(rows.items()):
        paired += pair(ways, shots, best([c for c in cells if is_mtl(c["method"])]),
                       best([c for c in cells if not is_mtl(c["method"])]))
        by_method = {c["method"]: c for c in cells}
        for variant in (m for m in METHODS if is_mtl(m) and m in by_method):
            own = [by_method[m] for m in ("transfer", variant.removeprefix("mtl-")) if m in by_method]
            per_variant += pair(ways, shots, by_method[variant], best(own))
    report["paired"] = paired
    report["summary"] = _tally(paired)
    report["per_variant"] = per_variant
    # The same comparison with each side's method chosen on validation classes, not on the very
    # episodes it is then scored on (picking the best of four MTL variants and of five baselines
    # per cell by their test means biases the interval that follows).
    picked = {side: validation_pick(report, side) for side in ("mtl", "baseline")}
    by_validation: list[dict[str, Any]] = []
    if picked["mtl"] and picked["baseline"]:
        for (ways, shots), cells in sorted(rows.items()):
            by_method = {c["method"]: c for c in cells}
            by_validation += pair(ways, shots, by_method.get(picked["mtl"]), by_method.get(picked["baseline"]))
    report["paired_by_validation"] = by_validation
    report["summary_by_validation"] = _tally(by_validation)


def _tally(pairs: list[dict[str, Any]]) -> dict[str, int]:
    """How many paired rows were won, tied and lost."""
    return {v: sum(p["verdict"] == v for p in pairs) for v in ("won", "tied", "lost")}


def _listed(method: str) -> tuple[int, str]:
    """A method's place in METHODS, the tie-break wherever two methods score exactly alike."""
    return (METHODS.index(method) if method in METHODS else len(METHODS), method)


def validation_score(info: dict[str, Any]) -> float | None:
    """A method's standing on validation classes: the last point of its training curve (5-way
    1-shot), the better of fine-tuning and the prototype probe; None without a curve."""
    curve = info.get("validation") or []
    if not curve:
        return None
    last = curve[-1]
    return max(last.get("accuracy", 0.0), last.get("probe_accuracy", 0.0))


def validation_pick(report: dict[str, Any], side: str) -> str | None:
    """The MTL variant (`side` "mtl") or baseline ("baseline") of a report that stands highest on
    validation classes, or None when any scored method of that side has no training curve (the
    choice would then be among some of them only). An exact tie goes to the one listed first in
    METHODS."""
    scored = {c["method"] for c in report.get("cells", []) if is_mtl(c["method"]) == (side == "mtl")}
    methods = report.get("methods", {})
    scores = {m: validation_score(methods.get(m, {})) for m in scored}
    if not scores or any(v is None for v in scores.values()):
        return None
    return min(scores, key=lambda m: (-(scores[m] or 0.0), *_listed(m)))

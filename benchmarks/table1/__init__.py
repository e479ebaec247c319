"""The paper's Table 1, reproduced: every method pretrained on the base classes with the same
budget, then evaluated on the same seeded episodes of unseen classes.

    mtl bench table1 --dataset omniglot|omniglot-vinyals|miniimagenet-lite --profile P [--out DIR]

(Each data set has profiles of its own: see `--profile`.)

Budget: every method gets the same number of image forward+backward passes
(`PretrainConfig.passes_per_iteration` x iterations), so a method whose iteration does more work
runs fewer iterations. Hyperparameters come from `RECIPES` below, chosen on validation classes only
(`benchmarks/tune.py`, results in `benchmarks/results/tuning-*.jsonl`).

The run is resumable: checkpoints live in `runs/bench/<dataset>-<profile>/<method>` and finished
cells are kept in `results.json`; running the same command again continues where it stopped.

On several cores, run disjoint `--methods` subsets side by side (one process each, each with its
own `--out`), then combine them: `mtl bench table1 --dataset D --profile P --merge DIR1 DIR2`.

Besides each method's accuracy, every row compares the best MTL variant with the best baseline on
the same episodes (a paired difference with its 95% interval: won, tied or lost), and the report
counts the rows each way (`paired` and `summary` in results.json). The best of each side is
picked on the very episodes it is then scored on, which flatters the winner; so the report also
gives the comparison with each side's method chosen on validation classes, one pair for every
row (`paired_by_validation`, `summary_by_validation`).
"""

# The package (the docstring above is `mtl bench table1 --help`'s text): `profiles` (methods,
# profiles, recipes), `data` (the classes a run uses), `scoring` (a run), `paired` (best MTL
# against best baseline), `report` (the report's files, and merging runs), `cli` (the options;
# `python -m benchmarks.table1`). Every name other code imports from here is re-exported.

from __future__ import annotations

from benchmarks.harness import REPO, git_commit, machine_description
from benchmarks.splits import DATASETS
from benchmarks.table1.cli import add_arguments, main
from benchmarks.table1.data import Splits, load_splits
from benchmarks.table1.paired import (
    add_paired_comparison,
    is_mtl,
    validation_pick,
    validation_score,
    verdict,
)
from benchmarks.table1.profiles import (
    FAIR_ADAPTATION,
    FAIR_BASE,
    FAIR_CANDIDATES,
    FAIR_METHODS,
    FINE_TUNE,
    LEGACY_ADAPTATION,
    LEGACY_BASE,
    LEGACY_METHODS,
    METHODS,
    PAPER_COLUMNS,
    PREREG_CHOICES,
    PREREG_METHODS,
    PREREG_PROFILES,
    PREREG_VERSION,
    PROFILES,
    RECIPES,
    SUPERVISED,
    UNSEEN_CLASSES,
    Profile,
    method_config,
)
from benchmarks.table1.report import (
    MergeError,
    merge,
    write_chart,
    write_curves,
    write_markdown,
    write_report,
)
from benchmarks.table1.scoring import (
    CURVE_EPISODES,
    choice_cells,
    choose_adaptation,
    run,
    validation_curve,
)
from models.config import PRECISIONS  # torch-free

__all__ = [
    "CURVE_EPISODES", "DATASETS", "FAIR_ADAPTATION", "FAIR_BASE", "FAIR_CANDIDATES",
    "FAIR_METHODS", "FINE_TUNE", "LEGACY_ADAPTATION", "LEGACY_BASE", "LEGACY_METHODS", "METHODS",
    "PAPER_COLUMNS", "PRECISIONS", "PREREG_CHOICES", "PREREG_METHODS", "PREREG_PROFILES",
    "PREREG_VERSION", "PROFILES", "RECIPES", "REPO", "SUPERVISED", "UNSEEN_CLASSES", "MergeError",
    "Profile", "Splits", "add_arguments", "add_paired_comparison", "choice_cells",
    "choose_adaptation", "git_commit", "is_mtl", "load_splits", "machine_description", "main",
    "merge", "method_config", "run", "validation_curve", "validation_pick", "validation_score",
    "verdict", "write_chart", "write_curves", "write_markdown", "write_report",
]

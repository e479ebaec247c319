"""Marks for the whole suite. The fast loop is `pytest -m "not slow"` (under a minute on the
2-core development machine); these ML-core tests run real training, subprocesses or whole data
sets, so they are marked slow here, by name, beside the service tests' own marks."""

from __future__ import annotations

import os

import pytest

from app.infra.threads import default_torch_threads, limit_threads

# The suite runs beside the workers and servers it starts (and often beside other work): this
# process and every child it starts use MTL_TORCH_THREADS threads (default: half the cores), as
# under `mtl serve`, instead of each taking every core.
os.environ.setdefault("MTL_TORCH_THREADS", str(default_torch_threads()))
limit_threads(int(os.environ["MTL_TORCH_THREADS"]))

SLOW = (
    "tests/core/test_bench.py::",  # the Table 1 harness end to end
    "tests/core/test_cli_and_real_data.py::",  # `mtl` in subprocesses, real pretraining runs
    "tests/core/test_tune.py::test_miniimagenet_validation_classes_come_from_train_never_val",
    "tests/core/test_data.py::test_omniglot_vinyals_",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.nodeid.startswith(SLOW):
            item.add_marker(pytest.mark.slow)

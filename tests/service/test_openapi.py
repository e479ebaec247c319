"""The API against its own OpenAPI document (schemathesis), on both setups: no 5xx, no status
code the document does not list, no response body that does not match its schema. Bounded: a
fixed number of generated cases per operation, and a deadline for the whole run."""

from __future__ import annotations

import time
from typing import Any

import pytest
import schemathesis  # a dev dependency (pyproject.toml): CI runs this test, never skips it
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.infra.settings import Settings
from tests.service.conftest import new_key
from tests.utils.images import small_zip

# Real processes or long runs: outside the fast loop (`pytest -m "not slow"`).
pytestmark = pytest.mark.slow

EXAMPLES_PER_OPERATION = 25  # per operation and generation mode (positive, negative)
DEADLINE_S = 150.0  # per setup: a run that takes longer fails
CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance,
          content_type_conformance]


def test_api_matches_its_openapi_document(client: Any, settings: Settings) -> None:
    from schemathesis import GenerationMode

    headers = new_key(settings, "acme", admin=True)
    # Something to find: a dataset and a classifier of the tenant whose key the cases send.
    ds = client.post("/v1/datasets", headers=headers, data={"name": "set"},
                     files={"archive": ("set.zip", small_zip())}).json()
    client.post("/v1/classifiers", headers=headers, json={"name": "c", "dataset_id": ds["id"]})
    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    started = time.monotonic()
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @hypothesis_settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None,
                                 derandomize=True, database=None, phases=[Phase.generate],
                                 suppress_health_check=list(HealthCheck))
            def run(case: Any) -> None:
                assert time.monotonic() - started < DEADLINE_S, "over the contract run's limit"
                case.call_and_validate(headers=headers, checks=CHECKS)

            try:
                run()
            except Unsatisfiable:
                pass  # no parameters, no body: nothing to make invalid (/healthz, /readyz)
            except Exception as exc:  # every failing operation is reported, not just the first
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    assert operations >= 19
    assert not failures, "\n\n".join(failures)

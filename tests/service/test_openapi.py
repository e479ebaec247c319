"""The API against its own OpenAPI document (schemathesis), on both setups: no 5xx, no status
code the document does not list, no response body that does not match its schema. Bounded: a
fixed number of generated cases per operation, and a deadline for the whole run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
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


def test_a_standard_generator_makes_every_error_type(client: Any, tmp_path: Path) -> None:
    """openapi-python-client on the served document: no warning, and every error status each
    operation declares is parsed as the one shared ErrorResponse (none dropped as duplicates)."""
    spec = client.get("/openapi.json").json()
    assert spec["components"]["schemas"]["ErrorResponse"]["required"] == ["detail"]
    (tmp_path / "openapi.json").write_text(json.dumps(spec))
    # The two binary answers (an export's zip, a thumbnail) are bytes to this generator.
    (tmp_path / "config.yml").write_text("content_type_overrides:\n"
                                         "  application/zip: application/octet-stream\n"
                                         "  image/png: application/octet-stream\n")
    generator = Path(sys.executable).with_name("openapi-python-client")
    done = subprocess.run([generator, "generate", "--path", "openapi.json", "--config", "config.yml",
                           "--output-path", "generated", "--overwrite"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PATH": f"{generator.parent}:{os.environ['PATH']}"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "warning" not in (done.stdout + done.stderr).lower(), done.stdout + done.stderr
    modules = {p.stem: p.read_text() for p in (tmp_path / "generated").rglob("api/*/*.py")}
    declared = 0
    for operations in spec["paths"].values():
        for operation in operations.values():
            code = modules[re.sub("_+", "_", operation["operationId"])]  # as the generator names it
            for status, answer in operation["responses"].items():
                if not status.startswith(("4", "5")):
                    continue
                declared += 1
                assert answer["content"]["application/json"]["schema"] == {
                    "$ref": "#/components/schemas/ErrorResponse"}, (operation["operationId"], status)
                assert f"response.status_code == {status}:" in code, (operation["operationId"], status)
                assert "ErrorResponse.from_dict(response.json())" in code
    assert declared >= 60

"""The client is its own distribution: `pip install ./clients/python` in a fresh virtual
environment brings httpx and pydantic, nothing of the service, and `import mtl_client` is quick."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

from tests.service.conftest import REPO

SERVICE_ONLY = ("torch", "fastapi", "sqlalchemy", "celery", "kombu", "starlette", "numpy")
IMPORT_SECONDS = 0.3


def test_client_installs_and_imports_alone(tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    done = subprocess.run([python, "-m", "pip", "install", "--quiet", REPO / "clients" / "python"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    listed = subprocess.run([python, "-m", "pip", "list", "--format=freeze"], capture_output=True,
                            text=True, check=True).stdout.lower()
    installed = {line.split("==")[0].replace("_", "-") for line in listed.splitlines()}
    assert {"mtl-client", "httpx", "pydantic"} <= installed
    assert not installed & set(SERVICE_ONLY), installed & set(SERVICE_ONLY)
    # Imported outside the repository, so only the installed package can answer.
    # CPU time, not wall time: other tests' processes share the cores and would only add waiting.
    script = ("import sys, time\nt = time.process_time()\nimport mtl_client\n"
              "from mtl_client import Client, ApiError\nfrom mtl_client.models import JobPublic\n"
              "print(time.process_time() - t)\n"
              f"loaded = sorted(m for m in {SERVICE_ONLY!r} if m in sys.modules)\n"
              "assert not loaded, loaded\nassert mtl_client.__file__.startswith(sys.prefix), mtl_client.__file__\n")
    seconds = []
    for _ in range(5):  # the best of five
        run = subprocess.run([python, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                             timeout=60)
        assert run.returncode == 0, run.stderr
        seconds.append(float(run.stdout))
    assert min(seconds) < IMPORT_SECONDS, seconds
    typed = subprocess.run([python, "-c", "import importlib.resources as r; "
                            "print(r.files('mtl_client').joinpath('py.typed').is_file())"],
                           cwd=tmp_path, capture_output=True, text=True, check=True)
    assert typed.stdout.strip() == "True"


def test_the_service_answers_with_the_clients_models() -> None:
    # One definition: the service's bodies are the client's classes, not copies.
    import mtl_client.models as shared

    from app.service import schemas

    for name in ("DatasetPublic", "ClassifierPublic", "JobPublic", "PredictResponse", "Page"):
        assert getattr(schemas, name) is getattr(shared, name)
    assert sys.modules["mtl_client.models"].__file__ is not None

"""The API's documentation: Swagger UI at /docs and ReDoc at /redoc from assets the app serves
itself (no CDN, so they work offline), and the OpenAPI document with summaries, descriptions and
examples.

Conventions this relies on, checked by tests/service/test_docs.py:
- a route's docstring is "Summary.\\n\\nDescription.": its first paragraph becomes the operation's
  summary, the rest its description;
- every JSON body a route takes or gives is a schema in `app.service.schemas` with an example in
  EXAMPLES below (each example is validated against its model by the tests, so it cannot drift).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from app.api.responses import ErrorResponse
from app.service.schemas import PredictRequest

DOCS_ASSETS_URL = "/docs-assets"
# The docs pages may load nothing from outside this server: ReDoc's bundle would fetch its logo
# from a CDN, which this policy blocks in the browser before any request is made (the logo then
# hides itself). Inline scripts and styles are the pages' own (FastAPI's HTML, styled-components).
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; font-src 'self' data:; worker-src 'self' blob:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'"
)

DESCRIPTION = """\
Custom image classifiers from a few labelled images per class, fine-tuned from base models
pretrained with meta-transfer learning.

**Console**: open [/](/) in a browser for the web console (sign in with an API key).

**Authentication**: every `/v1` route needs `Authorization: Bearer <key>`; create one with
`mtl keys create --tenant NAME [--admin]`. Admin routes (`/v1/admin/...`) need an admin key.
Another tenant's dataset, classifier or job is answered with 404, as if it did not exist.

**Errors** are always `{"detail": "<message>"}`, validation errors included.

**Flow**: upload a dataset → create a classifier (202, a training job) → follow the job
(`GET /v1/jobs/{id}/events`, or poll `GET /v1/jobs/{id}`) → predict.
"""

TAGS = [
    {"name": "datasets", "description": "Labelled images: a zip of class folders, or files with labels."},
    {"name": "classifiers", "description": "Classifiers fine-tuned from a base model, and predict."},
    {"name": "jobs", "description": "Training and pretraining runs: progress, live events, cancel."},
    {"name": "base models", "description": "The pretrained networks classifiers start from."},
    {"name": "admin", "description": "Admin keys only: pretraining, the default base model, API keys."},
    {"name": "health", "description": "Probes for load balancers and orchestrators (no key)."},
]

_DS = "5f0c2a9e41b24d7f9a3e6b1c8d2f4a70"
_CLF = "b7e1d3c5a9f24e6b8c0d2f4a6e8b0c1d"
_JOB = "9c1e7a5b3d2f4e6a8b0c1d3e5f7a9b2c"
_TIME = "2026-11-27T10:15:00Z"

_JOB_EXAMPLE: dict[str, Any] = {
    "id": _JOB,
    "kind": "training",
    "status": "running",
    "phase": "final_pass",
    "progress": {"step": 41, "total_steps": 60, "fraction": 0.6833, "loss": 0.52, "eta_seconds": 3.1},
    "metrics": None,
    "error": None,
    "classifier_id": _CLF,
    "base_model_id": "handwriting",
    "created_at": _TIME,
    "started_at": "2026-11-27T10:15:02Z",
    "finished_at": None,
    "attempts": 1,
}

# What a base model's summary and its card share.
_BASE_MODEL: dict[str, Any] = {
    "id": "handwriting",
    "name": "handwriting",
    "algorithm": "protonet",
    "image_size": 28,
    "channels": 1,
    "is_default": False,
    "status": "ready",
}

# Schema name in app.service.schemas -> an example of it.
EXAMPLES: dict[str, Any] = {
    "DatasetPublic": {
        "id": _DS,
        "name": "glyphs",
        "num_images": 25,
        "classes": [{"name": "alpha", "count": 13}, {"name": "beta", "count": 12}],
        "rejected": [{"file": "glyphs/alpha/notes.txt", "reason": "not a decodable image"}],
        "created_at": _TIME,
    },
    "DatasetImagesAdded": {
        "dataset": {
            "id": _DS, "name": "glyphs", "num_images": 27,
            "classes": [{"name": "alpha", "count": 15}, {"name": "beta", "count": 12}],
            "rejected": [], "created_at": _TIME, "revision": 1,
            "edits": [{"revision": 1, "at": _TIME, "change": "added", "images": 2,
                       "labels": ["alpha"], "rejected": 0}],
        },
        "added": 2,
        "rejected": [],
    },
    "DatasetImagePublic": {"id": 101, "filename": "glyphs/alpha/01.png", "label": "beta"},
    "ImageLabel": {"label": "beta"},
    "ClassifierVersionCreate": {"params": {"steps": 50}},
    "DatasetImagePage": {
        "data": [{"id": 101, "filename": "glyphs/alpha/01.png", "label": "alpha"}],
        "count": 13,
        "next_cursor": "WzEwMV0",
    },
    "ClassifierCreate": {
        "name": "glyphs",
        "dataset_id": _DS,
        "params": {"holdout_fraction": 0.2},
    },
    "ClassifierCreated": {"id": _CLF, "status": "queued", "job_id": _JOB},
    "ClassifierPublic": {
        "id": _CLF,
        "name": "glyphs",
        "status": "ready",
        "labels": ["alpha", "beta"],
        "base_model_id": "handwriting",
        "base_model_choice": {
            "rule": "score: leave-one-out accuracy of the 0-step prototype head ...",
            "chosen": "handwriting",
            "candidates": [
                {"base_model_id": "handwriting", "score": 1.0, "margin": 0.56, "images": 25},
                {"base_model_id": "natural", "score": 0.92, "margin": 0.16, "images": 25},
            ],
        },
        "dataset_id": _DS,
        "job_id": _JOB,
        "family_id": _CLF,
        "version": 1,
        "params": {"steps": 30, "learning_rate": 0.1, "batch_size": 0, "holdout_fraction": 0.2},
        "metrics": {
            "holdout_accuracy": 0.8,
            "per_class": [
                {"label": "alpha", "precision": 0.75, "recall": 1.0, "support": 3},
                {"label": "beta", "precision": 1.0, "recall": 0.5, "support": 2},
            ],
            "confusion_matrix": [[3, 0], [1, 1]],
        },
        "created_at": _TIME,
    },
    "JobPublic": _JOB_EXAMPLE,
    "JobCurve": {
        "job_id": _JOB,
        "total_steps": 60,
        "points": [{"step": 1, "loss": 1.61, "phase": "holdout_pass"},
                   {"step": 30, "loss": 0.12, "phase": "holdout_pass"},
                   {"step": 31, "loss": 1.58, "phase": "final_pass"},
                   {"step": 60, "loss": 0.09, "phase": "final_pass"}],
    },
    "HoldoutPage": {
        "data": [{"image_id": 107, "filename": "glyphs/beta/04.png", "label": "beta",
                  "predicted": "alpha", "probability": 0.62, "correct": False}],
        "count": 1,
        "next_cursor": None,
    },
    "PredictRequest": {
        "images": [{"name": "a.png", "base64": "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgABSK+kcQAAAABJRU5ErkJggg=="}],
        "top_k": 3,
    },
    "PredictResponse": {
        "classifier_id": _CLF,
        "version": 1,
        "results": [
            {
                "filename": "a.png",
                "predictions": [
                    {"label": "alpha", "probability": 0.97},
                    {"label": "beta", "probability": 0.03},
                ],
            },
            {"filename": "notes.txt", "error": "not a decodable image"},
        ]
    },
    "BaseModelPublic": {
        **_BASE_MODEL,
        "metrics": {"unseen_classes": {"results": [{"ways": 5, "shots": 1, "accuracy": 0.936}]}},
    },
    "BaseModelCard": {
        **_BASE_MODEL,
        "suits": "handwritten characters and symbols, glyphs and simple line drawings",
        "pretrained_on": "804 classes, 16080 images (omniglot/images_background.npz)",
        "training_seconds": 1512.3,
        "accuracy": [
            {"ways": 5, "shots": 1, "episodes": 100, "accuracy": 0.9361, "ci95": 0.0124},
            {"ways": 20, "shots": 1, "episodes": 100, "accuracy": 0.8317, "ci95": 0.0104},
        ],
        "adaptation": {"steps": 30, "lr": 0.1, "batch_size": 64, "head_init": "prototype"},
    },
    "PretrainingJobCreate": {
        "name": "my-base",
        "dataset_id": _DS,
        "algorithm": "mtl-reptile",
        "params": {"iterations": 2000, "ways": 5, "shots": 2, "queries": 2},
    },
    "PretrainingJobCreated": {"job_id": _JOB, "base_model_id": "3d5f7a9b1c2e4f6a8b0c2d4e6f8a0b1c"},
    "ApiKeyCreate": {"tenant": "acme", "admin": False},
    "ApiKeyCreated": {
        "key": "mtl_1a2b3c4d_Zm9vYmFyYmF6cXV4cXV1eHF1dXg",
        "prefix": "1a2b3c4d",
        "tenant": "acme",
        "scope": "user",
    },
    "ApiKeyPublic": {"prefix": "1a2b3c4d", "tenant": "acme", "scope": "user", "created_at": _TIME},
    "WebhookSigningSecret": {
        "tenant": "acme",
        "secret": "whsec_5b1d0c4f9e2a7b3c8d6e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e",
    },
}

# Responses whose body has no named schema: keyed by (method, path).
INLINE_EXAMPLES: dict[tuple[str, str], Any] = {
    ("get", "/healthz"): {"status": "ok"},
    ("get", "/readyz"): {"status": "ready"},
}

# Multipart request bodies (described by hand in the routes): their text fields' examples.
MULTIPART_EXAMPLES: dict[tuple[str, str], dict[str, Any]] = {
    ("post", "/v1/datasets"): {"name": "glyphs", "labels": ["alpha", "beta"]},
    ("post", "/v1/classifiers/{classifier_id}/predict"): {"top_k": 3},
}

ERROR_EXAMPLES = {
    401: "missing API key: send 'Authorization: Bearer <key>'",
    403: "this route needs an admin key",
    404: f"dataset {_DS} not found",
    409: f"classifier {_CLF} is training; predict needs it trained (status 'ready')",
    413: "too many files; the limit is 10000 (MTL_MAX_FILES)",
    415: "send multipart/form-data",
    422: "name: String should have at least 1 character",
    429: "this key already follows 10 event streams (MTL_MAX_EVENT_STREAMS_PER_KEY); close one first",
    503: "database unreachable: OperationalError",
}


def _schema_name(schema: dict[str, Any]) -> tuple[str | None, bool]:
    """The component name a JSON schema refers to, and whether it is an array of it."""
    if schema.get("type") == "array":
        return _schema_name(schema.get("items") or {})[0], True
    ref = schema.get("$ref", "")
    return (ref.rsplit("/", 1)[-1] or None), False


# A page's `next_cursor` (`app.service.pagination`): opaque to callers.
CURSOR_EXAMPLE = "WyIyMDI1LTAxLTEwVDEwOjA1OjAwKzAwOjAwIiwiOWMxZSJd"


def _example_for(schema: dict[str, Any]) -> Any:
    name, many = _schema_name(schema)
    if name is not None and name.startswith("Page_") and name[5:-1] in EXAMPLES:
        # `Page[X]` of app.service.pagination: one item and the cursor of the next page.
        return {"data": [EXAMPLES[name[5:-1]]], "next_cursor": CURSOR_EXAMPLE}
    if name not in EXAMPLES:
        return None
    return [EXAMPLES[name]] if many else EXAMPLES[name]


def _document(operation: dict[str, Any], method: str, path: str) -> None:
    text = (operation.get("description") or "").strip()
    summary, _, rest = text.partition("\n\n")
    if summary:
        operation["summary"] = " ".join(summary.split()).rstrip(".")
        operation["description"] = rest.strip()
    body = (operation.get("requestBody") or {}).get("content", {})
    if "application/json" in body:
        body["application/json"].setdefault("example", _example_for(body["application/json"]["schema"]))
    if "multipart/form-data" in body and (method, path) in MULTIPART_EXAMPLES:
        props = body["multipart/form-data"]["schema"].get("properties", {})
        for field, value in MULTIPART_EXAMPLES[(method, path)].items():
            props[field]["example"] = value
    for status, response in operation.get("responses", {}).items():
        media = response.get("content", {}).get("application/json")
        if media is None or "example" in media:
            continue
        if status.isdigit() and int(status) in ERROR_EXAMPLES and int(status) >= 400:
            media["example"] = {"detail": ERROR_EXAMPLES[int(status)]}
        elif (method, path) in INLINE_EXAMPLES:
            media["example"] = INLINE_EXAMPLES[(method, path)]
        else:
            example = _example_for(media.get("schema") or {})
            if example is not None:
                media["example"] = example


def openapi_document(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI document, built once."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title,
            version=app.version,
            description=DESCRIPTION,
            routes=app.routes,
            tags=TAGS,
        )
        for path, operations in schema.get("paths", {}).items():
            for method, operation in operations.items():
                _document(operation, method, path)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        # Referred to by hand (every error answer; predict's JSON body beside its form).
        for model in (ErrorResponse, PredictRequest):
            own = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(own.pop("$defs", {}))
            components[model.__name__] = own
        app.openapi_schema = schema
    return app.openapi_schema


def install_docs(app: FastAPI) -> None:
    """Serve /docs, /redoc and their assets; the app must be created with docs_url=None and
    redoc_url=None so that FastAPI's CDN-loading pages are not registered."""
    import fastapi_offline

    assets = Path(fastapi_offline.__file__).parent / "static"
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=assets), name="docs-assets")
    title = f"{app.title}: API"
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        page = get_swagger_ui_html(
            openapi_url=openapi_url,
            title=title,
            swagger_js_url=f"{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS_URL}/favicon.png",
            # No call to the online validator (it would fail offline anyway).
            swagger_ui_parameters={"validatorUrl": None, "persistAuthorization": False},
        )
        page.headers["Content-Security-Policy"] = DOCS_CSP
        return page

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        page = get_redoc_html(
            openapi_url=openapi_url,
            title=title,
            redoc_js_url=f"{DOCS_ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{DOCS_ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )
        page.headers["Content-Security-Policy"] = DOCS_CSP
        return page

    app.openapi = lambda: openapi_document(app)  # type: ignore[method-assign]

"""A typed Python client for the service's v1 API; the `mtl` client commands use it.

    from mtl_client import Client

    with Client() as mtl:                       # MTL_URL and MTL_API_KEY
        dataset = mtl.upload_dataset("glyphs/", name="glyphs")   # a folder of class folders, or a .zip
        created = mtl.create_classifier(dataset.id, name="glyphs", base_model_id="handwriting")
        job = mtl.wait_for_job(created.job_id, progress=lambda j: print(j.progress.step))
        answer = mtl.predict(created.id, ["a.png", "b.png"], top_k=3)

Answers are the API's own response models (`mtl_client.models`, which the service answers with),
so they match the routes exactly.
Every error the service answers is an `ApiError` carrying its status and its message; mistakes
found before anything is sent (a missing file, no API key) are a `ClientError`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypeVar

import httpx
from pydantic import BaseModel

from mtl_client.archives import zip_class_folders
from mtl_client.errors import ApiError, ClientError
from mtl_client.models import FINISHED as FINISHED_STATUSES
from mtl_client.models import (
    ApiKeyPublic,
    BaseModelPublic,
    ClassifierCreated,
    ClassifierPublic,
    DatasetImagePublic,
    DatasetImagesAdded,
    DatasetPublic,
    HoldoutPrediction,
    JobCurve,
    JobPublic,
    Page,
    PredictResponse,
    PretrainingJobCreated,
)

DEFAULT_URL = "http://127.0.0.1:8000"
FINISHED = frozenset(FINISHED_STATUSES)
# Images in one predict request: the service's default limit (MTL_MAX_PREDICT_FILES) is 256.
PREDICT_BATCH = 64
EXPORT_FORMATS = ("onnx", "torchscript", "safetensors")

M = TypeVar("M", bound=BaseModel)
PathLike = str | os.PathLike[str]
ProgressFn = Callable[[JobPublic], None]


class Client:
    """The v1 API at `url` (default MTL_URL, else http://127.0.0.1:8000) with `api_key` (default
    MTL_API_KEY)."""

    def __init__(
        self, url: str | None = None, api_key: str | None = None, *, timeout: float = 120.0
    ) -> None:
        self.url = (url or os.environ.get("MTL_URL") or DEFAULT_URL).rstrip("/")
        key = (api_key if api_key is not None else os.environ.get("MTL_API_KEY") or "").strip()
        if not key:
            raise ClientError(
                "no API key: set MTL_API_KEY (an admin creates one with "
                "`mtl keys create --tenant NAME`)"
            )
        if not all("!" <= c <= "~" for c in key):
            # Never echoed: the HTTP library's own error would print the whole key.
            raise ClientError(
                "the API key holds a space, line break or other character no key has; copy it "
                "again (MTL_API_KEY)"
            )
        self._http = httpx.Client(
            base_url=self.url,
            timeout=timeout,
            headers={"Authorization": f"Bearer {key}", "User-Agent": "mtl-client"},
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------------------- plumbing

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise ApiError(None, f"{self.url} did not answer {method} {path} in time") from None
        except httpx.TransportError as exc:
            raise ApiError(
                None, f"cannot reach the service at {self.url} ({exc}); is it running, and is "
                "MTL_URL right?"
            ) from None
        if response.is_error:
            raise ApiError(response.status_code, _message(response))
        return response

    def _get(self, model: type[M], path: str, **params: Any) -> M:
        query = {k: v for k, v in params.items() if v is not None}
        return model.model_validate(self._request("GET", path, params=query).json())

    # ------------------------------------------------------------------------- datasets

    def upload_dataset(
        self, source: PathLike, *, name: str | None = None, idempotency_key: str | None = None
    ) -> DatasetPublic:
        """Upload a dataset: a folder whose subfolders are the class names, or a .zip of the same
        shape. `name` defaults to the folder's or zip's name. Files the service cannot use are
        listed in the answer's `rejected`, with the reason. The same `idempotency_key` again
        within 24 h answers the first upload's dataset and stores nothing (as on every create)."""
        path = Path(source)
        name = name or path.resolve().stem
        response = self._post_archive("/v1/datasets", path, {"name": name}, idempotency_key)
        return DatasetPublic.model_validate(response.json())

    def add_images(self, dataset_id: str, source: PathLike, *,
                   idempotency_key: str | None = None) -> DatasetImagesAdded:
        """Add a folder of class folders (or a .zip of one) to a dataset: to its classes, or as
        new ones. The answer has the dataset after it, how many were added, what was rejected."""
        response = self._post_archive(f"/v1/datasets/{dataset_id}/images", Path(source), {},
                                      idempotency_key)
        return DatasetImagesAdded.model_validate(response.json())

    def relabel_image(self, dataset_id: str, image_id: int, label: str) -> DatasetImagePublic:
        return DatasetImagePublic.model_validate(self._request(
            "PATCH", f"/v1/datasets/{dataset_id}/images/{image_id}", json={"label": label}).json())

    def remove_image(self, dataset_id: str, image_id: int) -> DatasetPublic:
        return DatasetPublic.model_validate(self._request(
            "DELETE", f"/v1/datasets/{dataset_id}/images/{image_id}").json())

    def _post_archive(self, url: str, path: Path, data: dict[str, str],
                      idempotency_key: str | None) -> httpx.Response:
        """POST a folder of class folders (zipped here) or a .zip as `archive`."""
        if not path.exists():
            raise ClientError(f"{path} does not exist")
        import tempfile  # here, not at the top: `import mtl_client` stays quick
        import zipfile

        with tempfile.TemporaryFile() as spool:
            if path.is_file():
                if not zipfile.is_zipfile(path):
                    raise ClientError(f"{path} is not a .zip file (or give a folder of class folders)")
                archive: IO[bytes] = path.open("rb")
                filename = path.name
            else:
                zip_class_folders(path, spool)
                spool.seek(0)
                archive, filename = spool, f"{path.name}.zip"
            with archive:
                return self._request("POST", url, data=data,
                                     files={"archive": (filename, archive, "application/zip")},
                                     headers=_idempotency(idempotency_key))

    def dataset(self, dataset_id: str) -> DatasetPublic:
        return self._get(DatasetPublic, f"/v1/datasets/{dataset_id}")

    def datasets(self) -> list[DatasetPublic]:
        """Every dataset of this key's tenant, oldest first (all pages)."""
        return list(self._pages(DatasetPublic, "/v1/datasets"))

    def delete_dataset(self, dataset_id: str) -> None:
        """Delete a dataset; classifiers trained on it keep working."""
        self._request("DELETE", f"/v1/datasets/{dataset_id}")

    # ------------------------------------------------------------------------- classifiers

    def create_classifier(
        self,
        dataset_id: str,
        *,
        name: str,
        base_model_id: str | None = None,
        params: dict[str, Any] | None = None,
        callback_url: str | None = None,
        idempotency_key: str | None = None,
    ) -> ClassifierCreated:
        """Start training a classifier on a dataset, from `base_model_id`, or when it is None from
        the ready base model that scores best on the dataset (the job chooses; the classifier's
        `base_model_choice` says how); `params` are the API's `ClassifierParams` (steps, learning_rate, ...); the
        service POSTs the finished job to `callback_url`, signed (docs/service.md)."""
        body: dict[str, Any] = {"name": name, "dataset_id": dataset_id, "params": params or {}}
        if base_model_id is not None:
            body["base_model_id"] = base_model_id
        if callback_url is not None:
            body["callback_url"] = callback_url
        response = self._request("POST", "/v1/classifiers", json=body,
                                 headers=_idempotency(idempotency_key))
        return ClassifierCreated.model_validate(response.json())

    def classifier(self, classifier_id: str) -> ClassifierPublic:
        return self._get(ClassifierPublic, f"/v1/classifiers/{classifier_id}")

    def classifiers(self) -> list[ClassifierPublic]:
        """Every classifier of this key's tenant, oldest first (all pages)."""
        return list(self._pages(ClassifierPublic, "/v1/classifiers"))

    def create_version(self, classifier_id: str, *, params: dict[str, Any] | None = None,
                       callback_url: str | None = None) -> ClassifierCreated:
        """Retrain a classifier on its dataset as it is now: a new version (`params` change the
        newest version's); predict then answers with it once it is ready."""
        body: dict[str, Any] = {"params": params or {}}
        if callback_url is not None:
            body["callback_url"] = callback_url
        return ClassifierCreated.model_validate(
            self._request("POST", f"/v1/classifiers/{classifier_id}/versions", json=body).json())

    def versions(self, classifier_id: str) -> list[ClassifierPublic]:
        """Every version of a classifier, oldest first."""
        response = self._request("GET", f"/v1/classifiers/{classifier_id}/versions")
        return [ClassifierPublic.model_validate(v) for v in response.json()]

    def holdout(self, classifier_id: str, *, mistakes: bool = False) -> list[HoldoutPrediction]:
        """Every holdout image of a ready classifier with its label and the measured model's
        answer (only the wrong ones with `mistakes`)."""
        return list(self._pages(HoldoutPrediction, f"/v1/classifiers/{classifier_id}/holdout",
                                mistakes=str(mistakes).lower()))

    def delete_classifier(self, classifier_id: str) -> None:
        """Delete a classifier and its files; its training job is cancelled if still running."""
        self._request("DELETE", f"/v1/classifiers/{classifier_id}")

    def export_classifier(self, classifier_id: str, out: PathLike, *, fmt: str = "onnx") -> Path:
        """Save the classifier as a zip to run outside the service: `fmt` "onnx", "torchscript"
        or "safetensors", with labels.json, preprocessing.json and a README. Written to a
        temporary file beside `out`, then renamed: `out` is never left half-written."""
        if fmt not in EXPORT_FORMATS:
            raise ClientError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
        target = Path(out)
        if target.is_dir():
            raise ClientError(f"{target} is a folder; give the zip's file name")
        response = self._request("GET", f"/v1/classifiers/{classifier_id}/export",
                                 params={"format": fmt})
        partial = target.with_name(f".{target.name}.partial")
        partial.write_bytes(response.content)
        partial.replace(target)
        return target

    def predict(
        self, classifier_id: str, images: Sequence[PathLike], *, top_k: int = 5,
        version: int | None = None,
    ) -> PredictResponse:
        """The top-k labels of each image, in order (an image the service cannot decode gets an
        `error` instead), by the newest ready version of the classifier or the `version` named;
        sent `PREDICT_BATCH` images a request."""
        paths = [Path(p) for p in images]
        if not paths:
            raise ClientError("give at least one image")
        for p in paths:
            if not p.is_file():
                raise ClientError(f"{p} is not a file")
        results, answer = [], None
        for start in range(0, len(paths), PREDICT_BATCH):
            batch = paths[start:start + PREDICT_BATCH]
            handles = [p.open("rb") for p in batch]
            try:
                response = self._request(
                    "POST", f"/v1/classifiers/{classifier_id}/predict",
                    data={"top_k": str(top_k)}, params={"version": version} if version else None,
                    files=[("files", (p.name, fh, "application/octet-stream"))
                           for p, fh in zip(batch, handles, strict=True)],
                )
            finally:
                for fh in handles:
                    fh.close()
            answer = PredictResponse.model_validate(response.json())
            results.extend(answer.results)
        assert answer is not None
        return answer.model_copy(update={"results": results})

    # ------------------------------------------------------------------------- base models

    def base_models(self) -> list[BaseModelPublic]:
        return list(self._pages(BaseModelPublic, "/v1/base-models"))

    def create_pretraining_job(
        self,
        dataset_id: str,
        *,
        name: str,
        algorithm: str,
        params: dict[str, Any] | None = None,
        callback_url: str | None = None,
        idempotency_key: str | None = None,
    ) -> PretrainingJobCreated:
        """Admin: pretrain a new base model on a dataset of base classes; `params` are fields of
        `models.config.PretrainConfig` (iterations, ways, shots, queries, ...)."""
        body: dict[str, Any] = {"name": name, "dataset_id": dataset_id, "algorithm": algorithm,
                                "params": params or {}}
        if callback_url is not None:
            body["callback_url"] = callback_url
        response = self._request("POST", "/v1/admin/pretraining-jobs", json=body,
                                 headers=_idempotency(idempotency_key))
        return PretrainingJobCreated.model_validate(response.json())

    # ------------------------------------------------------------------------- jobs

    def jobs(
        self,
        *,
        limit: int = 100,
        cursor: str | None = None,
        status: str | None = None,
        tenant: str | None = None,
    ) -> Page[JobPublic]:
        """One page of jobs, newest first (admin keys: every tenant's, or `tenant`'s)."""
        return self._get(Page[JobPublic], "/v1/jobs", limit=limit, cursor=cursor, status=status,
                         tenant=tenant)

    def job(self, job_id: str) -> JobPublic:
        return self._get(JobPublic, f"/v1/jobs/{job_id}")

    def job_curve(self, job_id: str) -> JobCurve:
        """A job's loss curve so far (the whole of it once finished)."""
        return self._get(JobCurve, f"/v1/jobs/{job_id}/curve")

    def cancel_job(self, job_id: str) -> JobPublic:
        """Cancel a job: a queued one at once, a running one at its next step (409 when it has
        already finished)."""
        return JobPublic.model_validate(self._request("POST", f"/v1/jobs/{job_id}/cancel").json())

    def wait_for_job(
        self,
        job_id: str,
        *,
        progress: ProgressFn | None = None,
        interval: float = 0.5,
        timeout: float | None = None,
    ) -> JobPublic:
        """Poll a job until it has finished (succeeded, failed or cancelled) and return it;
        `progress` is called with the job after every poll. A `timeout` in seconds raises
        ClientError; the job itself goes on."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if progress is not None:
                progress(job)
            if job.status in FINISHED:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise ClientError(f"job {job_id} is still {job.status} after {timeout:g} s")
            time.sleep(interval)

    # ------------------------------------------------------------------------- API keys (admin)

    def api_keys(self) -> list[ApiKeyPublic]:
        """Admin: every tenant's API keys (prefix, tenant, scope; never the keys themselves)."""
        return list(self._pages(ApiKeyPublic, "/v1/admin/api-keys"))

    def revoke_api_key(self, prefix: str) -> None:
        """Admin: revoke a key by its prefix (the part after `mtl_`, as `api_keys` lists it)."""
        self._request("DELETE", f"/v1/admin/api-keys/{prefix.removeprefix('mtl_')}")

    def _pages(self, model: type[M], path: str, **params: Any) -> Iterator[M]:
        cursor = None
        while True:
            page = self._get(Page[model], path, cursor=cursor, **params)  # type: ignore[valid-type]
            yield from page.data
            if page.next_cursor is None:
                return
            cursor = page.next_cursor


def _idempotency(key: str | None) -> dict[str, str]:
    return {} if key is None else {"Idempotency-Key": key}


def _message(response: httpx.Response) -> str:
    """The service's explanation of an error answer: its `detail`, else the body's start."""
    try:
        detail = response.json().get("detail")
    except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
        detail = None
    if isinstance(detail, str) and detail:
        return detail
    if detail is not None:
        return json.dumps(detail)
    return response.text[:300].strip() or response.reason_phrase

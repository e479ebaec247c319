"""Export (issue 15): the ONNX and TorchScript files of a real classifier answer what predict
answers, to 1e-4, on real drawings; the zip carries labels, preprocessing and a README."""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import numpy as np
import pytest

from app.infra.settings import Settings
from models.loaders import decode_image
from tests.service.conftest import new_key
from tests.utils.images import omniglot_png
from tests.utils.training import CHARACTERS, create_classifier, trained_classifier

# Drawings the classifier was not trained on, of its own characters and of another one.
GOLDEN = [(c, d) for c in CHARACTERS for d in (15, 19)] + [(7, 3)]


def _files(response: Any) -> dict[str, bytes]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(response.content)) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def test_exported_models_match_predict(client: Any, settings: Settings, user: dict) -> None:
    import onnxruntime as ort
    import torch

    clf_id = trained_classifier(client, settings, user)
    labels = client.get(f"/v1/classifiers/{clf_id}", headers=user).json()["labels"]
    images = [omniglot_png(c, d) for c, d in GOLDEN]
    answer = client.post(f"/v1/classifiers/{clf_id}/predict", headers=user,
                         files=[("files", (f"{i}.png", b)) for i, b in enumerate(images)],
                         data={"top_k": str(len(labels))}).json()["results"]
    served = np.array([[dict((p["label"], p["probability"]) for p in r["predictions"])[lbl]
                        for lbl in labels] for r in answer])

    onnx = _files(client.get(f"/v1/classifiers/{clf_id}/export?format=onnx", headers=user))
    assert set(onnx) == {"model.onnx", "labels.json", "preprocessing.json", "README.txt"}
    assert json.loads(onnx["labels.json"]) == labels
    prep = json.loads(onnx["preprocessing.json"])
    assert (prep["image_size"], prep["channels"]) == (28, 1)
    assert len(prep["normalization"]["mean"]) == 1 and prep["resize"]["method"] == "bilinear"
    assert "onnxruntime" in onnx["README.txt"].decode()
    # The input as preprocessing.json describes it: decoded, resized, scaled to [0, 1].
    x = np.stack([decode_image(b, channels=1, image_size=28) for b in images]).astype(np.float32)
    x /= 255.0
    session = ort.InferenceSession(onnx["model.onnx"], providers=["CPUExecutionProvider"])
    got = session.run(["probabilities"], {"images": x})[0]
    assert got.shape == served.shape
    np.testing.assert_allclose(got, served, atol=1e-4)
    assert (served.argmax(1)[:6] == np.repeat(np.arange(3), 2)).mean() >= 0.5  # it learnt

    ts = _files(client.get(f"/v1/classifiers/{clf_id}/export?format=torchscript", headers=user))
    extra = {"labels.json": ""}
    model = torch.jit.load(io.BytesIO(ts["model.pt"]), _extra_files=extra)
    assert json.loads(extra["labels.json"]) == labels
    with torch.inference_mode():
        np.testing.assert_allclose(model(torch.from_numpy(x)).numpy(), served, atol=1e-4)

    st = _files(client.get(f"/v1/classifiers/{clf_id}/export?format=safetensors", headers=user))
    assert {"model.safetensors", "model.json", "README.txt"} <= set(st)


def test_export_needs_a_ready_classifier_of_the_tenant(client: Any, settings: Settings,
                                                       user: dict) -> None:
    created = create_classifier(client, user)  # queued: no worker runs it
    url = f"/v1/classifiers/{created['id']}/export"
    r = client.get(url, headers=user)
    assert r.status_code == 409 and "ready" in r.json()["detail"]
    other = new_key(settings, "globex")
    assert client.get(url, headers=other).status_code == 404
    assert client.get(url + "?format=pickle", headers=user).status_code == 422
    assert client.get(url).status_code == 401


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_readme_names_the_input(fmt: str) -> None:
    from app.service.export import ExportFormat, preprocessing, readme

    prep = preprocessing({"channels": 3, "image_size": 84}, [0.5] * 3, [0.25] * 3)
    text = readme(ExportFormat(fmt), classifier_id="c", name="n", prep=prep, labels=["a", "b"])
    assert "(N, 3, 84, 84)" in text and "RGB" in text


def test_parallel_exports_all_succeed_and_agree(client: Any, settings: Settings, user: dict) -> None:
    """20 requests at once for each model format: every one a 200 with the same zip (torch's
    exporters failed one in three of 2 parallel ONNX exports before)."""
    from concurrent.futures import ThreadPoolExecutor

    from app.service import export

    clf_id = trained_classifier(client, settings, user)
    export._MADE.clear()
    for fmt in ("onnx", "torchscript"):
        url = f"/v1/classifiers/{clf_id}/export?format={fmt}"
        with ThreadPoolExecutor(20) as pool:
            answers = list(pool.map(lambda _, u=url: client.get(u, headers=user), range(20)))
        assert [a.status_code for a in answers] == [200] * 20, [a.text[:200] for a in answers]
        assert len({a.content for a in answers}) == 1

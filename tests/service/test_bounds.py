"""Every training parameter is bounded: out-of-range values, NaN, Infinity, wrong types and NUL
bytes are each a 422 that names the field, never a 5xx, on both setups."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from annotated_types import Ge, Gt, Le, Lt

from app.infra.settings import Settings
from app.service.params import ADAPT_FIELDS, PRETRAIN_BOUNDS, Choice, Flag, Range, pretrain_bounds
from app.service.schemas import ClassifierParams
from tests.utils.images import random_png, small_zip, zip_bytes

NAN, INF = float("nan"), float("inf")


def post_json(client: Any, path: str, headers: dict[str, str], body: dict[str, Any]) -> Any:
    # json.dumps writes NaN and Infinity as Python's json reads them (httpx refuses to).
    return client.post(path, headers={**headers, "Content-Type": "application/json"},
                       content=json.dumps(body).encode())


def assert_422(response: Any, *fragments: str) -> None:
    assert response.status_code == 422, (response.status_code, response.text)
    detail = response.json()["detail"]
    assert isinstance(detail, str)
    for fragment in fragments:
        assert fragment in detail, detail


def bad_values(bound: Any) -> list[Any]:
    if isinstance(bound, Range):
        step = 1 if bound.integer else 0.5
        values = [bound.low - step, bound.high + step, bound.high * 1e6, NAN, INF, -INF, "7", True,
                  None, 2**70]
        return values + ([1.5] if bound.integer else [])
    if isinstance(bound, Choice):
        return ["bogus", "\x00", 7 if isinstance(bound.values[0], str) else "1", None]
    assert isinstance(bound, Flag)
    return ["yes", 1, None]


def dataset(client: Any, headers: dict[str, str]) -> str:
    r = client.post("/v1/datasets", headers=headers, data={"name": "set"},
                    files={"archive": ("set.zip", small_zip(classes=3, per_class=4))})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def test_every_pretraining_field_has_a_bound() -> None:
    """Fails when models.config.PretrainConfig gains a field that app/service/params.py does not bound."""
    from dataclasses import fields

    from models.backbones import available_backbones
    from models.config import PretrainConfig

    bounds = pretrain_bounds()
    assert {f.name for f in fields(PretrainConfig)} - {"algorithm"} == set(bounds)
    backbone = PRETRAIN_BOUNDS["backbone"]
    assert isinstance(backbone, Choice) and set(backbone.values) == set(available_backbones())
    for name, bound in bounds.items():  # every default is inside its own bound
        default = next(f.default for f in fields(PretrainConfig) if f.name == name)
        assert bound.problem(default) is None, (name, default)


def test_every_classifier_field_has_a_bound() -> None:
    """Every adaptation setting of the ML core is a request field, and every number has both a
    lower and an upper bound."""
    assert set(ADAPT_FIELDS) <= set(ClassifierParams.model_fields)
    for name, field in ClassifierParams.model_fields.items():
        kinds = {type(m) for m in field.metadata}
        if field.annotation in (int, float, int | None, float | None):
            assert kinds & {Ge, Gt} and kinds & {Le, Lt}, name


def test_pretraining_parameters_out_of_bounds(client: Any, admin: dict) -> None:
    ds = dataset(client, admin)
    checked = 0
    for name, bound in pretrain_bounds().items():
        for value in bad_values(bound):
            r = post_json(client, "/v1/admin/pretraining-jobs", admin,
                          {"name": "b", "dataset_id": ds, "algorithm": "mtl-reptile",
                           "params": {"ways": 3, name: value}})
            assert_422(r, name)
            checked += 1
    assert checked > 100
    assert client.get("/v1/jobs", headers=admin).json()["data"] == []  # nothing was created


def test_what_the_issue_measured_is_refused(client: Any, admin: dict) -> None:
    ds = dataset(client, admin)
    post = lambda params, algorithm="mtl-reptile": post_json(  # noqa: E731
        client, "/v1/admin/pretraining-jobs", admin,
        {"name": "b", "dataset_id": ds, "algorithm": algorithm, "params": params})
    for params in ({"image_size": 100000}, {"filters": 100000}, {"meta_batch": 10**6},
                   {"inner_steps": 10**9}, {"inner_steps": -5}, {"inner_batch": -5},
                   {"outer_lr": -1}, {"queries": -1}, {"seed": -1}, {"seed": 2**70},
                   {"backbone": "bogus"}, {"protonet_lr": -1},
                   {"ways": 10**6, "replacement": True}, {"outer_lr": NAN},
                   {"inner_lr": INF}):
        assert_422(post({"ways": 3, **params}), f"params.{next(iter(params))}")
    # In bounds one by one, too large together: the memory estimate refuses it.
    r = post({"ways": 100, "replacement": True, "shots": 2, "queries": 2, "image_size": 224,
              "filters": 512, "backbone": "resnet12"})
    assert_422(r, "MTL_MAX_PRETRAIN_MEMORY_BYTES")
    assert_422(post({"ways": 3}, algorithm="x\x00"), "algorithm")
    assert_422(post({"ways": 3, "x\x00": 1}), "unknown pretraining parameter")


def test_classifier_parameters_out_of_bounds(client: Any, user: dict) -> None:
    r = client.post("/v1/datasets", headers=user, data={"name": "set"},
                    files={"archive": ("set.zip", small_zip())})
    ds = r.json()["id"]
    checked = 0
    for name, field in ClassifierParams.model_fields.items():
        values: list[Any] = [NAN, INF, -INF, "x\x00", [1], {"a": 1}]
        for m in field.metadata:
            if isinstance(m, Ge | Gt):
                values.append(float(m.ge if isinstance(m, Ge) else m.gt) - 1)  # type: ignore[arg-type]
            if isinstance(m, Le | Lt):
                values.append(float(m.le if isinstance(m, Le) else m.lt) * 2 + 1)  # type: ignore[arg-type]
        for value in values:
            if isinstance(value, float) and math.isfinite(value) and field.annotation in (
                    int, int | None) and value == int(value):
                value = int(value)
            r = post_json(client, "/v1/classifiers", user,
                          {"name": "c", "dataset_id": ds, "params": {name: value}})
            assert_422(r, name)
            checked += 1
    assert checked > 50
    assert client.get("/v1/jobs", headers=user).json()["data"] == []


def test_nul_bytes_anywhere_are_refused(client: Any, settings: Settings, user: dict,
                                        admin: dict) -> None:
    """Text with a NUL byte is a 422 naming the field, or a file name stored with U+FFFD."""
    two = [("files", ("1.png", random_png(1), "image/png")),
           ("files", ("2.png", random_png(2), "image/png"))]
    assert_422(client.post("/v1/datasets", headers=user, files=two,
                           data={"name": "x\x00", "labels": ["a", "b"]}), "name")
    assert_422(client.post("/v1/datasets", headers=user, files=two,
                           data={"name": "x", "labels": ["a", "b\x00"]}), "label 2")
    # (zip member names cannot hold NUL: zipfile cuts a name at its first NUL byte)
    named = [("files", ("a\x00.png", random_png(1), "image/png")),
             ("files", ("2.png", random_png(2), "image/png"))]
    r = client.post("/v1/datasets", headers=user, files=named,
                    data={"name": "x", "labels": ["a", "b"]})
    assert r.status_code == 201, r.text
    ds = r.json()["id"]
    for body in ({"name": "c\x00", "dataset_id": ds}, {"name": "c", "dataset_id": "d\x00"},
                 {"name": "c", "dataset_id": ds, "base_model_id": "\x00"}):
        assert_422(post_json(client, "/v1/classifiers", user, body), "NUL")
    assert_422(post_json(client, "/v1/admin/pretraining-jobs", admin,
                         {"name": "n\x00", "dataset_id": ds, "algorithm": "protonet"}), "name")
    assert_422(post_json(client, "/v1/admin/api-keys", admin, {"tenant": "t\x00"}), "tenant")
    for path in ("/v1/datasets/%00", "/v1/classifiers/a%00b", "/v1/jobs/%00",
                 "/v1/datasets?x=%00"):
        assert_422(client.get(path, headers=user), "NUL")
    assert_422(client.delete("/v1/admin/api-keys/%00", headers=admin), "NUL")
    assert_422(client.post("/v1/classifiers/%00/predict", headers=user,
                           files={"files": ("a.png", b"x")}), "NUL")


def test_overlong_file_names_are_stored_shortened(client: Any, user: dict) -> None:
    """A name over the column's 1,000 characters (a 500 on PostgreSQL before) keeps its start
    and extension."""
    long = "x" * 1500 + ".png"
    members = {f"a/{'y' * 1200}.png": random_png(1), "b/2.png": random_png(2)}
    for r in (client.post("/v1/datasets", headers=user, data={"name": "n", "labels": ["a", "b"]},
                          files=[("files", (long, random_png(1), "image/png")),
                                 ("files", ("2.png", random_png(2), "image/png"))]),
              client.post("/v1/datasets", headers=user, data={"name": "n"},
                          files={"archive": ("set.zip", zip_bytes(members), "application/zip")})):
        assert r.status_code == 201, r.text
        images = client.get(f"/v1/datasets/{r.json()['id']}/images", headers=user).json()["data"]
        name = next(im["filename"] for im in images if im["label"] == "a")
        assert len(name) == 1000 and name.endswith("y.png" if "/" in name else "x.png")
        assert "\u2026" in name and name.startswith(("xxx", "a/yyy"))


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_nan_in_any_json_number(client: Any, user: dict, value: str) -> None:
    body = b'{"name": "c", "dataset_id": "d", "params": {"learning_rate": ' + value.encode() + b"}}"
    r = client.post("/v1/classifiers", headers={**user, "Content-Type": "application/json"},
                    content=body)
    assert_422(r, "learning_rate")

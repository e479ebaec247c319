"""Exporting a trained classifier: a zip with the model (ONNX, TorchScript or the safetensors
checkpoint), its labels, its preprocessing and a README.txt on how to run it.

The exported ONNX and TorchScript models take what the service's predict feeds its network:
float32 images (N, C, H, W) with values in [0, 1] (the decoded 8-bit pixels / 255), and answer
class probabilities (N, classes) in `labels.json` order. The normalisation (mean, std) is inside
the model; `preprocessing.json` says how an image becomes that input (`models.loaders.decode_image`).
Torch is imported only when an export is made, never when the API starts.
"""

from __future__ import annotations

import io
import json
import threading
import time
import warnings
import zipfile
from collections import OrderedDict
from enum import StrEnum
from pathlib import Path
from typing import Any

# Large enough for a resnet12 graph; the batch axis is dynamic whatever this example's size.
_EXAMPLE_BATCH = 2
ONNX_OPSET = 17


class ExportFormat(StrEnum):
    ONNX = "onnx"
    TORCHSCRIPT = "torchscript"
    SAFETENSORS = "safetensors"


MODEL_FILE = {
    ExportFormat.ONNX: "model.onnx",
    ExportFormat.TORCHSCRIPT: "model.pt",
    ExportFormat.SAFETENSORS: "model.safetensors",
}


def preprocessing(card: dict[str, Any], mean: list[float], std: list[float]) -> dict[str, Any]:
    """How an image becomes the model's input, as `models.loaders.decode_image` and predict do it."""
    channels = int(card["channels"])
    size = int(card["image_size"])
    return {
        "image_size": size,
        "channels": channels,
        "color_mode": "L" if channels == 1 else "RGB",
        "transparency": "composited onto white (RGBA, LA and palette images)",
        "resize": {
            "library": "Pillow",
            "to": [size, size],
            "keep_aspect_ratio": False,
            "method": "bilinear",
            "reducing_gap": 3.0,
            "when": "only if the image is not already size x size",
        },
        "layout": "NCHW",
        "dtype": "float32",
        "scale": "pixel / 255, so values lie in [0, 1]",
        "normalization": {
            "mean": mean,
            "std": std,
            "formula": "(x - mean) / std, per channel",
            "applied_inside_model": True,
        },
        "input_name": "images",
        "output": "probabilities (softmax), one row per image, columns in labels.json order",
    }


# torch's ONNX and TorchScript exporters keep global state: two exports at once failed
# ("GLOBALS.in_onnx_export must be False", TracingCheckError). One export at a time per process,
# and each zip kept for its classifier version, so concurrent requests wait for the one made.
_EXPORT_LOCK = threading.Lock()
_MADE: OrderedDict[tuple[Any, ...], bytes] = OrderedDict()
_MADE_MAX = 16


def export_zip(
    directory: Path, fmt: ExportFormat, *, classifier_id: str, name: str
) -> bytes:
    """The zip for the classifier checkpoint in `directory` in format `fmt`: made once per
    checkpoint version (its files' modification times) and format, then served as made."""
    from models.checkpoint import CARD, WEIGHTS

    version = tuple((directory / f).stat().st_mtime_ns for f in (CARD, WEIGHTS))
    key = (str(directory), fmt, version, classifier_id, name)
    with _EXPORT_LOCK:
        if key in _MADE:
            _MADE.move_to_end(key)
            return _MADE[key]
        data = _make_zip(directory, fmt, classifier_id=classifier_id, name=name)
        _MADE[key] = data
        while len(_MADE) > _MADE_MAX:
            _MADE.popitem(last=False)
        return data


def _make_zip(directory: Path, fmt: ExportFormat, *, classifier_id: str, name: str) -> bytes:
    from models.checkpoint import CARD, WEIGHTS, load_classifier

    clf, card = load_classifier(directory, device="cpu")
    labels = list(clf.labels)
    prep = preprocessing(card, clf.mean.flatten().tolist(), clf.std.flatten().tolist())
    files: dict[str, bytes] = {}
    if fmt is ExportFormat.ONNX:
        files[MODEL_FILE[fmt]] = _onnx(clf, prep, labels)
    elif fmt is ExportFormat.TORCHSCRIPT:
        files[MODEL_FILE[fmt]] = _torchscript(clf, prep, labels)
    else:
        files[WEIGHTS] = (directory / WEIGHTS).read_bytes()
        files[CARD] = (directory / CARD).read_bytes()
    files["labels.json"] = (json.dumps(labels, indent=2) + "\n").encode()
    files["preprocessing.json"] = (json.dumps(prep, indent=2) + "\n").encode()
    files["README.txt"] = readme(fmt, classifier_id=classifier_id, name=name, prep=prep,
                                 labels=labels).encode()
    # The checkpoint's time, not now: the same classifier version always makes the same zip.
    stamp = time.gmtime((directory / WEIGHTS).stat().st_mtime)[:6]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for filename, data in files.items():
            # rw-r--r--: writestr's default (0600) left the unpacked files readable by their
            # owner alone, e.g. not by the serving container's own user.
            info = zipfile.ZipInfo(filename, date_time=stamp)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o100644 << 16
            zf.writestr(info, data)
    return buf.getvalue()


def _probabilities_module(clf: Any) -> Any:
    import torch

    class Probabilities(torch.nn.Module):
        """The classifier with its softmax: what predict answers."""

        def __init__(self) -> None:
            super().__init__()
            self.classifier = clf

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.classifier(images), dim=1)

    return Probabilities().eval()


def _example_input(prep: dict[str, Any]) -> Any:
    import torch

    size, channels = prep["image_size"], prep["channels"]
    return torch.rand(_EXAMPLE_BATCH, channels, size, size, generator=torch.Generator().manual_seed(0))


def _onnx(clf: Any, prep: dict[str, Any], labels: list[str]) -> bytes:
    import onnx
    import torch

    module = _probabilities_module(clf)
    buf = io.BytesIO()
    # The TorchScript-based exporter (dynamo=False): the torch.export-based one, the default
    # since torch 2.9, needs the onnxscript package (not a dependency here), took 3 s instead of
    # 0.13 s for a conv4 classifier on this machine, and writes large weights to a second file.
    # The legacy one exports these plain convolutional networks exactly (the tests compare the
    # probabilities) and works offline with torch alone; its deprecation warning is silenced.
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (_example_input(prep),),
            buf,  # type: ignore[arg-type]  # the legacy exporter writes to a file object
            dynamo=False,
            input_names=["images"],
            output_names=["probabilities"],
            dynamic_axes={"images": {0: "batch"}, "probabilities": {0: "batch"}},
            opset_version=ONNX_OPSET,
        )
    model = onnx.load_from_string(buf.getvalue())
    for key, value in (("labels", json.dumps(labels)), ("preprocessing", json.dumps(prep))):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def _torchscript(clf: Any, prep: dict[str, Any], labels: list[str]) -> bytes:
    import torch

    module = _probabilities_module(clf)
    buf = io.BytesIO()
    extra = {"labels.json": json.dumps(labels), "preprocessing.json": json.dumps(prep)}
    # torch.jit is deprecated in favour of torch.export, but a TorchScript file is what
    # torch.jit.load (and LibTorch in C++) runs without this code; the notices are silenced.
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, (_example_input(prep),))
        torch.jit.save(traced, buf, _extra_files=extra)
    return buf.getvalue()


_PREPROCESS_PY = """\
    import numpy as np
    from PIL import Image

    def preprocess(path):
        img = Image.open(path)
        img.load()
        if img.mode in ("RGBA", "LA", "P"):  # transparent pixels become white
            img = img.convert("RGBA")
            img = Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)), img)
        img = img.convert("{mode}")
        if img.size != ({size}, {size}):
            img = img.resize(({size}, {size}), Image.Resampling.BILINEAR, reducing_gap=3.0)
        x = np.asarray(img, dtype=np.float32) / 255.0
        x = x[None] if x.ndim == 2 else x.transpose(2, 0, 1)
        return x[None]  # (1, {channels}, {size}, {size}); stack several along axis 0
"""

_RUN_PY = {
    ExportFormat.ONNX: """\
    import json
    import onnxruntime as ort  # pip install onnxruntime

    labels = json.load(open("labels.json"))
    session = ort.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])
    probs = session.run(["probabilities"], {{"images": preprocess("a.png")}})[0][0]
    print(sorted(zip(probs.tolist(), labels), reverse=True)[:5])
""",
    ExportFormat.TORCHSCRIPT: """\
    import json
    import torch  # pip install torch

    labels = json.load(open("labels.json"))
    model = torch.jit.load("model.pt").eval()
    with torch.inference_mode():
        probs = model(torch.from_numpy(preprocess("a.png")))[0]
    print(sorted(zip(probs.tolist(), labels), reverse=True)[:5])
""",
    ExportFormat.SAFETENSORS: """\
    # With this service's package installed (pip install -e . in its repository):
    import torch
    from models.checkpoint import load_classifier

    clf, card = load_classifier(".")  # this folder: model.safetensors + model.json
    probs = clf.predict_proba(torch.from_numpy(preprocess("a.png")))[0]
    print(sorted(zip(probs.tolist(), clf.labels), reverse=True)[:5])
""",
}

_WHAT = {
    ExportFormat.ONNX: "model.onnx: ONNX (opset {opset}); input 'images', output 'probabilities'; "
    "the labels and preprocessing are also in its metadata_props",
    ExportFormat.TORCHSCRIPT: "model.pt: TorchScript (torch.jit.load); labels.json and "
    "preprocessing.json are also stored in it as extra files",
    ExportFormat.SAFETENSORS: "model.safetensors + model.json: the service's own checkpoint "
    "(weights as safetensors, the card as JSON); the network is models.network.Classifier",
}


def readme(
    fmt: ExportFormat, *, classifier_id: str, name: str, prep: dict[str, Any], labels: list[str]
) -> str:
    """README.txt of an export: what the files are and how to run the model."""
    size, channels, mode = prep["image_size"], prep["channels"], prep["color_mode"]
    norm = prep["normalization"]
    return "\n".join([
        f"Classifier {name!r} ({classifier_id}), exported as {fmt.value}",
        "",
        "Files",
        "  " + _WHAT[fmt].format(opset=ONNX_OPSET),
        f"  labels.json: the {len(labels)} class names, in the order of the output's columns",
        "  preprocessing.json: how an image becomes the model's input (below)",
        "",
        "Input and output",
        f"  images: float32 (N, {channels}, {size}, {size}), pixel values / 255 (0..1), NCHW.",
        f"  The model normalises inside: (x - mean) / std with mean {norm['mean']}, "
        f"std {norm['std']}.",
        "  probabilities: float32 (N, classes), softmax, columns in labels.json order.",
        "",
        "Preprocessing (as the service's predict does it)",
        "  1. decode the image; transparent pixels (RGBA, LA, palette) are composited onto white;",
        f"  2. convert to {mode} ({channels} channel{'s' if channels > 1 else ''});",
        f"  3. resize to {size}x{size} (aspect ratio not kept) with Pillow's bilinear filter and",
        "     reducing_gap=3.0, unless it already has that size;",
        "  4. scale to float32 in [0, 1] and lay out as (channels, height, width).",
        "  Another resizer (OpenCV, torchvision) gives slightly different pixels and so slightly",
        "  different probabilities.",
        "",
        "Example (Python)",
        _PREPROCESS_PY.format(mode=mode, size=size, channels=channels)
        + _RUN_PY[fmt].format(),
    ])

"""Mixed precision: bf16 autocast where the hardware runs it natively, fp32 everywhere else.

Autocast runs convolutions and matrix products in bf16 and keeps what needs the range (the loss,
batch-norm statistics, the parameters and every update to them) in fp32, so a run's weights,
optimiser state and checkpoints are fp32 whatever the precision. In pretraining, bf16 covers the
supervised (transfer) step and ProtoNet's episodes; the inner loops of Reptile, MAML and FOMAML
stay fp32 (`full_precision`), since in bf16 they cost accuracy. On this project's Conv-4 on an
AVX512-BF16 CPU it is 1.3-1.5x faster at 28x28 and 2-3x at 84x84 (docs/speed.md).
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, nullcontext
from functools import cache

import torch

from models.config import PRECISIONS
from models.errors import ConfigError

log = logging.getLogger(__name__)


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


@cache
def bf16_supported(device_type: str) -> bool:
    """Whether `device_type` runs bf16 matrix products natively (emulated bf16 is slower than fp32)."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type == "cpu":
        try:
            return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


_noticed: set[str] = set()


def effective_precision(precision: str, device: torch.device) -> str:
    """The precision a run on `device` uses when `precision` is asked for: bf16 falls back to fp32
    (with a one-line notice, once per process and device type) where it is not native."""
    check_precision(precision)
    if precision == "bf16" and not bf16_supported(device.type):
        if device.type not in _noticed:
            _noticed.add(device.type)
            log.warning("bf16 is not supported natively on this %s: running in fp32", device.type)
        return "fp32"
    return precision


def full_precision(device: torch.device) -> AbstractContextManager[object]:
    """fp32 inside a bf16 region: for the inner loops of Reptile, MAML and FOMAML. Under bf16 they
    cost MTL-Reptile 2-7 points on unseen Omniglot classes (two seeds, quick profile), and with
    them alone back in fp32 it matched fp32 within 0.3 points (docs/speed.md)."""
    return torch.autocast(device.type, enabled=False)


def autocast(precision: str, device: torch.device) -> AbstractContextManager[object]:
    """The context a forward pass (and the loss) runs in under `precision` on `device`."""
    if effective_precision(precision, device) == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)

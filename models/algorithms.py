"""The meta-learners and the transfer update as small pure functions over parameter dicts.

Every function takes the current weights theta (a name -> tensor dict) and returns a *direction*
(also a dict), never touching the module's parameters. Combining directions into the next theta
is its own function, so the paper's and the authors' formulas are two lines side by side.

Inner loops run through `torch.func.functional_call`, so no task deep-copies the model, and MAML
can differentiate through them (second order) by keeping the graph.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from models.network import META_HEAD, TRANSFER_HEAD

Params = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Task:
    """One sampled task: training images (inner loop), query images (MAML's outer loss), and the
    true base-class labels of all of them (the transfer update's targets)."""

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    base_y: torch.Tensor  # for cat([support_x, query_x])

    @property
    def all_x(self) -> torch.Tensor:
        return torch.cat([self.support_x, self.query_x])

    @property
    def all_y(self) -> torch.Tensor:
        return torch.cat([self.support_y, self.query_y])


def meta_param_names(net: nn.Module) -> list[str]:
    """Parameters the inner loop moves: the backbone and the meta head."""
    return [n for n, _ in net.named_parameters() if not n.startswith("transfer_head.")]


def backbone_param_names(net: nn.Module) -> list[str]:
    """Parameters both halves share (ProtoNet moves only these)."""
    return [n for n, _ in net.named_parameters() if n.startswith("backbone.")]


def transfer_param_names(net: nn.Module) -> list[str]:
    """Parameters the transfer update moves: the backbone and the transfer head."""
    return [n for n, _ in net.named_parameters() if not n.startswith("meta_head.")]


def current_params(net: nn.Module) -> Params:
    return {n: p.detach() for n, p in net.named_parameters()}


def _logits(net: nn.Module, params: Mapping[str, torch.Tensor], x: torch.Tensor, head: str) -> torch.Tensor:
    # Parameters not in `params` (and all buffers) come from the module itself.
    return functional_call(net, dict(params), (x,), {"head": head}, strict=False)


def inner_loop(
    net: nn.Module,
    params: Params,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int,
    lr: float,
    batch_size: int = 0,
    create_graph: bool = False,
    rng: np.random.Generator | None = None,
) -> tuple[Params, float]:
    """k SGD steps on the meta head from `params`; returns the adapted params and the last loss.

    With `create_graph` the result stays a differentiable function of `params` (MAML); otherwise
    each step starts from detached tensors, which is what Reptile and first-order MAML need.
    """
    n = x.shape[0]
    bs = n if batch_size <= 0 or batch_size >= n else batch_size
    order = (rng.permutation(n) if rng is not None else np.arange(n)) if bs < n else None
    adapted = params if create_graph else {k: v.detach().requires_grad_() for k, v in params.items()}
    loss_value = float("nan")
    cursor = 0
    for _ in range(steps):
        if order is None:
            xb, yb = x, y
        else:
            if cursor + bs > n:
                order = rng.permutation(n) if rng is not None else order
                cursor = 0
            idx = torch.from_numpy(order[cursor : cursor + bs]).to(x.device)
            cursor += bs
            xb, yb = x[idx], y[idx]
        loss = F.cross_entropy(_logits(net, adapted, xb, META_HEAD), yb)
        grads = torch.autograd.grad(loss, list(adapted.values()), create_graph=create_graph)
        if create_graph:
            adapted = {k: p - lr * g for (k, p), g in zip(adapted.items(), grads, strict=True)}
        else:
            adapted = {
                k: (p - lr * g).detach().requires_grad_()
                for (k, p), g in zip(adapted.items(), grads, strict=True)
            }
        loss_value = float(loss.detach())
    return adapted, loss_value


def reptile_direction(
    net: nn.Module,
    theta: Params,
    tasks: Sequence[Task],
    *,
    inner_steps: int,
    inner_lr: float,
    inner_batch: int = 0,
    rng: np.random.Generator | None = None,
) -> tuple[Params, float]:
    """Reptile: mean_i(theta_i - theta) over tasks, theta_i from the inner loop on all task images."""
    names = meta_param_names(net)
    start = {k: theta[k] for k in names}
    total = {k: torch.zeros_like(v) for k, v in start.items()}
    losses = []
    for task in tasks:
        adapted, loss = inner_loop(
            net, start, task.all_x, task.all_y, steps=inner_steps, lr=inner_lr,
            batch_size=inner_batch, rng=rng,
        )
        for k in names:
            total[k] += adapted[k].detach() - start[k]
        losses.append(loss)
    return {k: v / len(tasks) for k, v in total.items()}, float(np.mean(losses))


def maml_direction(
    net: nn.Module,
    theta: Params,
    tasks: Sequence[Task],
    *,
    inner_steps: int,
    inner_lr: float,
    inner_batch: int = 0,
    first_order: bool = False,
    rng: np.random.Generator | None = None,
) -> tuple[Params, float]:
    """MAML: -mean_i grad_theta L_query(theta_i). Second order differentiates through the inner
    steps; first order (FOMAML) uses the query gradient at theta_i as the gradient at theta."""
    names = meta_param_names(net)
    total = {k: torch.zeros_like(theta[k]) for k in names}
    losses = []
    for task in tasks:
        start = {k: theta[k].detach().requires_grad_() for k in names}
        adapted, _ = inner_loop(
            net, start, task.support_x, task.support_y, steps=inner_steps, lr=inner_lr,
            batch_size=inner_batch, create_graph=not first_order, rng=rng,
        )
        query_loss = F.cross_entropy(_logits(net, adapted, task.query_x, META_HEAD), task.query_y)
        wrt = list(adapted.values()) if first_order else list(start.values())
        grads = torch.autograd.grad(query_loss, wrt)
        for k, g in zip(names, grads, strict=True):
            total[k] -= g.detach()
        losses.append(float(query_loss.detach()))
    return {k: v / len(tasks) for k, v in total.items()}, float(np.mean(losses))


def _grads(loss: torch.Tensor, params: Params) -> Params:
    """d loss / d params; a parameter the loss does not use (a cosine head's bias) gets zeros."""
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    return {k: torch.zeros_like(p) if g is None else g.detach()
            for (k, p), g in zip(params.items(), grads, strict=True)}


def transfer_gradient(
    net: nn.Module, theta: Params, x: torch.Tensor, base_y: torch.Tensor
) -> tuple[Params, float]:
    """Gradient of the cross-entropy over all base classes (transfer head) at theta."""
    start = {k: theta[k].detach().requires_grad_() for k in transfer_param_names(net)}
    loss = F.cross_entropy(_logits(net, start, x, TRANSFER_HEAD), base_y)
    return _grads(loss, start), float(loss.detach())


def transfer_direction(
    net: nn.Module, theta: Params, x: torch.Tensor, base_y: torch.Tensor, *, lr: float
) -> tuple[Params, float]:
    """Supervised step over all base classes: theta_d - theta = -lr * grad CE(transfer head)."""
    grads, loss = transfer_gradient(net, theta, x, base_y)
    return {k: -lr * g for k, g in grads.items()}, loss


def sgd_direction(
    theta: Params, grads: Params, state: dict[str, torch.Tensor], *, lr: float,
    momentum: float = 0.0, weight_decay: float = 0.0, prefix: str = "momentum.",
) -> Params:
    """The step `torch.optim.SGD` would take (momentum without dampening, coupled weight decay),
    as a direction; the momentum buffers live in `state` under `prefix + name`."""
    out = {}
    for k, g in grads.items():
        d = g + weight_decay * theta[k] if weight_decay else g
        if momentum:
            buf = state.get(prefix + k)
            buf = d.clone() if buf is None else momentum * buf + d
            state[prefix + k] = buf
            d = buf
        out[k] = -lr * d
    return out


def adam_direction(
    grads: Params, state: dict[str, torch.Tensor], *, lr: float, betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8, prefix: str = "adam.",
) -> Params:
    """The step `torch.optim.Adam` would take, as a direction; its moments and step count live
    in `state` under `prefix`, so the step can be weighted against another direction (MTL)."""
    b1, b2 = betas
    t = int(state.get(prefix + "step", torch.tensor(0))) + 1
    state[prefix + "step"] = torch.tensor(t)
    out = {}
    for k, g in grads.items():
        m = state.get(prefix + "m." + k)
        v = state.get(prefix + "v." + k)
        m = (1 - b1) * g if m is None else b1 * m + (1 - b1) * g
        v = (1 - b2) * g * g if v is None else b2 * v + (1 - b2) * g * g
        state[prefix + "m." + k], state[prefix + "v." + k] = m, v
        denom = v.sqrt() / math.sqrt(1 - b2**t) + eps
        out[k] = -(lr / (1 - b1**t)) * m / denom
    return out


def protonet_gradient(net: nn.Module, theta: Params, tasks: Sequence[Task]) -> tuple[Params, float]:
    """Gradient of the mean ProtoNet loss over tasks at theta (backbone parameters only)."""
    start = {k: theta[k].detach().requires_grad_() for k in backbone_param_names(net)}
    loss = torch.stack([protonet_loss(net, t, start) for t in tasks]).mean()
    return _grads(loss, start), float(loss.detach())


def combine_paper(
    theta: Params, meta: Params, transfer: Params, *, beta: float, outer_lr: float
) -> Params:
    """The paper's formula: theta <- beta * theta_meta + (1 - beta) * theta_d, where
    theta_meta = theta + outer_lr * meta and theta_d = theta + transfer (missing names: no move)."""
    out = {}
    for k, t in theta.items():
        theta_meta = t + outer_lr * meta[k] if k in meta else t
        theta_d = t + transfer[k] if k in transfer else t
        out[k] = beta * theta_meta + (1.0 - beta) * theta_d
    return out


def combine_authors(
    theta: Params, meta: Params, transfer: Params, *, beta: float, epsilon: float
) -> Params:
    """The authors' code: theta + 0.5 * ((1 - beta) * eps_t * meta + beta * transfer), where meta
    is mean_i(theta_i - theta) and transfer is mean_i(theta_d,i - theta). Note beta weights the
    transfer term here, the meta term in the paper."""
    out = {}
    for k, t in theta.items():
        step = torch.zeros_like(t)
        if k in meta:
            step = step + (1.0 - beta) * epsilon * meta[k]
        if k in transfer:
            step = step + beta * transfer[k]
        out[k] = t + 0.5 * step
    return out


def protonet_loss(net: nn.Module, task: Task, params: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Prototypical Networks: cross-entropy of negative squared distances to class means."""
    ways = int(task.support_y.max()) + 1
    x = torch.cat([task.support_x, task.query_x])
    features = net(x, head="features") if params is None else _logits(net, params, x, "features")
    fs, fq = features[: len(task.support_x)], features[len(task.support_x) :]
    protos = torch.zeros(ways, fs.shape[1], device=fs.device, dtype=fs.dtype)
    protos.index_add_(0, task.support_y, fs)
    protos = protos / torch.bincount(task.support_y, minlength=ways).unsqueeze(1).to(fs.dtype)
    return F.cross_entropy(-torch.cdist(fq, protos).pow(2), task.query_y)


@torch.no_grad()
def assign_params(net: nn.Module, params: Mapping[str, torch.Tensor]) -> None:
    for name, p in net.named_parameters():
        if name in params:
            p.copy_(params[name])


# ----------------------------------------------------------------------------- vectorised meta-batch
#
# With many small tasks, a Python loop over tasks is dominated by per-call overhead. Stacking the
# meta-batch's tasks and running each inner step for all of them at once (`torch.func.vmap` over
# `functional_call` with per-task parameters; convolutions become one grouped convolution) gives
# the same directions. Batch-norm buffers are carried per task, like the parameters, because the
# inner loops update running statistics in place; afterwards the module keeps their mean over
# tasks (the per-task loop leaves the last task's: both only matter for eval-mode predictions,
# and adaptation re-estimates them from the support set by default).


def _stack_tasks(tasks: Sequence[Task]) -> tuple[torch.Tensor, ...]:
    sizes = {(t.support_x.shape, t.query_x.shape) for t in tasks}
    if len(sizes) != 1:
        raise ValueError("a vectorised meta-batch needs tasks of one shape")
    return (torch.stack([t.support_x for t in tasks]), torch.stack([t.support_y for t in tasks]),
            torch.stack([t.query_x for t in tasks]), torch.stack([t.query_y for t in tasks]))


def _task_buffers(net: nn.Module, count: int) -> dict[str, torch.Tensor]:
    return {n: b.detach().unsqueeze(0).repeat(count, *([1] * b.dim())) for n, b in net.named_buffers()}


@torch.no_grad()
def _keep_mean_buffers(net: nn.Module, buffers: Mapping[str, torch.Tensor]) -> None:
    for name, b in net.named_buffers():
        if name in buffers:
            b.copy_(buffers[name].float().mean(0).to(b.dtype) if b.is_floating_point() else buffers[name][-1])


def _meta_loss_fn(net: nn.Module) -> Callable[..., torch.Tensor]:
    def loss(params: Params, buffers: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = functional_call(net, (params, buffers), (x,), {"head": META_HEAD}, strict=False)
        return F.cross_entropy(out, y)

    return loss


def reptile_direction_vectorised(
    net: nn.Module, theta: Params, tasks: Sequence[Task], *, inner_steps: int, inner_lr: float,
) -> tuple[Params, float]:
    """`reptile_direction` with all tasks' inner loops run as one batched computation (full-batch
    inner steps only)."""
    from torch.func import grad_and_value, vmap

    names = meta_param_names(net)
    sx, sy, qx, qy = _stack_tasks(tasks)
    x, y = torch.cat([sx, qx], 1), torch.cat([sy, qy], 1)
    count = len(tasks)
    params = {k: theta[k].detach().unsqueeze(0).expand(count, *theta[k].shape) for k in names}
    buffers = _task_buffers(net, count)
    step = vmap(grad_and_value(_meta_loss_fn(net)))
    loss = torch.zeros(count)
    for _ in range(inner_steps):
        grads, loss = step(params, buffers, x, y)
        params = {k: p - inner_lr * grads[k] for k, p in params.items()}
    _keep_mean_buffers(net, buffers)
    return {k: (p - theta[k]).mean(0).detach() for k, p in params.items()}, float(loss.mean())


def maml_direction_vectorised(
    net: nn.Module, theta: Params, tasks: Sequence[Task], *, inner_steps: int, inner_lr: float,
    first_order: bool = False,
) -> tuple[Params, float]:
    """`maml_direction` with all tasks batched (full-batch inner steps only); second order
    differentiates through the batched inner loop with `torch.func.grad`."""
    from torch.func import grad, grad_and_value, vmap

    names = meta_param_names(net)
    sx, sy, qx, qy = _stack_tasks(tasks)
    count = len(tasks)
    loss_fn = _meta_loss_fn(net)
    buffers = _task_buffers(net, count)

    def adapt(p: Params, b: Params, xs: torch.Tensor, ys: torch.Tensor) -> Params:
        for _ in range(inner_steps):
            g = grad(loss_fn)(p, b, xs, ys)
            p = {k: v - inner_lr * g[k] for k, v in p.items()}
        return p

    start = {k: theta[k].detach() for k in names}
    if first_order:
        def query_grad(p: Params, b: Params, xs: torch.Tensor, ys: torch.Tensor, xq: torch.Tensor,
                       yq: torch.Tensor) -> tuple[Params, torch.Tensor]:
            adapted = {k: v.detach() for k, v in adapt(p, b, xs, ys).items()}
            return grad_and_value(loss_fn)(adapted, b, xq, yq)
    else:
        def query_grad(p: Params, b: Params, xs: torch.Tensor, ys: torch.Tensor, xq: torch.Tensor,
                       yq: torch.Tensor) -> tuple[Params, torch.Tensor]:
            # The buffers are an argument, not captured: the inner steps update them in place.
            def outer(q: Params, buf: Params) -> torch.Tensor:
                return loss_fn(adapt(q, buf, xs, ys), buf, xq, yq)
            return grad_and_value(outer)(p, b)

    grads, losses = vmap(query_grad, in_dims=(None, 0, 0, 0, 0, 0))(start, buffers, sx, sy, qx, qy)
    _keep_mean_buffers(net, buffers)
    return {k: -g.mean(0).detach() for k, g in grads.items()}, float(losses.mean())

"""The update rules, checked against independent computations on tiny models."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from models import algorithms as alg
from models.config import PretrainConfig
from models.network import MetaNet
from models.training import train_step


def tiny_net(seed: int = 0) -> MetaNet:
    torch.manual_seed(seed)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Tanh())
    net = MetaNet(backbone, feature_dim=3, meta_ways=2, num_base_classes=4, mean=[0.1], std=[0.9])
    # Zero heads make every backbone gradient vanish on the first step; randomise them here.
    nn.init.normal_(net.meta_head.weight)
    nn.init.normal_(net.transfer_head.weight)
    return net.double()


def tiny_task(seed: int) -> alg.Task:
    g = torch.Generator().manual_seed(seed)
    return alg.Task(
        support_x=torch.rand(4, 1, 2, 2, generator=g, dtype=torch.float64),
        support_y=torch.tensor([0, 0, 1, 1]),
        query_x=torch.rand(4, 1, 2, 2, generator=g, dtype=torch.float64),
        query_y=torch.tensor([0, 1, 0, 1]),
        base_y=torch.tensor([0, 0, 3, 3, 0, 3, 0, 3]),
    )


def meta_loss(net: MetaNet, flat: torch.Tensor, names: list[str], task: alg.Task, steps: int, lr: float) -> torch.Tensor:
    """L_query(theta_k) by a hand-written inner loop: an independent reference for MAML."""
    shapes = [net.get_parameter(n).shape for n in names]
    flat = flat.detach().requires_grad_()
    params = dict(zip(names, torch.split(flat, [s.numel() for s in shapes]), strict=True))
    params = {n: p.view(s) for (n, p), s in zip(params.items(), shapes, strict=True)}
    for _ in range(steps):
        loss = F.cross_entropy(functional_call(net, params, (task.support_x,), strict=False), task.support_y)
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
        params = {n: p - lr * g for (n, p), g in zip(params.items(), grads, strict=True)}
    return F.cross_entropy(functional_call(net, params, (task.query_x,), strict=False), task.query_y)


def test_maml_meta_gradient_matches_finite_differences() -> None:
    net = tiny_net()
    task = tiny_task(1)
    names = alg.meta_param_names(net)
    theta = alg.current_params(net)
    direction, _ = alg.maml_direction(net, theta, [task], inner_steps=2, inner_lr=0.5)
    analytic = torch.cat([-direction[n].flatten() for n in names])

    flat = torch.cat([theta[n].flatten() for n in names])
    eps = 1e-6
    numeric = torch.zeros_like(flat)
    for i in range(len(flat)):
        plus, minus = flat.clone(), flat.clone()
        plus[i] += eps
        minus[i] -= eps
        numeric[i] = (meta_loss(net, plus, names, task, 2, 0.5) - meta_loss(net, minus, names, task, 2, 0.5)) / (2 * eps)
    torch.testing.assert_close(analytic, numeric, rtol=1e-5, atol=1e-7)


def test_fomaml_drops_second_order_terms() -> None:
    net = tiny_net()
    task = tiny_task(2)
    names = alg.meta_param_names(net)
    theta = alg.current_params(net)
    first, _ = alg.maml_direction(net, theta, [task], inner_steps=2, inner_lr=0.5, first_order=True)
    second, _ = alg.maml_direction(net, theta, [task], inner_steps=2, inner_lr=0.5)

    # Reference: plain SGD for two steps, then the query gradient at the adapted weights.
    ref = copy.deepcopy(net)
    opt = torch.optim.SGD(ref.parameters(), lr=0.5)
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(ref(task.support_x), task.support_y).backward()
        opt.step()
    ref.zero_grad()
    F.cross_entropy(ref(task.query_x), task.query_y).backward()
    for n in names:
        torch.testing.assert_close(first[n], -ref.get_parameter(n).grad)
    # And the second-order terms matter on this task: the two meta-gradients differ.
    diff = max(float((first[n] - second[n]).abs().max()) for n in names)
    assert diff > 1e-4


def test_reptile_update_is_mean_of_adapted_minus_theta() -> None:
    net = tiny_net()
    tasks = [tiny_task(s) for s in (3, 4, 5)]
    theta = alg.current_params(net)
    direction, _ = alg.reptile_direction(net, theta, tasks, inner_steps=3, inner_lr=0.1)
    new = alg.combine_paper(theta, direction, {}, beta=1.0, outer_lr=0.7)

    adapted = []
    for task in tasks:
        ref = copy.deepcopy(net)
        opt = torch.optim.SGD([p for n, p in ref.named_parameters() if not n.startswith("transfer_head")], lr=0.1)
        for _ in range(3):
            opt.zero_grad()
            F.cross_entropy(ref(task.all_x), task.all_y).backward()
            opt.step()
        adapted.append({n: p.detach() for n, p in ref.named_parameters()})
    for n, t in theta.items():
        expected = t + 0.7 * torch.stack([a[n] - t for a in adapted]).mean(0)
        torch.testing.assert_close(new[n], expected)
    torch.testing.assert_close(new["transfer_head.weight"], theta["transfer_head.weight"])


def _config(**kw: object) -> PretrainConfig:
    base = dict(ways=2, shots=2, queries=2, meta_batch=3, inner_steps=2, inner_lr=0.1,
                outer_lr=0.5, transfer_lr=0.2, iterations=10, image_size=2, channels=1)
    base.update(kw)
    return PretrainConfig(**base)  # type: ignore[arg-type]


def _step(net: MetaNet, config: PretrainConfig, tasks: list[alg.Task]) -> dict[str, torch.Tensor]:
    net = copy.deepcopy(net)
    train_step(net, tasks, config, iteration=3, rng=np.random.default_rng(0))
    return alg.current_params(net)


@pytest.mark.parametrize("learner", ["reptile", "maml", "fomaml"])
def test_mtl_beta_one_is_the_meta_learner_and_beta_zero_is_transfer(learner: str) -> None:
    net = tiny_net()
    tasks = [tiny_task(s) for s in (6, 7, 8)]
    meta_alone = _step(net, _config(algorithm=learner), tasks)
    mtl_one = _step(net, _config(algorithm=f"mtl-{learner}", beta=1.0), tasks)
    for n in meta_alone:
        torch.testing.assert_close(mtl_one[n], meta_alone[n])

    mtl_zero = _step(net, _config(algorithm=f"mtl-{learner}", beta=0.0), tasks)
    transfer_alone = _step(net, _config(algorithm="transfer"), tasks)
    ref = copy.deepcopy(net)
    opt = torch.optim.SGD(ref.parameters(), lr=0.2)
    x = torch.cat([t.all_x for t in tasks])
    y = torch.cat([t.base_y for t in tasks])
    F.cross_entropy(ref(x, head="transfer"), y).backward()
    opt.step()
    for n, p in ref.named_parameters():
        torch.testing.assert_close(mtl_zero[n], p.detach())
        torch.testing.assert_close(transfer_alone[n], p.detach())


def test_mtl_paper_formula_is_weighted_average() -> None:
    net = tiny_net()
    tasks = [tiny_task(s) for s in (9, 10)]
    theta = alg.current_params(net)
    beta = 0.3
    got = _step(net, _config(algorithm="mtl-reptile", beta=beta), tasks)
    meta, _ = alg.reptile_direction(net, theta, tasks, inner_steps=2, inner_lr=0.1)
    x = torch.cat([t.all_x for t in tasks])
    y = torch.cat([t.base_y for t in tasks])
    transfer, _ = alg.transfer_direction(net, theta, x, y, lr=0.2)
    for n, t in theta.items():
        # Iteration 3 of 10 with the linear schedule: the meta step is outer_lr * (1 - 3/10).
        theta_meta = t + 0.5 * (1 - 3 / 10) * meta.get(n, torch.zeros_like(t))
        theta_d = t + transfer.get(n, torch.zeros_like(t))
        torch.testing.assert_close(got[n], beta * theta_meta + (1 - beta) * theta_d)


def test_mtl_authors_formula() -> None:
    net = tiny_net()
    tasks = [tiny_task(s) for s in (11, 12)]
    theta = alg.current_params(net)
    beta = 0.1
    config = _config(algorithm="mtl-reptile", beta=beta, combine="authors", iterations=10)
    got = _step(net, config, tasks)  # iteration 3 of 10: eps_t = outer_lr * (1 - 3/10)
    eps = 0.5 * (1 - 3 / 10)
    meta, _ = alg.reptile_direction(net, theta, tasks, inner_steps=2, inner_lr=0.1)
    per_task = [alg.transfer_direction(net, theta, t.all_x, t.base_y, lr=0.2)[0] for t in tasks]
    for n, t in theta.items():
        mean_theta_i = t + meta.get(n, torch.zeros_like(t))
        mean_theta_d = t + torch.stack([d.get(n, torch.zeros_like(t)) for d in per_task]).mean(0)
        expected = t + 0.5 * ((1 - beta) * eps * (mean_theta_i - t) + beta * (mean_theta_d - t))
        torch.testing.assert_close(got[n], expected)


def test_protonet_step_reduces_its_loss() -> None:
    net = tiny_net()
    task = tiny_task(13)
    with torch.no_grad():
        before = float(alg.protonet_loss(net, task))
    config = _config(algorithm="protonet", protonet_lr=0.05, meta_schedule="constant")
    state: dict[str, torch.Tensor] = {}
    for i in range(20):
        train_step(net, [task], config, iteration=i, rng=np.random.default_rng(0), state=state)
    with torch.no_grad():
        assert float(alg.protonet_loss(net, task)) < before


def test_protonet_direction_is_torch_adam() -> None:
    """ProtoNet's meta direction is exactly the step torch.optim.Adam takes, state included."""
    net = tiny_net()
    ref = copy.deepcopy(net)
    tasks = [tiny_task(s) for s in (14, 15)]
    config = _config(algorithm="protonet", protonet_lr=0.01, outer_lr=1.0, meta_schedule="constant")
    opt = torch.optim.Adam(ref.backbone.parameters(), lr=0.01)
    state: dict[str, torch.Tensor] = {}
    for i in range(3):
        train_step(net, tasks, config, iteration=i, rng=np.random.default_rng(0), state=state)
        opt.zero_grad()
        torch.stack([alg.protonet_loss(ref, t) for t in tasks]).mean().backward()
        opt.step()
    for (n, p), q in zip(net.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, msg=n)


def _reference_sgd_steps(net: MetaNet, batches: list[tuple[torch.Tensor, torch.Tensor]], lrs: list[float],
                         momentum: float, weight_decay: float) -> MetaNet:
    """torch.optim.SGD on the transfer head's cross-entropy, the learning rate set per step."""
    ref = copy.deepcopy(net)
    opt = torch.optim.SGD([p for n, p in ref.named_parameters() if not n.startswith("meta_head")],
                          lr=lrs[0], momentum=momentum, weight_decay=weight_decay)
    for (x, y), lr in zip(batches, lrs, strict=True):
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad()
        F.cross_entropy(ref(x, head="transfer"), y).backward()
        opt.step()
    return ref


@pytest.mark.parametrize("learner", ["reptile", "maml", "fomaml", "protonet"])
def test_mtl_with_the_supervised_recipe_reduces_to_both_halves(learner: str) -> None:
    """Mixed-class batches, momentum, weight decay and cosine decay: beta 0 is torch's SGD on the
    transfer batches, beta 1 is the meta-learner alone, over several iterations (state carried)."""
    net = tiny_net()
    recipe = dict(transfer_batch=6, momentum=0.9, weight_decay=0.01, transfer_schedule="cosine",
                  iterations=4)
    g = torch.Generator().manual_seed(3)
    batches = [(torch.rand(6, 1, 2, 2, generator=g, dtype=torch.float64), torch.randint(0, 4, (6,), generator=g))
               for _ in range(3)]
    tasks = [[tiny_task(s), tiny_task(s + 1)] for s in (20, 22, 24)]

    def run(config: PretrainConfig) -> dict[str, torch.Tensor]:
        moved = copy.deepcopy(net)
        state: dict[str, torch.Tensor] = {}
        for i, (ts, batch) in enumerate(zip(tasks, batches, strict=True)):
            train_step(moved, ts, config, iteration=i, rng=np.random.default_rng(i), state=state,
                       transfer_batch=batch)
        return alg.current_params(moved)

    mtl_zero = run(_config(algorithm=f"mtl-{learner}", beta=0.0, **recipe))
    transfer_alone = run(_config(algorithm="transfer", **recipe))
    lrs = [0.2 * 0.5 * (1 + np.cos(np.pi * i / 4)) for i in range(3)]
    ref = _reference_sgd_steps(net, batches, lrs, momentum=0.9, weight_decay=0.01)
    for n, p in ref.named_parameters():
        torch.testing.assert_close(mtl_zero[n], p.detach(), msg=n)
        torch.testing.assert_close(transfer_alone[n], p.detach(), msg=n)

    mtl_one = run(_config(algorithm=f"mtl-{learner}", beta=1.0, **recipe))
    meta_alone = run(_config(algorithm=learner, **recipe))
    for n in meta_alone:
        torch.testing.assert_close(mtl_one[n], meta_alone[n], msg=n)
    # The meta-learner alone never touches the transfer head.
    torch.testing.assert_close(meta_alone["transfer_head.weight"], net.transfer_head.weight.detach())


def test_reptile_outer_step_anneals_linearly_to_zero() -> None:
    """With meta_batch 1 and outer_lr 1, an unannealed Reptile step is theta <- theta_k (plain
    SGD on one task); annealed, iteration t moves (1 - t/T) of the way."""
    net = tiny_net()
    task = tiny_task(30)
    theta = alg.current_params(net)
    direction, _ = alg.reptile_direction(net, theta, [task], inner_steps=2, inner_lr=0.1)
    for iteration, factor in ((0, 1.0), (5, 0.5), (9, 0.1)):
        config = _config(algorithm="reptile", meta_batch=1, outer_lr=1.0, iterations=10)
        moved = copy.deepcopy(net)
        train_step(moved, [task], config, iteration=iteration, rng=np.random.default_rng(0))
        for n in alg.meta_param_names(net):
            torch.testing.assert_close(moved.get_parameter(n).detach(), theta[n] + factor * direction[n])
    constant = copy.deepcopy(net)
    train_step(constant, [task], _config(algorithm="reptile", meta_batch=1, outer_lr=1.0, iterations=10,
                                         meta_schedule="constant"), iteration=9, rng=np.random.default_rng(0))
    for n in alg.meta_param_names(net):
        torch.testing.assert_close(constant.get_parameter(n).detach(), theta[n] + direction[n])


def test_fixed_beta_algorithms_mean_the_same_under_the_authors_combination() -> None:
    """'reptile' is the meta-learner alone and 'transfer' the supervised step alone in both
    combinations (the authors' beta weights transfer, the paper's weights the meta-learner)."""
    for combine in ("paper", "authors"):
        assert _config(algorithm="reptile", combine=combine).meta_weight == 1.0
        assert _config(algorithm="reptile", combine=combine).transfer_weight == 0.0
        assert _config(algorithm="transfer", combine=combine).meta_weight == 0.0
        assert _config(algorithm="transfer", combine=combine).transfer_weight == 1.0
        assert _config(algorithm="protonet", combine=combine).transfer_weight == 0.0


def test_passes_count_the_mixed_class_batch() -> None:
    assert _config(algorithm="transfer", transfer_batch=64).passes_per_iteration() == 64
    # protonet: 3 tasks of 2 ways x 4 images; plus the supervised batch at beta 0.5.
    assert _config(algorithm="protonet").passes_per_iteration() == 24
    assert _config(algorithm="mtl-protonet", transfer_batch=10).passes_per_iteration() == 34
    assert _config(algorithm="mtl-protonet").passes_per_iteration() == 48


def test_cosine_transfer_head_logits_are_scaled_cosines() -> None:
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    net = MetaNet(backbone, feature_dim=3, meta_ways=2, num_base_classes=5, mean=[0.0], std=[1.0],
                  transfer_head="cosine", cosine_scale=7.0)
    x = torch.rand(6, 1, 2, 2)
    logits = net(x, head="transfer")
    f = net(x, head="features")
    expected = 7.0 * F.cosine_similarity(f[:, None, :], net.transfer_head.weight[None, :, :], dim=2)
    torch.testing.assert_close(logits, expected)
    assert logits.abs().max() <= 7.0 + 1e-5
    # The unused bias gets a zero direction, not an error.
    theta = alg.current_params(net)
    direction, _ = alg.transfer_direction(net, theta, x, torch.arange(6) % 5, lr=0.1)
    assert torch.count_nonzero(direction["transfer_head.bias"]) == 0
    assert torch.count_nonzero(direction["transfer_head.weight"]) > 0
    # The authors' zero head stays the default; the others keep nn.Linear's init.
    zeros = MetaNet(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)), feature_dim=3, meta_ways=2,
                    num_base_classes=5, mean=[0.0], std=[1.0])
    assert torch.count_nonzero(zeros.transfer_head.weight) == 0
    assert torch.count_nonzero(net.transfer_head.weight) == 15


def conv_net_and_tasks() -> tuple[MetaNet, list[alg.Task]]:
    """A small Conv-4 (batch norm included: its buffers must be carried per task) and 4 tasks."""
    from models.network import build_metanet

    torch.manual_seed(0)
    net = build_metanet(backbone="conv4", filters=6, channels=1, image_size=10, meta_ways=3,
                        num_base_classes=7, mean=[0.5], std=[0.3]).double()
    nn.init.normal_(net.meta_head.weight)
    tasks = []
    for s in range(4):
        g = torch.Generator().manual_seed(40 + s)
        tasks.append(alg.Task(torch.rand(6, 1, 10, 10, generator=g, dtype=torch.float64), torch.tensor([0, 0, 1, 1, 2, 2]),
                              torch.rand(3, 1, 10, 10, generator=g, dtype=torch.float64), torch.tensor([0, 1, 2]),
                              torch.zeros(9, dtype=torch.long)))
    return net, tasks


@pytest.mark.parametrize("learner", ["reptile", "fomaml", "maml"])
def test_vectorised_meta_batch_gives_the_per_task_loops_update(learner: str) -> None:
    net, tasks = conv_net_and_tasks()
    looped, vectorised = copy.deepcopy(net), copy.deepcopy(net)
    config = dict(algorithm=learner, ways=3, shots=2, queries=1, meta_batch=4, inner_steps=2, inner_lr=0.2,
                  outer_lr=0.5, iterations=10, image_size=10, channels=1)
    train_step(looped, tasks, PretrainConfig(**config), iteration=1, rng=np.random.default_rng(0))  # type: ignore[arg-type]
    train_step(vectorised, tasks, PretrainConfig(**config, vectorise_tasks=True), iteration=1,  # type: ignore[arg-type]
               rng=np.random.default_rng(0))
    moved = 0.0
    for (n, p), q in zip(looped.named_parameters(), vectorised.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-5, msg=n)
        moved = max(moved, float((p - net.get_parameter(n)).detach().abs().max()))
    assert moved > 1e-3  # the step did move the weights
    # Running statistics: the tasks' mean, a real update of the module's buffers.
    bn = "backbone.0.1.running_mean"
    assert not torch.equal(vectorised.get_buffer(bn), net.get_buffer(bn))
    with pytest.raises(Exception, match="full-batch inner steps"):
        PretrainConfig(**config, vectorise_tasks=True, inner_batch=2)  # type: ignore[arg-type]

"""Layer groups: a model's trainable modules in forward order, split into G contiguous groups.

Works for any ``nn.Module``: the forward order is recorded with forward hooks
on one small batch (registration order can differ from execution order), then
the modules are split into G contiguous groups of roughly equal parameter
count. The output head, executed last, lands in the last group.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class LayerGroup:
    """One contiguous group of trainable modules."""

    index: int
    module_names: tuple[str, ...]
    parameter_names: tuple[str, ...]
    parameter_count: int


def modules_in_forward_order(model: nn.Module, example_input: torch.Tensor) -> list[str]:
    """Names of the modules that own trainable parameters, in the order forward runs them.

    Modules never called in the forward pass come last, in registration order.
    """
    owners = {
        name: module
        for name, module in model.named_modules()
        if any(p.requires_grad for p in module.parameters(recurse=False))
    }
    order: list[str] = []
    handles = []
    for name, module in owners.items():

        def record(_module, _inputs, _output, name=name):
            if name not in order:
                order.append(name)

        handles.append(module.register_forward_hook(record))
    was_training = model.training
    try:
        model.eval()  # no batch-norm statistics are touched by this probe
        with torch.no_grad():
            model(example_input)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return order + [name for name in owners if name not in order]


def split_layer_groups(model: nn.Module, example_input: torch.Tensor, groups: int) -> list[LayerGroup]:
    """Split the model's trainable modules into ``groups`` contiguous groups.

    Boundaries are placed where the cumulative parameter count is closest to
    equal shares, with at least one module per group.

    Raises:
        ValueError: if the model has fewer trainable modules than ``groups``.
    """
    order = modules_in_forward_order(model, example_input)
    if len(order) < groups:
        raise ValueError(
            f"layer_groups={groups} but the model has only {len(order)} trainable "
            f"module(s); use an AllocationSpec with layer_groups <= {len(order)}"
        )
    modules = dict(model.named_modules())
    sizes = [
        sum(p.numel() for p in modules[name].parameters(recurse=False) if p.requires_grad)
        for name in order
    ]
    total = sum(sizes)
    cumulative = []
    running = 0
    for size in sizes:
        running += size
        cumulative.append(running)
    # boundaries[g] = index of the first module of group g + 1
    boundaries = []
    previous = 0
    for g in range(1, groups):
        target = total * g / groups
        lowest = previous + 1  # at least one module in this group
        highest = len(order) - (groups - g)  # leave one module for each later group
        best = min(range(lowest, highest + 1), key=lambda i: abs(cumulative[i - 1] - target))
        boundaries.append(best)
        previous = best
    edges = [0, *boundaries, len(order)]
    result = []
    for g in range(groups):
        names = order[edges[g] : edges[g + 1]]
        parameter_names = tuple(
            f"{name}.{pname}" if name else pname
            for name in names
            for pname, p in modules[name].named_parameters(recurse=False)
            if p.requires_grad
        )
        result.append(
            LayerGroup(
                index=g,
                module_names=tuple(names),
                parameter_names=parameter_names,
                parameter_count=sum(sizes[edges[g] : edges[g + 1]]),
            )
        )
    return result

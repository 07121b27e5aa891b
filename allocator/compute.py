"""FLOP accounting: the compute a step configuration really executes, counted once.

A step of a :class:`~allocator.job.TrainingJob` is fully described, for its
cost, by a *configuration*: the drawn batch size B, the number of kept samples
k, and which layer groups are trained. Its FLOPs are

* ``k < B``: a no-grad forward over the B drawn samples to score them, then a
  forward and backward over the k kept samples only (as Selective Backprop does;
  picking the kept samples out of one full-batch forward would save no backward
  FLOPs, because the backward matmuls would still run over the whole batch);
* ``k == B``: one forward and backward over the batch;
* no group trained: the scoring forward only.

Backward FLOPs cover only the trained part of the network: a frozen prefix gets
no backward pass, and an untrained group after the first trained one gets input
gradients but no weight gradients. ``torch.utils.flop_counter.FlopCounterMode``
measures each configuration once, on a replica of the model on the ``meta``
device (shapes only, no arithmetic, no side effects on the real model, its
buffers or its optimizer) and the result is cached; counting every step would
be too slow. Models that cannot run on ``meta`` are counted on a CPU replica.

.. warning:: Counts are for the matmul/convolution/attention ops that
   ``FlopCounterMode`` knows; elementwise work (activations, the optimizer
   update) is not counted, as in the usual FLOP conventions.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from allocator.token_dropping import TokenDropper

LossFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def count_flops(run: Callable[[], object]) -> int:
    """FLOPs executed by ``run()``, measured with ``FlopCounterMode``."""
    with FlopCounterMode(display=False) as counter:
        run()
    return int(counter.get_total_flops())


class StepCostModel:
    """Measured FLOPs of each step configuration of one model, cached.

    Args:
        model: the job's model (not modified: a replica is counted).
        group_of_parameter: for each parameter name of ``model``, its layer group.
        example_input: one training input (any batch size) giving shape and dtype.
        example_target: the matching target.
        loss_fn: per-sample loss ``loss_fn(output, target) -> (batch,)``.
    """

    def __init__(
        self,
        model: nn.Module,
        group_of_parameter: dict[str, int],
        example_input: torch.Tensor,
        example_target: torch.Tensor,
        loss_fn: LossFunction,
    ) -> None:
        self._loss_fn = loss_fn
        self._input = example_input[:1].detach()
        self._target = example_target[:1].detach()
        self._group_of_parameter = group_of_parameter
        self._cache: dict[tuple, int] = {}
        try:
            self._replica = copy.deepcopy(model).to("meta")
            self._device = torch.device("meta")
            self._forward(2, grad=True)  # fail early if the model cannot run on meta
        except Exception:  # noqa: BLE001 - any failure means: count on a real replica
            self._replica = copy.deepcopy(model).to("cpu")
            self._device = torch.device("cpu")
        self._replica.train(model.training)
        self._token_dropper: TokenDropper | None = None

    def drop_tokens(self, keep: float) -> None:
        """Count reduced configurations (``reduced=True``) with ``keep`` of the tokens (the first ones)."""
        if self._token_dropper is not None:
            self._token_dropper.remove()
        self._token_dropper = TokenDropper(self._replica, keep)
        self._cache = {key: flops for key, flops in self._cache.items() if not key[-1]}

    def _batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._device.type == "meta":
            x = torch.empty((size, *self._input.shape[1:]), dtype=self._input.dtype, device="meta")
            y = torch.empty((size, *self._target.shape[1:]), dtype=self._target.dtype, device="meta")
            return x, y
        x = self._input.to("cpu").expand(size, *self._input.shape[1:]).contiguous()
        y = self._target.to("cpu").expand(size, *self._target.shape[1:]).contiguous()
        return x, y

    def _set_trained(self, trained: tuple[bool, ...]) -> None:
        for name, parameter in self._replica.named_parameters():
            group = self._group_of_parameter.get(name)
            parameter.requires_grad_(group is not None and trained[group])

    def _forward(self, size: int, grad: bool, reduced: bool = False) -> None:
        x, y = self._batch(size)
        if reduced and self._token_dropper is None:
            raise ValueError("a reduced configuration needs drop_tokens(keep) first")
        if self._token_dropper is not None:
            self._token_dropper.active = reduced
        try:
            with torch.set_grad_enabled(grad):
                losses = self._loss_fn(self._replica(x), y)
                if grad and losses.requires_grad:
                    losses.mean().backward()
        finally:
            if self._token_dropper is not None:
                self._token_dropper.active = False
        for parameter in self._replica.parameters():
            parameter.grad = None

    def forward_flops(self, batch_size: int, reduced: bool = False) -> int:
        """FLOPs of a no-grad forward pass over ``batch_size`` samples (``reduced``: with tokens dropped)."""
        key = ("forward", batch_size, reduced)
        if key not in self._cache:
            self._cache[key] = count_flops(lambda: self._forward(batch_size, grad=False, reduced=reduced))
        return self._cache[key]

    def training_pass_flops(self, kept: int, trained: tuple[bool, ...], reduced: bool = False) -> int:
        """FLOPs of a forward and backward pass over ``kept`` samples, ``trained`` groups."""
        if not any(trained):
            return self.forward_flops(kept, reduced)
        key = ("train", kept, trained, reduced)
        if key not in self._cache:
            self._set_trained(trained)
            self._cache[key] = count_flops(lambda: self._forward(kept, grad=True, reduced=reduced))
        return self._cache[key]

    def step_flops(self, batch_size: int, kept: int, trained: tuple[bool, ...], reduced: bool = False) -> int:
        """FLOPs of one optimizer step: scoring forward (when ``kept < batch_size``) + training pass.

        ``reduced``: the step's forward passes see the share of the tokens set by :meth:`drop_tokens`.
        """
        if not any(trained):
            return self.forward_flops(batch_size, reduced)
        if kept >= batch_size:
            return self.training_pass_flops(batch_size, trained, reduced)
        return self.forward_flops(batch_size, reduced) + self.training_pass_flops(kept, trained, reduced)

    @property
    def configurations_counted(self) -> int:
        """How many distinct configurations were measured (the cache size)."""
        return len(self._cache)

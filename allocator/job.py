"""TrainingJob: a real supervised PyTorch training job, advanced one interval at a time.

A job owns a model, its data (as tensors on the job's device), an optimizer, a
learning-rate schedule and a compute budget R in FLOPs. ``advance(allocation)``
runs one interval: ``allocation.steps`` optimizer steps whose minibatches,
backward passes and trained layers follow the allocation, and returns an
:class:`IntervalReport` with the FLOPs spent, the losses and the next
observation. See :mod:`allocator.allocation` for what an allocation means and
:mod:`allocator.compute` for how FLOPs are counted.

The hot loop never synchronises with the host: minibatches are drawn by index
on the device, per-sample losses and gradient statistics accumulate in device
tensors, and everything is read once per interval, together with the
validation loss.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from allocator.allocation import (
    SHARE_PRIORS,
    Allocation,
    AllocationSpec,
    check_choice,
    check_selection_gate,
    loss_proportional_shares,
)
from allocator.compute import StepCostModel
from allocator.layers import LayerGroup, split_layer_groups
from allocator.stats import SELECTION_PROBE_FRACTION, IntervalStatistics, ObservationBuilder
from allocator.token_dropping import TokenDropper, TokenDropping

LOSSES = ("cross_entropy", "mse")
OPTIMIZERS = ("adam", "adamw", "sgd")
LR_SCHEDULES = ("linear", "constant")
_EVAL_CHUNK = 1024
_CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)  # what freeze_cnn_first_group looks for


@dataclass
class IntervalReport:
    """What one call of :meth:`TrainingJob.advance` did and observed."""

    index: int
    allocation: Allocation
    steps: int  # optimizer steps actually taken (fewer than asked when the budget ran out)
    compute: int  # FLOPs of this interval
    compute_used: int  # FLOPs since the start of the job
    budget: int
    train_loss: float  # mean loss of the samples drawn in this interval (nan when no step)
    val_loss: float
    val_accuracy: float | None  # classification jobs only
    diverged: bool
    stopped: bool  # the allocation asked for zero steps
    budget_spent: bool
    done: bool
    observation: np.ndarray = field(repr=False)
    eval_compute: int = 0  # FLOPs of the validation pass, not charged to the budget
    wall_time: float = 0.0
    token_share: float = 1.0  # mean share of each input's tokens its steps saw (token dropping; 1: all)

    @property
    def compute_fraction(self) -> float:
        """This interval's share of the budget, C_t / R."""
        return self.compute / self.budget


def _resolve_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device``; ``ValueError`` for a bad name, or for CUDA without a GPU."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device must be 'cpu', 'auto', 'cuda' or 'cuda:N', got {device!r}") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device is {device!r} but torch sees no GPU; use 'cpu' or 'auto'")
    return resolved


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a small host tensor to ``device`` without making the host wait for the GPU.

    A plain ``.to("cuda")`` from ordinary (pageable) memory synchronises the
    stream; from pinned memory with ``non_blocking=True`` it is queued like a
    kernel, and PyTorch keeps the pinned buffer alive until the copy has run.
    """
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def _as_tensors(data, argument: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(X, y)`` tensors from a pair of arrays/tensors or a map-style torch ``Dataset``."""
    if isinstance(data, Dataset) or (hasattr(data, "__getitem__") and hasattr(data, "__len__") and not isinstance(data, (tuple, list))):
        if len(data) == 0:
            raise ValueError(f"{argument} is empty")
        pairs = [data[i] for i in range(len(data))]
        try:
            xs = torch.stack([torch.as_tensor(x) for x, _ in pairs])
            ys = torch.stack([torch.as_tensor(y) for _, y in pairs])
        except (TypeError, ValueError, RuntimeError) as error:
            raise ValueError(f"{argument}: every item of the dataset must be an (x, y) pair of equal shapes") from error
        return xs, ys
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise ValueError(f"{argument} must be an (X, y) pair or a torch Dataset, got {type(data).__name__}")
    x, y = (torch.as_tensor(np.asarray(v)) if not torch.is_tensor(v) else v for v in data)
    return x, y


def _check_data(x: torch.Tensor, y: torch.Tensor, argument: str, loss: str | Callable) -> tuple[torch.Tensor, torch.Tensor]:
    if x.ndim == 0 or y.ndim == 0:
        raise ValueError(f"{argument}: X and y must have a batch dimension")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{argument}: X has {x.shape[0]} samples but y has {y.shape[0]}")
    if x.shape[0] == 0:
        raise ValueError(f"{argument} is empty")
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{argument}: X contains NaN or inf")
    if loss == "cross_entropy":
        if y.is_floating_point() and not bool((y == y.round()).all()):
            raise ValueError(f"{argument}: y must hold integer class labels for loss='cross_entropy'")
        y = y.long()
        if y.ndim != 1:
            raise ValueError(f"{argument}: y must be 1-D class labels for loss='cross_entropy', got shape {tuple(y.shape)}")
        if bool((y < 0).any()):
            raise ValueError(f"{argument}: y holds negative class labels")
    elif y.is_floating_point() and not bool(torch.isfinite(y).all()):
        raise ValueError(f"{argument}: y contains NaN or inf")
    return x, y


def _mse_per_sample(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    target = target.to(output.dtype).reshape(output.shape)
    return (output - target).square().reshape(output.shape[0], -1).mean(dim=1)


def _cross_entropy_per_sample(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(output, target, reduction="none")


class TrainingJob:
    """A supervised PyTorch training job with a compute budget, run interval by interval.

    Args:
        model: any ``nn.Module``; moved to ``device``. After the run it holds
            the trained weights (every parameter trainable again).
        train: ``(X, y)`` tensors or arrays, or a map-style torch ``Dataset``
            of ``(x, y)`` pairs (materialised into tensors on the device).
        val: the same for validation; a fixed subset of at most
            ``val_samples`` samples is evaluated after every interval.
        loss: ``"cross_entropy"`` (y: class labels), ``"mse"``, or a callable
            ``loss(output, y) -> per-sample losses of shape (batch,)``.
        optimizer: ``"adam"``, ``"adamw"`` or ``"sgd"`` (with momentum).
        lr: initial learning rate.
        batch_size: samples drawn per optimizer step.
        budget_steps: the budget R is the FLOPs of this many uniform steps.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ...
        seed: seeds minibatch sampling, gate draws and the validation subset.
        spec: the :class:`AllocationSpec` (K, G, max steps); defaults to
            ``AllocationSpec()``. A policy sets its own with :meth:`use_spec`.
        weight_decay: optimizer weight decay.
        momentum: SGD momentum.
        lr_schedule: ``"linear"`` (default: decays to zero as the budget is
            spent, by compute, not by step count) or ``"constant"``.
        name: a label for reports and TensorBoard.
        val_samples: size of the fixed validation subset.

    .. warning:: A group that is not trained gets no gradients, but its
       modules still run in training mode: batch-norm running statistics keep
       updating and dropout stays on.

    .. warning:: A job runs once. ``advance`` after the job is done raises
       ``RuntimeError``; build a new job (e.g. from a factory function) to
       train again. The model is not re-initialised by the job: the same seed
       gives the same run only from the same initial weights.

    .. warning:: The interval lengths are part of the run, not only where it
       is read. Even at equal shares each minibatch is stratified over the
       loss-quantile sample groups, and the groups are recomputed at each
       interval's end, so the same standard training split into other
       intervals draws other batches and follows another trajectory (its
       best loss within about 2 % of the 20-step grid's in the median, above
       or below it pair by pair: BENCHMARKS.md section 5, twenty-seventh
       round, ``benchmarks/target_noise.py``).
    """

    def __init__(
        self,
        model: nn.Module,
        train,
        val,
        loss: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = "cross_entropy",
        optimizer: str = "adam",
        lr: float = 1e-3,
        batch_size: int = 64,
        budget_steps: int = 200,
        device: str | torch.device = "auto",
        seed: int = 0,
        spec: AllocationSpec | None = None,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        lr_schedule: str = "linear",
        name: str | None = None,
        val_samples: int = 1024,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(loss) and loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES} or a callable, got {loss!r}")
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {lr_schedule!r}")
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
        for argument, value in (("batch_size", batch_size), ("budget_steps", budget_steps), ("val_samples", val_samples)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{argument} must be an integer >= 1, got {value!r}")
        if not (math.isfinite(weight_decay) and weight_decay >= 0):
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
        if spec is not None and not isinstance(spec, AllocationSpec):
            raise ValueError(f"spec must be an AllocationSpec, got {type(spec).__name__}")

        self.device = _resolve_device(device)
        self.name = name or type(model).__name__
        self.seed = int(seed)
        self.spec = spec or AllocationSpec()
        self.batch_size = int(batch_size)
        self.budget_steps = int(budget_steps)
        self.lr = float(lr)
        self.lr_schedule = lr_schedule
        self.loss_name = loss if isinstance(loss, str) else getattr(loss, "__name__", "custom")
        self.is_classification = loss == "cross_entropy"
        self._loss_fn = {"cross_entropy": _cross_entropy_per_sample, "mse": _mse_per_sample}.get(loss, loss) if isinstance(loss, str) else loss

        train_x, train_y = _check_data(*_as_tensors(train, "train"), "train", loss)
        val_x, val_y = _check_data(*_as_tensors(val, "val"), "val", loss)
        if train_x.shape[1:] != val_x.shape[1:]:
            raise ValueError(f"train and val inputs differ in shape: {tuple(train_x.shape[1:])} vs {tuple(val_x.shape[1:])}")
        subset = np.random.default_rng(self.seed).permutation(val_x.shape[0])[:val_samples]
        subset = torch.as_tensor(np.sort(subset))
        self._train_x = train_x.to(self.device)
        self._train_y = train_y.to(self.device)
        self._val_x = val_x[subset].to(self.device)
        self._val_y = val_y[subset].to(self.device)
        self.training_set_size = int(train_x.shape[0])

        self.model = model.to(self.device)
        self.model.train()
        parameters = [p for p in self.model.parameters() if p.requires_grad]
        if not parameters:
            raise ValueError("model has no trainable parameters")
        if optimizer == "adam":
            self.optimizer = torch.optim.Adam(parameters, lr=self.lr, weight_decay=weight_decay)
        elif optimizer == "adamw":
            self.optimizer = torch.optim.AdamW(parameters, lr=self.lr, weight_decay=weight_decay)
        else:
            self.optimizer = torch.optim.SGD(parameters, lr=self.lr, momentum=momentum, weight_decay=weight_decay)
        self.optimizer_name = optimizer

        #: Optional ``selector(losses) -> scores`` of the drawn batch; the
        #: ``keep`` highest scores get the backward pass. ``None`` ranks by loss.
        #: Called only when some samples are dropped (keep fraction < 1).
        self.sample_selector: Callable[[torch.Tensor], torch.Tensor] | None = None

        #: Optional alignment threshold of the *selection gate* (``None``: off).
        #: When set, each interval's first batch is probed without changing
        #: training (:attr:`selection_alignment`), and an allocation that asks
        #: for selection (keep fraction < 1) keeps the whole batch instead
        #: unless the previous interval's alignment is at least this value.
        #: Why: selective backprop pays when the hardest samples' gradient
        #: points where the whole batch's does, and loses where it does not
        #: (the 1-D CNN, BENCHMARKS.md section 5). Trap: the first interval
        #: has no measurement yet, so it never selects.
        self.selection_gate = None
        #: Skip the interval that would end the budget (``False``: off). When
        #: set, an allocation that trains, asked for once the budget left is
        #: at most what the previous interval spent, stops the job instead
        #: (reported as a stop: ``report.stopped``). Why: that interval runs at
        #: a learning rate decayed to near zero and buys the least of any,
        #: while J charges it in full; standard training stopped there wins 21
        #: of 24 train pairs (BENCHMARKS.md section 5). A policy whose spec has
        #: ``stop_before_budget`` sets it in ``reset(job)``. Trap: the first
        #: interval has spent nothing before it, so it never stops this way.
        self.stop_before_budget = False
        #: ``uniform`` or ``loss`` (see ``AllocationSpec.share_prior``): with
        #: ``loss`` each interval draws the allocation's sample shares times
        #: the loss-proportional shares of the groups' last seen losses,
        #: renormalised, and reports and observes the shares it drew. A policy
        #: whose spec has ``share_prior: loss`` sets it in ``reset(job)``.
        #: Trap: the first interval has seen no loss, so it draws the
        #: allocation's shares as they are.
        self.share_prior = "uniform"
        #: Optional :class:`~allocator.token_dropping.TokenDropping` (``None``: off).
        #: Steps see ``keep`` of each input's tokens until ``until`` of the budget
        #: is spent, at their reduced cost; validation sees every token. Does
        #: nothing on a model without a token-emitting module (see
        #: :mod:`allocator.token_dropping`). A policy whose spec has
        #: ``token_dropping`` sets it in ``reset(job)``. Trap: set it before the
        #: first interval; the budget stays the uniform steps' FLOPs.
        self.token_dropping = None
        #: Keep the first layer group frozen at every interval on a model with a
        #: convolution (``AllocationSpec.freeze_cnn_first_group``): the allocation's
        #: first gate becomes 0, and the interval reports and observes it so. Does
        #: nothing on a model without a convolution or with one layer group. A
        #: policy whose spec has it sets it in ``reset(job)``.
        self.freeze_cnn_first_group = False
        #: ``all``, ``convolutional`` or ``cnn-first-group`` (``AllocationSpec.layer_lever``):
        #: with ``convolutional``, on a model without a convolution every layer gate
        #: becomes 1 (reported and observed so), so the action's gates act only
        #: on CNNs; ``cnn-first-group`` also sets every gate but the first to 1
        #: on CNNs. Set by the env and by a policy whose spec has it, in
        #: ``reset(job)``.
        self.layer_lever = "all"
        #: ``interval`` or ``job`` (``AllocationSpec.gate_decision``): with ``job``
        #: the layer gates run on the first interval that trains (after
        #: :attr:`layer_lever` and :attr:`freeze_cnn_first_group`) hold for every
        #: later interval, whatever the allocation asks; reported and observed as
        #: run. Set by the env and by a policy whose spec has it, in ``reset(job)``.
        #: Trap: set it before the first interval.
        self.gate_decision = "interval"
        self._held_layer_gates: tuple[float, ...] | None = None
        self._group_log_loss: np.ndarray | None = None
        self._last_interval_compute = 0
        self._selection_alignment = float("nan")
        self._probe_next = False
        self._alignment_on_device: torch.Tensor | None = None

        self._generator = torch.Generator(device=self.device).manual_seed(self.seed)
        self._gate_rng = np.random.default_rng(self.seed + 1_000_003)
        self._started = False
        self._done = False
        self._diverged = False
        self._compute_used = 0
        self._interval = 0
        self._step_count = 0
        self._samples_drawn = 0
        self._last_report: IntervalReport | None = None

    # ------------------------------------------------------------------ set-up

    def use_spec(self, spec: AllocationSpec) -> None:
        """Run this job with another :class:`AllocationSpec` (before its first interval)."""
        if not isinstance(spec, AllocationSpec):
            raise ValueError(f"spec must be an AllocationSpec, got {type(spec).__name__}")
        if self._interval > 0 or self._done:
            raise RuntimeError("use_spec must be called before the job's first interval")
        if spec != self.spec:
            self.spec = spec
            self._started = False

    def _ensure_started(self) -> None:
        if self._started:
            return
        spec = self.spec
        example = self._train_x[:2]
        self._layer_groups: list[LayerGroup] = split_layer_groups(self.model, example, spec.layer_groups)
        named = dict(self.model.named_parameters())
        group_of = {name: g.index for g in self._layer_groups for name in g.parameter_names}
        self._group_parameters = [[named[n] for n in g.parameter_names] for g in self._layer_groups]
        self._costs = StepCostModel(self.model, group_of, self._train_x, self._train_y, self._loss_fn)
        self._count_reduced_steps()
        everything = (True,) * spec.layer_groups
        self._uniform_step_flops = self._costs.step_flops(self.batch_size, self.batch_size, everything)
        if self._uniform_step_flops <= 0:
            raise ValueError("the model's forward and backward pass counts 0 FLOPs; FlopCounterMode sees no matmul or convolution in it")
        self.budget = self.budget_steps * self._uniform_step_flops
        self.eval_flops = sum(
            self._costs.forward_flops(min(_EVAL_CHUNK, len(self._val_x) - start))
            for start in range(0, len(self._val_x), _EVAL_CHUNK)
        )

        n = self.training_set_size
        self._last_loss = torch.full((n,), float("inf"), device=self.device)
        self._last_seen = torch.full((n,), -1, dtype=torch.long, device=self.device)
        self._order = torch.arange(n, device=self.device)
        # position in the loss-sorted order -> sample group (group 0: lowest losses)
        self._group_of_position = (torch.arange(n, device=self.device) * spec.sample_groups) // n
        self._group_bounds = [(g * n) // spec.sample_groups for g in range(spec.sample_groups + 1)]
        self._gradient_sums = [torch.zeros_like(p) for group in self._group_parameters for p in group]
        self._parameter_group = [g for g, group in enumerate(self._group_parameters) for _ in group]
        self._parameter_group_index = torch.tensor(self._parameter_group, device=self.device)
        self._flat_parameters = [p for group in self._group_parameters for p in group]
        self._group_index_cache: dict[tuple[bool, ...], torch.Tensor] = {}
        self._trained_state: tuple[bool, ...] | None = None

        with torch.no_grad():
            val_loss, val_accuracy = (t.item() for t in self._evaluate())
        if not math.isfinite(val_loss):
            raise ValueError("the initial validation loss is not finite; check the model and data")
        self.initial_val_loss = max(val_loss, 1e-12)
        self._val_loss = val_loss
        self._val_accuracy = val_accuracy if self.is_classification else None
        self._best_val_loss = val_loss
        self._observations = ObservationBuilder(spec, self.initial_val_loss)
        self._observation = self._observations.initial(
            self.budget_steps * self.batch_size, n, Allocation.uniform(spec)
        )
        self._started = True

    # ------------------------------------------------------------------ state

    @property
    def selection_gate(self) -> float | None:
        """The selection gate's alignment threshold, or ``None`` (off); see ``__init__``.

        An :class:`~allocator.AllocatorPolicy` trained with the gate sets it in
        ``reset(job)``; the env sets its own on every job it runs.
        """
        return self._selection_gate

    @selection_gate.setter
    def selection_gate(self, threshold: float | None) -> None:
        self._selection_gate = check_selection_gate(threshold)

    @property
    def share_prior(self) -> str:
        """``uniform`` or ``loss``: how the allocation's sample shares are drawn; see ``__init__``."""
        return self._share_prior

    @share_prior.setter
    def share_prior(self, prior: str) -> None:
        check_choice("share_prior", prior, SHARE_PRIORS)
        self._share_prior = prior

    @property
    def token_dropping(self) -> TokenDropping | None:
        """Token dropping of this job's steps, or ``None`` (off); see ``__init__``."""
        return self._token_dropping

    @token_dropping.setter
    def token_dropping(self, dropping) -> None:
        dropping = TokenDropping.from_value(dropping)
        if getattr(self, "_interval", 0) > 0:
            raise RuntimeError("token_dropping must be set before the job's first interval")
        old = getattr(self, "_token_dropper", None)
        if old is not None:
            old.remove()
        self._token_dropping = dropping
        self._token_dropper = None
        if dropping is not None:
            # its own stream: the job's minibatches are drawn as they would be without it
            generator = torch.Generator(device=self.device).manual_seed(self.seed + 2_000_029)
            self._token_dropper = TokenDropper(self.model, dropping.keep, generator)
        if getattr(self, "_started", False):
            self._count_reduced_steps()

    @property
    def has_convolution(self) -> bool:
        """Whether the model has a convolution (what the CNN rules and ``layer_lever`` look for)."""
        return any(isinstance(module, _CONVOLUTIONS) for module in self.model.modules())

    @property
    def freezes_cnn_first_group(self) -> bool:
        """Whether :attr:`freeze_cnn_first_group` is set and applies: a convolution and more than one layer group."""
        return bool(self.freeze_cnn_first_group) and self.spec.layer_groups > 1 and self.has_convolution

    @property
    def acting_layer_gates(self) -> int:
        """How many of the action's layer gates, from the first, :attr:`layer_lever` lets act; the rest run at 1.

        All with ``all``; none on a model without a convolution otherwise; on a CNN all
        with ``convolutional`` and the first with ``cnn-first-group``.
        """
        if self.layer_lever == "all":
            return self.spec.layer_groups
        if not self.has_convolution:
            return 0
        return 1 if self.layer_lever == "cnn-first-group" else self.spec.layer_groups

    @property
    def layer_gates_closed(self) -> bool:
        """Whether :attr:`layer_lever` keeps every layer gate of this job at 1 (not ``all``, on a model without a convolution)."""
        return self.acting_layer_gates == 0

    @property
    def drops_tokens(self) -> bool:
        """Whether token dropping is set and the model has tokens to drop."""
        return self._token_dropper is not None and self._token_dropper.applies

    def _count_reduced_steps(self) -> None:
        if self.drops_tokens:
            self._costs.drop_tokens(self._token_dropping.keep)

    @property
    def selection_alignment(self) -> float:
        """Cosine between the gradients of the hardest third's mean loss and the whole batch's.

        Measured on the first batch of the last interval, over all parameters,
        only while :attr:`selection_gate` is set; ``nan`` before that (or when
        a gradient is zero). Near 1, backpropagating only the hardest samples
        moves the model the way the whole batch would.
        """
        return self._selection_alignment

    @property
    def layer_groups(self) -> list[LayerGroup]:
        """The model's layer groups (contiguous, forward order, head in the last)."""
        self._ensure_started()
        return self._layer_groups

    @property
    def compute_used(self) -> int:
        """FLOPs spent so far (validation not counted)."""
        return self._compute_used

    @property
    def compute_fraction(self) -> float:
        """Share of the budget spent so far, in [0, 1]."""
        self._ensure_started()
        return self._compute_used / self.budget

    @property
    def done(self) -> bool:
        return self._done

    @property
    def diverged(self) -> bool:
        return self._diverged

    @property
    def val_loss(self) -> float:
        """Validation loss after the latest interval (the initial one before any)."""
        self._ensure_started()
        return self._val_loss

    @property
    def val_accuracy(self) -> float | None:
        self._ensure_started()
        return self._val_accuracy

    @property
    def uniform_step_flops(self) -> int:
        """FLOPs of one standard training step; the budget is ``budget_steps`` of them."""
        self._ensure_started()
        return self._uniform_step_flops

    @property
    def observation_size(self) -> int:
        """Length of this job's observations under its current spec."""
        from allocator.stats import ObservationLayout

        return ObservationLayout(self.spec).size

    def observation(self) -> np.ndarray:
        """The current observation (see :mod:`allocator.stats` for its layout)."""
        self._ensure_started()
        return self._observation.copy()

    def step_flops(self, keep_fraction: float, trained: Sequence[bool]) -> int:
        """FLOPs of one step with this keep fraction and these layer groups trained."""
        self._ensure_started()
        return self._costs.step_flops(self.batch_size, self.kept_count(keep_fraction), tuple(bool(t) for t in trained))

    def sample_groups(self) -> torch.Tensor:
        """The current sample group (0 = lowest last-seen loss) of every training sample.

        Groups are recomputed once per interval, at its end; never-seen samples
        count as the highest losses.
        """
        self._ensure_started()
        groups = torch.empty_like(self._order)
        groups[self._order] = self._group_of_position
        return groups

    def kept_count(self, keep_fraction: float) -> int:
        """Samples of a drawn batch that get the backward pass (at least one)."""
        return max(1, min(self.batch_size, int(round(keep_fraction * self.batch_size))))

    # ------------------------------------------------------------------ the interval

    def advance(self, allocation: Allocation) -> IntervalReport:
        """Run one interval under ``allocation`` and report what it cost and achieved.

        ``allocation.steps == 0`` stops the job without spending compute. The
        job ends (``report.done``) when it stops, diverges (NaN or inf loss) or
        when the next step would exceed the budget.
        """
        self._ensure_started()
        if self._done:
            raise RuntimeError("this training job is finished; build a new TrainingJob to train again")
        if not isinstance(allocation, Allocation):
            raise ValueError(f"advance expects an Allocation, got {type(allocation).__name__}")
        self.spec.check(allocation)
        started = time.perf_counter()
        if (
            self.stop_before_budget
            and not allocation.stops
            and 0 < self.budget - self._compute_used <= self._last_interval_compute
        ):
            allocation = dataclasses.replace(allocation, steps=0)
        if allocation.stops:
            self._done = True
            self._finish()
            return self._report(allocation, steps=0, compute=0, train_loss=float("nan"), stopped=True, budget_spent=False, wall_time=0.0)

        batch = self.batch_size
        kept = self.kept_count(allocation.keep_fraction)
        gated = self.selection_gate is not None
        if gated and kept < batch and not self._selection_alignment >= self.selection_gate:
            # the gate is closed: standard backward passes, charged, reported and observed as such
            kept = batch
            allocation = dataclasses.replace(allocation, keep_fraction=1.0)
        acting = self.acting_layer_gates
        if min(allocation.layer_gates[acting:], default=1.0) < 1.0:
            always_trained = (1.0,) * (len(allocation.layer_gates) - acting)
            allocation = dataclasses.replace(allocation, layer_gates=(*allocation.layer_gates[:acting], *always_trained))
        if self.freezes_cnn_first_group and allocation.layer_gates[0] > 0.0:
            allocation = dataclasses.replace(allocation, layer_gates=(0.0, *allocation.layer_gates[1:]))
        if self.gate_decision == "job":
            # one decision per job: the first trained interval's gates, kept to the end
            if self._held_layer_gates is None:
                self._held_layer_gates = allocation.layer_gates
            allocation = dataclasses.replace(allocation, layer_gates=self._held_layer_gates)
        if self.share_prior == "loss" and self._group_log_loss is not None:
            # the same groups the next batches are drawn from: _read_statistics sorted both
            drawn_shares = loss_proportional_shares(self._group_log_loss) * np.asarray(allocation.sample_shares)
            allocation = dataclasses.replace(
                allocation, sample_shares=tuple(float(x) for x in drawn_shares / drawn_shares.sum())
            )
        self._alignment_on_device = torch.full((), float("nan"), device=self.device) if gated else None
        gates = np.asarray(allocation.layer_gates)
        self._prepare_sampling(allocation.sample_shares)
        self._train_loss_sum = torch.zeros((), device=self.device)
        self._gradient_square_sums = torch.zeros(self.spec.layer_groups, device=self.device)
        self._trained_steps = np.zeros(self.spec.layer_groups, dtype=np.int64)
        torch._foreach_zero_(self._gradient_sums)

        steps = 0
        compute = 0
        drawn = 0
        reduced_steps = 0
        # steps see part of the tokens while the compute used is below this (0: token dropping off)
        dropping_until = self._token_dropping.until * self.budget if self.drops_tokens else 0
        budget_spent = False
        for _ in range(allocation.steps):
            trained = tuple(bool(t) for t in self._gate_rng.random(len(gates)) < gates)
            reduced = self._compute_used < dropping_until
            cost = self._costs.step_flops(batch, kept, trained, reduced)
            if self._compute_used + cost > self.budget:
                budget_spent = True
                break
            if self.lr_schedule == "linear":
                lr = self.lr * max(0.0, 1.0 - self._compute_used / self.budget)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
            self._probe_next = gated and steps == 0  # the interval's first batch, read by _step
            self._step(kept, trained, reduced)
            reduced_steps += reduced
            self._compute_used += cost
            compute += cost
            steps += 1
            drawn += batch
            self._trained_steps += np.asarray(trained)
        budget_spent = budget_spent or self._compute_used >= self.budget
        self._samples_drawn += drawn
        self._last_interval_compute = compute

        statistics = self._read_statistics(drawn, allocation)
        self._interval += 1
        if self._diverged or budget_spent:
            self._done = True
            self._finish()
        return self._report(
            allocation,
            steps=steps,
            compute=compute,
            train_loss=statistics.train_loss,
            stopped=False,
            budget_spent=budget_spent,
            wall_time=time.perf_counter() - started,
            token_share=1.0 - (1.0 - self._token_dropping.keep) * reduced_steps / steps if reduced_steps else 1.0,
        )

    def _report(
        self, allocation, *, steps, compute, train_loss, stopped, budget_spent, wall_time, token_share=1.0
    ) -> IntervalReport:
        report = IntervalReport(
            index=self._interval,
            allocation=allocation,
            steps=steps,
            compute=compute,
            compute_used=self._compute_used,
            budget=self.budget,
            train_loss=train_loss,
            val_loss=self._val_loss,
            val_accuracy=self._val_accuracy,
            diverged=self._diverged,
            stopped=stopped,
            budget_spent=budget_spent,
            done=self._done,
            observation=self._observation.copy(),
            eval_compute=0 if stopped else self.eval_flops,
            wall_time=wall_time,
            token_share=token_share,
        )
        self._last_report = report
        return report

    def _finish(self) -> None:
        # leave the user's model fully trainable, whatever the last gates were
        for group in self._group_parameters:
            for parameter in group:
                parameter.requires_grad_(True)
                parameter.grad = None
        self._trained_state = None

    def _prepare_sampling(self, shares: Sequence[float]) -> None:
        """Per batch slot, the range of loss-sorted positions it draws from."""
        batch = self.batch_size
        raw = np.asarray(shares) * batch
        counts = np.floor(raw).astype(int)
        # largest remainders get the leftover slots, so counts sum to the batch
        for g in np.argsort(-(raw - counts), kind="stable")[: batch - counts.sum()]:
            counts[g] += 1
        starts, sizes = [], []
        for g, count in enumerate(counts):
            low, high = self._group_bounds[g], self._group_bounds[g + 1]
            if high <= low:  # fewer samples than groups: draw from the whole set
                low, high = 0, self.training_set_size
            starts += [low] * int(count)
            sizes += [high - low] * int(count)
        # one host-to-device copy per interval, none per step, and it does not wait for the GPU
        self._slot_start = _to_device(torch.tensor(starts, dtype=torch.long), self.device)
        self._slot_size = _to_device(torch.tensor(sizes, dtype=torch.float32), self.device)
        self.last_batch_group_counts = counts

    def _set_trained(self, trained: tuple[bool, ...]) -> None:
        if trained == self._trained_state:
            return
        for flag, group in zip(trained, self._group_parameters):
            for parameter in group:
                parameter.requires_grad_(flag)
        self._trained_state = trained

    def draw_batch(self, sample_shares: Sequence[float] | None = None) -> torch.Tensor:
        """Indices of one minibatch drawn by ``sample_shares`` (default: the last interval's).

        Meant for tests and tools: it draws from the job's own generator.
        """
        self._ensure_started()
        if sample_shares is not None:
            self.spec.check(Allocation(sample_shares, 1.0, (1.0,) * self.spec.layer_groups, 0))
            self._prepare_sampling(sample_shares)
        elif not hasattr(self, "_slot_start"):
            self._prepare_sampling((1.0 / self.spec.sample_groups,) * self.spec.sample_groups)
        uniform = torch.rand(self.batch_size, generator=self._generator, device=self.device)
        positions = self._slot_start + (uniform * self._slot_size).long()
        return self._order[positions]

    def _remember(self, indices: torch.Tensor, losses: torch.Tensor) -> None:
        losses = losses.detach().float()
        self._last_loss[indices] = losses
        self._last_seen.index_fill_(0, indices, self._step_count)
        self._train_loss_sum += losses.sum()

    def _step(self, kept: int, trained: tuple[bool, ...], reduced: bool = False) -> None:
        indices = self.draw_batch()
        x, y = self._train_x[indices], self._train_y[indices]
        if self._probe_next:
            self._probe_next = False
            self._probe_selection(x, y)  # on every token: it measures the model, not the step
        if not reduced:
            self._train_step(indices, x, y, kept, trained)
            return
        self._token_dropper.draw()
        self._token_dropper.active = True  # the scoring and the training pass see the same tokens
        try:
            self._train_step(indices, x, y, kept, trained)
        finally:
            self._token_dropper.active = False

    def _train_step(self, indices, x, y, kept: int, trained: tuple[bool, ...]) -> None:
        self._set_trained(trained)
        any_trained = any(trained)
        if kept < self.batch_size or not any_trained:
            with torch.no_grad():
                scores = self._loss_fn(self.model(x), y)
            self._remember(indices, scores)
            if not any_trained:
                self._step_count += 1
                return
            ranking = scores if self.sample_selector is None else self.sample_selector(scores)
            chosen = torch.topk(ranking, kept, sorted=False).indices
            losses = self._loss_fn(self.model(x[chosen]), y[chosen])
        else:
            losses = self._loss_fn(self.model(x), y)
            self._remember(indices, losses)
        self.optimizer.zero_grad(set_to_none=True)
        losses.mean().backward()
        self._accumulate_gradients(trained)
        self.optimizer.step()
        self._step_count += 1

    def _probe_selection(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """:attr:`selection_alignment` of this batch, left on the device until the interval's sync.

        The training that follows is the same as without the probe: ``autograd.grad``
        leaves ``.grad`` alone, the random state (dropout) is forked and buffers
        (batch-norm running statistics) are put back.
        """
        self._set_trained((True,) * self.spec.layer_groups)  # every layer group, gated or not
        parameters = self._flat_parameters
        buffers = [b.detach().clone() for b in self.model.buffers()]
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            losses = self._loss_fn(self.model(x), y)
        hardest = torch.topk(losses.detach(), max(1, round(SELECTION_PROBE_FRACTION * len(losses))), sorted=False).indices
        whole = torch.autograd.grad(losses.mean(), parameters, retain_graph=True, allow_unused=True)
        top = torch.autograd.grad(losses[hardest].mean(), parameters, allow_unused=True)
        pairs = [(a.reshape(-1), b.reshape(-1)) for a, b in zip(whole, top) if a is not None and b is not None]
        if pairs:
            a = torch.cat([pair[0] for pair in pairs]).double()
            b = torch.cat([pair[1] for pair in pairs]).double()
            denominator = a.norm() * b.norm()
            self._alignment_on_device = torch.where(denominator > 0, (a @ b) / denominator, float("nan"))
        with torch.no_grad():
            for buffer, saved in zip(self.model.buffers(), buffers):
                buffer.copy_(saved)

    def _accumulate_gradients(self, trained: tuple[bool, ...]) -> None:
        present = [i for i, p in enumerate(self._flat_parameters) if p.grad is not None]
        if not present:
            return
        key = tuple(present)
        index = self._group_index_cache.get(key)
        if index is None:
            index = _to_device(torch.tensor([self._parameter_group[i] for i in present]), self.device)
            self._group_index_cache[key] = index
        grads = [self._flat_parameters[i].grad for i in present]
        norms = torch.stack(torch._foreach_norm(grads))
        self._gradient_square_sums.index_add_(0, index, norms.square())
        torch._foreach_add_([self._gradient_sums[i] for i in present], grads)

    @torch.no_grad()
    def _evaluate(self) -> tuple[torch.Tensor, torch.Tensor]:
        was_training = self.model.training
        self.model.eval()
        total = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device)
        for start in range(0, len(self._val_x), _EVAL_CHUNK):
            x = self._val_x[start : start + _EVAL_CHUNK]
            y = self._val_y[start : start + _EVAL_CHUNK]
            output = self.model(x)
            total += self._loss_fn(output, y).float().sum()
            if self.is_classification:
                correct += (output.argmax(dim=1) == y).sum()
        self.model.train(was_training)
        n = len(self._val_x)
        return total / n, correct / n

    @torch.no_grad()
    def _read_statistics(self, drawn: int, allocation: Allocation) -> IntervalStatistics:
        """Everything the observation needs, gathered on the device and read in one transfer."""
        spec = self.spec
        groups = spec.layer_groups
        val_loss, val_accuracy = self._evaluate()
        weight_norms = torch.zeros(groups, device=self.device)
        index_all = self._parameter_group_index
        weight_norms.index_add_(0, index_all, torch.stack(torch._foreach_norm(self._flat_parameters)).square())
        sum_norms = torch.zeros(groups, device=self.device)
        sum_norms.index_add_(0, index_all, torch.stack(torch._foreach_norm(self._gradient_sums)).square())

        # sample groups from the losses as they are now; this order also drives the next interval
        sorted_losses, self._order = torch.sort(self._last_loss, stable=True)
        seen = torch.isfinite(sorted_losses)
        log_loss = torch.where(seen, sorted_losses.clamp_min(1e-12).log(), torch.zeros_like(sorted_losses))
        seen_f = seen.float()
        last_seen = self._last_seen[self._order]
        staleness = torch.where(
            seen, (self._step_count - last_seen).float() / self.budget_steps, torch.ones_like(sorted_losses)
        )
        k = spec.sample_groups
        sums = torch.zeros(4, k, device=self.device)
        for row, values in enumerate((seen_f, log_loss * seen_f, log_loss.square() * seen_f, staleness)):
            sums[row].index_add_(0, self._group_of_position, values)
        alignment = (
            self._alignment_on_device.float()
            if self._alignment_on_device is not None
            else torch.full((), float("nan"), device=self.device)
        )
        packed = torch.cat(
            [
                torch.stack([val_loss, val_accuracy, self._train_loss_sum, (~seen).float().sum(), alignment]),
                weight_norms,
                self._gradient_square_sums,
                sum_norms,
                sums.reshape(-1),
            ]
        ).double().cpu().numpy()  # the one host synchronisation of the interval

        val_loss_v, val_accuracy_v, train_sum, unseen, alignment_v = packed[:5]
        self._selection_alignment = float(alignment_v)
        offset = 5
        weight_sq = packed[offset : offset + groups]
        grad_sq = packed[offset + groups : offset + 2 * groups]
        sum_sq = packed[offset + 2 * groups : offset + 3 * groups]
        counts, log_sum, log_sq_sum, stale_sum = packed[offset + 3 * groups :].reshape(4, k)
        group_sizes = np.diff(self._group_bounds)

        train_loss = train_sum / drawn if drawn else float("nan")
        if not (math.isfinite(train_loss) or drawn == 0) or not math.isfinite(val_loss_v):
            self._diverged = True
        self._val_loss = float(val_loss_v)
        self._val_accuracy = float(val_accuracy_v) if self.is_classification else None
        self._best_val_loss = min(self._best_val_loss, self._val_loss) if math.isfinite(self._val_loss) else self._best_val_loss

        with np.errstate(divide="ignore", invalid="ignore"):
            steps = self._trained_steps.astype(float)
            rms_grad = np.sqrt(grad_sq / steps)
            ratio = np.where(steps > 0, np.log(np.maximum(rms_grad, 1e-30) / np.maximum(np.sqrt(weight_sq), 1e-30)), np.nan)
            coherence = np.where(steps > 0, sum_sq / (steps * np.maximum(grad_sq, 1e-30)), np.nan)
            mean_log = np.where(counts > 0, log_sum / np.maximum(counts, 1), np.nan)
            # a group of never-seen samples ranks above every seen loss: give it the highest seen mean
            fill = np.nanmax(mean_log) if np.any(counts > 0) else np.log(self.initial_val_loss)
            mean_log = np.where(counts > 0, mean_log, fill)
            variance = np.where(counts > 1, log_sq_sum / np.maximum(counts, 1) - mean_log**2, 0.0)
        self._group_log_loss = mean_log
        statistics = IntervalStatistics(
            budget_used=self._compute_used / self.budget,
            train_loss=float(train_loss),
            val_loss=self._val_loss,
            samples_drawn=self._samples_drawn,
            training_set_size=self.training_set_size,
            budget_samples=self.budget_steps * self.batch_size,
            unseen_fraction=float(unseen) / self.training_set_size,
            group_log_loss=mean_log,
            group_log_loss_spread=np.sqrt(np.maximum(variance, 0.0)),
            group_staleness=stale_sum / np.maximum(group_sizes, 1),
            layer_log_grad_to_weight=ratio,
            layer_coherence=np.clip(coherence, 0.0, 1.0),
            selection_alignment=self._selection_alignment,
        )
        self._observation = self._observations.update(statistics, allocation)
        return statistics

    def __repr__(self) -> str:
        return (
            f"TrainingJob(name={self.name!r}, optimizer={self.optimizer_name!r}, lr={self.lr:g}, "
            f"batch_size={self.batch_size}, budget_steps={self.budget_steps}, device={str(self.device)!r})"
        )

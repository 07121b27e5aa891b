"""Hand-designed controllers: the baselines a learned policy has to beat.

Every controller has a ``name`` (its key in :data:`BASELINES`),
``reset(job)``, called once by :func:`~allocator.runner.run_job` before the run
(it keeps the job and its spec and clears all state, so one controller can run
many jobs in turn), and ``act(observation) -> Allocation``, called once per
interval. :func:`make` builds a fresh one by name::

    from allocator import run_job
    result = run_job(job, "freezeout")          # or: run_job(job, baselines.make("freezeout"))

==================== ============================== =====================================
name                 compute axis it moves          source
==================== ============================== =====================================
uniform              none (standard training)       --
selective-backprop   samples: backward on 25 %,     Jiang et al. 2019
                     drawn by loss percentile
freezeout            layers: progressive freezing   Brock et al. 2017
loss-sampling        samples: batch shares by       Loshchilov & Hutter 2015 (in spirit)
                     group loss
random               all, at random                 --
stop-before-budget   intervals: skips the one that  --
                     would end the budget
early-stopping       intervals: stops once the      Prechelt 1998; Keras
                     validation loss has not        ``EarlyStopping``
                     improved for ``patience``
                     intervals
loss-sampling-       loss-sampling's shares and     --
before-budget        stop-before-budget's stop
==================== ============================== =====================================

``evaluate`` runs the first five and ``early-stopping`` by default;
``stop-before-budget`` is the reference for a policy trained with
``env.stop_before_budget``, and ``loss-sampling-before-budget`` for one
trained with ``env.share_prior: loss`` as well (pass them with
``--baselines``).

Controllers read only the job's public state (``job.spec``, ``job.seed``,
``job.device``, ``job.compute_fraction``; selective backprop also installs
``job.sample_selector``, stop-before-budget sets ``job.stop_before_budget``)
and the observation, through
:class:`~allocator.stats.ObservationLayout`.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from allocator.allocation import LOSS_SHARE_FLOOR, Allocation, AllocationSpec, loss_proportional_shares
from allocator.stats import ObservationLayout

# Offsets that give each baseline's random stream its own seed, distinct from the
# job's own streams (minibatches use ``seed``, layer gates ``seed + 1_000_003``).
_SELECTIVE_BACKPROP_STREAM = 2_000_003
_RANDOM_STREAM = 3_000_017


class Uniform:
    """Standard training: every sample and layer trained, full steps, until the budget is spent.

    With the job's default learning-rate schedule (linear decay to zero at the
    budget) this is the budgeted-training reference every other controller is
    compared with.
    """

    name = "uniform"

    def __init__(self) -> None:
        self.job = None
        self.spec: AllocationSpec | None = None

    def reset(self, job) -> None:
        self.job = job
        self.spec = job.spec

    def act(self, observation) -> Allocation:
        return Allocation.uniform(self.spec)


class StopBeforeBudget(Uniform):
    """Standard training that skips the interval which would end the budget.

    Once the budget left is at most what the last interval spent, the job
    stops (:attr:`~allocator.TrainingJob.stop_before_budget`). That interval
    runs at a learning rate decayed to near zero, and J charges its compute in
    full; on the train split this wins 21 of 24 pairs against uniform, by
    0.001 to 0.006 of J on the compute-bound ones (BENCHMARKS.md section 5).
    It is the hand-designed counterpart of a policy trained with
    ``env.stop_before_budget``, which a policy must beat to show that its
    allocations, not the rule, saved the compute.
    """

    name = "stop-before-budget"

    def reset(self, job) -> None:
        super().reset(job)
        job.stop_before_budget = True


# ---------------------------------------------------------------------------- early stopping


class PatienceRule:
    """Patience on a sequence of validation losses: has it stopped improving?

    ``reset(initial_loss)``, then ``update(loss)`` once per validation; it
    returns True from the ``patience``-th validation in a row that does not
    improve on the best loss so far by more than the share ``min_delta`` of it
    (an improvement needs ``loss < best * (1 - min_delta)``). A non-finite
    loss never improves. :meth:`stop_index` replays a whole run's curve, which
    is how ``benchmarks/early_stopping_sweep.py`` scores every patience on one
    uniform run (the rule only stops, so its run is a prefix of uniform's).

    How this differs from Keras' ``EarlyStopping``: ``min_delta`` is relative,
    not absolute, because the jobs' losses live on different scales; the
    initial validation loss (before any training) is the first best, as with
    Keras' ``baseline``.
    """

    def __init__(self, patience: int, min_delta: float = 0.0) -> None:
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be an integer >= 1, got {patience!r}")
        if not (math.isfinite(min_delta) and 0.0 <= min_delta < 1.0):
            raise ValueError(f"min_delta must be in [0, 1), got {min_delta!r}")
        self.patience = patience
        self.min_delta = float(min_delta)
        self.best = math.inf
        self.since_best = 0

    def reset(self, initial_loss: float) -> None:
        self.best = initial_loss if math.isfinite(initial_loss) else math.inf
        self.since_best = 0

    def update(self, loss: float) -> bool:
        """Count one validation; True once ``patience`` of them in a row did not improve."""
        if math.isfinite(loss) and loss < self.best * (1.0 - self.min_delta):
            self.best, self.since_best = loss, 0
        else:
            self.since_best += 1
        return self.since_best >= self.patience

    def stop_index(self, losses: list[float]) -> int:
        """After which validation of ``losses`` (initial loss first) the rule stops; the last if never."""
        self.reset(losses[0])
        for k in range(1, len(losses)):
            if self.update(losses[k]):
                return k
        return len(losses) - 1


class EarlyStopping(Uniform):
    """Standard training that stops once the validation loss has not improved for ``patience`` intervals.

    Early stopping as practised since Prechelt 1998 ("Early Stopping - But
    When?") and as Keras' ``EarlyStopping`` does it, with one validation per
    interval (the job validates after every interval): each interval trains as
    ``uniform`` does, and the first interval after :class:`PatienceRule` fires
    gets ``steps = 0``, which ends the job. It is the hand-designed answer to
    runs that go on after the validation loss stops improving, so a learned
    stop has to beat it.

    Defaults: ``patience = 1`` interval, ``min_delta = 0``: the lowest mean J
    on the train split (the train check's three sets, 20-step intervals as
    the policies') among patiences 1 to 10 and ``min_delta`` 0, 0.001 and
    0.01 (BENCHMARKS.md section 5, forty-third round). J charges every
    interval's compute, so on the train split the earliest stop on a turn
    of the validation loss paid more than waiting to be sure.

    Traps:

    * Patience counts *intervals*, so its reach in steps is ``patience *
      spec.max_steps``: under ``evaluate`` a baseline runs with the policy's
      spec.
    * The weights are not rolled back to the best interval's (Keras'
      ``restore_best_weights=False``, its default): J is charged at the final
      validation loss, which is at least the best one.
    * With the linear learning-rate decay to the budget, a compute-bound job
      still improves at the end, so there the rule only stops on noise.
    """

    name = "early-stopping"

    def __init__(self, patience: int = 1, min_delta: float = 0.0) -> None:
        self.rule = PatienceRule(patience, min_delta)
        super().__init__()
        self._trained = False

    def reset(self, job) -> None:
        super().reset(job)
        self.rule.reset(job.val_loss)
        self._trained = False

    def act(self, observation) -> Allocation:
        allocation = Allocation.uniform(self.spec)
        # act() comes before each interval, and every interval but a stop validates: the
        # first call has only the initial loss, each later one the last interval's
        if self._trained and self.rule.update(self.job.val_loss):
            return dataclasses.replace(allocation, steps=0)
        self._trained = True
        return allocation


# ---------------------------------------------------------------------------- selective backprop


class PercentileSelector:
    """Selective Backprop's sample selection, on the device: ``scores = selector(losses)``.

    Keeps a ring buffer of the last ``history`` per-sample losses on the
    device. For each drawn sample it computes the percentile ``p`` of its loss
    among that history (the drawn batch is added to the history first, as in
    the paper, so ``p >= 1 / len(history) > 0``), and returns
    ``beta * log(p) + Gumbel noise``. The ``k`` highest such scores are a
    sample of ``k`` without replacement with probability proportional to
    ``p ** beta`` (the Gumbel top-k trick), so the job's ``topk`` over the
    scores draws the backward batch without ever reading a loss on the host.

    Args:
        beta: selectivity; the keep weight is ``percentile ** beta``.
        history: number of recent losses the percentile is taken against.
        device: where the buffer and the noise live (the job's device).
        seed: seeds the Gumbel noise (a ``torch.Generator`` on ``device``).

    The buffer's write position is a host integer advanced by the batch size
    (a shape, known without synchronising), so nothing in ``__call__`` waits
    for the device.
    """

    def __init__(self, beta: float = 3.0, history: int = 1024, device="cpu", seed: int = 0) -> None:
        if not (math.isfinite(beta) and beta >= 0.0):
            raise ValueError(f"beta must be finite and >= 0, got {beta!r}")
        if not isinstance(history, int) or history < 1:
            raise ValueError(f"history must be an integer >= 1, got {history!r}")
        self.beta = float(beta)
        self.history = history
        self.device = torch.device(device)
        self._losses = torch.zeros(history, device=self.device)
        self._filled = 0  # valid entries in the buffer (host integer, never read from the device)
        self._position = 0  # next write position
        self._generator = torch.Generator(device=self.device).manual_seed(int(seed))

    def _append(self, losses: torch.Tensor) -> None:
        n = losses.shape[0]
        if n >= self.history:
            self._losses.copy_(losses[-self.history :])
            self._position, self._filled = 0, self.history
            return
        first = min(n, self.history - self._position)
        self._losses[self._position : self._position + first] = losses[:first]
        self._losses[: n - first] = losses[first:]
        self._position = (self._position + n) % self.history
        self._filled = min(self.history, self._filled + n)

    def __len__(self) -> int:
        """Number of losses in the history (at most ``history``)."""
        return self._filled

    def percentiles(self, losses: torch.Tensor) -> torch.Tensor:
        """Each loss's percentile in ``(0, 1]`` among the history (ties count half).

        Adds ``losses`` to the history first.
        """
        losses = losses.detach().float().reshape(-1)
        self._append(losses)
        history = self._losses[: self._filled]
        below = (history < losses[:, None]).sum(dim=1)
        at_or_below = (history <= losses[:, None]).sum(dim=1)
        # scipy's percentileofscore(kind="rank"): ties share the average rank
        return (below + at_or_below).float().clamp_min(1.0) / (2.0 * self._filled)

    def keep_probability(self, losses: torch.Tensor) -> torch.Tensor:
        """The paper's keep probability ``percentile ** beta`` (adds ``losses`` to the history)."""
        return self.percentiles(losses) ** self.beta

    def __call__(self, losses: torch.Tensor) -> torch.Tensor:
        log_weight = self.beta * self.percentiles(losses).log()
        # Gumbel(0, 1) noise as -log(Exponential(1)); top-k of log w + G samples
        # k items without replacement with probability proportional to w
        exponential = torch.empty_like(log_weight).exponential_(generator=self._generator)
        return log_weight - exponential.log()


class SelectiveBackprop:
    """Selective Backprop: backward passes for the samples whose loss percentile is high.

    Jiang et al. 2019, "Accelerating Deep Learning by Focusing on the Biggest
    Losers" (arXiv:1910.00762). Every drawn sample gets a forward pass; it gets
    a backward pass with probability ``percentile ** beta``, its loss's
    percentile among the last ``history`` losses seen.

    Defaults (the paper's): ``beta = 3``, ``history = 1024``. Sample shares
    are uniform, every layer group is trained and every interval takes full
    steps; the allocation's ``keep_fraction`` is ``1 / (beta + 1)`` (25 %).

    ``reset(job)`` installs a :class:`PercentileSelector` as
    ``job.sample_selector``; the job keeps the ``kept_count(keep_fraction)``
    highest scores of each drawn batch for the backward pass.

    How this differs from the paper:

    * The paper flips an independent coin per sample and fills a backward
      batch of fixed size across as many forward batches as it takes, so the
      share of samples kept is ``1 / (beta + 1)`` only in expectation (for
      continuous losses, ``E[p ** beta] = 1 / (beta + 1)``). Here every drawn
      batch keeps exactly ``round(batch_size / (beta + 1))`` samples, drawn
      without replacement with probability proportional to ``p ** beta``
      (Gumbel top-k), because the job needs a fixed kept count per step to
      know a step's FLOPs without reading the batch from the device. Inclusion
      probabilities of sampling without replacement saturate for the highest
      weights, so keep rates rise less steeply than ``p ** beta``: with 16 of
      64 kept, a fit of keep rate against percentile gives an exponent of
      about 2.6 instead of 3, and the top decile of losses is kept 70 % of
      the time instead of 86 %.
    * The paper appends losses to the history one at a time, so each sample's
      percentile sees the earlier samples of its batch; here the whole drawn
      batch is appended before the percentiles are taken.
    * The paper's ``sampling_min`` floor on the keep probability is not used
      (it defaults to 0 there too); every percentile is above 0 because a
      sample's own loss is in the history.
    """

    name = "selective-backprop"

    def __init__(self, beta: float = 3.0, history: int = 1024) -> None:
        if not (math.isfinite(beta) and beta >= 0.0):
            raise ValueError(f"beta must be finite and >= 0, got {beta!r}")
        self.beta = float(beta)
        self.history = int(history)
        self.job = None
        self.spec: AllocationSpec | None = None
        self.selector: PercentileSelector | None = None

    @property
    def keep_fraction(self) -> float:
        """``1 / (beta + 1)``: the paper's expected share of samples that get a backward pass."""
        return 1.0 / (self.beta + 1.0)

    def reset(self, job) -> None:
        self.job = job
        self.spec = job.spec
        self.selector = PercentileSelector(
            self.beta, self.history, device=job.device, seed=job.seed + _SELECTIVE_BACKPROP_STREAM
        )
        job.sample_selector = self.selector

    def act(self, observation) -> Allocation:
        uniform = Allocation.uniform(self.spec)
        return Allocation(
            sample_shares=uniform.sample_shares,
            keep_fraction=self.keep_fraction,
            layer_gates=uniform.layer_gates,
            steps=uniform.steps,
        )


# ---------------------------------------------------------------------------- freezeout


def freezeout_schedule(layer_groups: int, t0: float = 0.8, cubic: bool = True) -> tuple[float, ...]:
    """FreezeOut's freeze points: the budget fraction from which each layer group is frozen.

    ``t_i = t0 + (1 - t0) * i / (G - 1)`` (cubed when ``cubic``) for group
    ``i`` of ``G``; the last group (the head) gets ``1.0``, i.e. never frozen.
    """
    if not 0.0 < t0 <= 1.0:
        raise ValueError(f"t0 must be in (0, 1], got {t0!r}")
    if layer_groups == 1:
        return (1.0,)
    linear = [t0 + (1.0 - t0) * i / (layer_groups - 1) for i in range(layer_groups)]
    points = [t**3 if cubic else t for t in linear]
    points[-1] = 1.0  # exact, whatever the rounding: the head is never frozen
    return tuple(points)


class FreezeOut:
    """FreezeOut: freeze the network's early layers progressively as the budget is spent.

    Brock et al. 2017, "FreezeOut: Accelerate Training by Progressively
    Freezing Layers" (arXiv:1706.04983). Layer group ``i`` of ``G`` is trained
    until the fraction ``t_i = (t0 + (1 - t0) * i / (G - 1)) ** 3`` of the
    budget is spent and frozen from then on (its gate goes from 1 to 0); the
    head group (the last) is never frozen. Defaults (the paper's best
    setting): ``t0 = 0.8`` with the cubic schedule, which freezes the first
    group at 51 % of the budget; with ``G = 4`` the others follow at 65 % and
    81 %. Sample shares are uniform, keep fraction 1, full steps.

    A frozen prefix of the network gets no backward pass at all, which is
    where the savings come from; frozen weights are left exactly as they were.

    How this differs from the paper:

    * The paper anneals each layer's learning rate to zero along a cosine
      from its own ``t_i``; the job has one learning-rate schedule for the
      whole model (linear decay to zero at the budget by default), so a
      group's learning rate simply drops to zero when it freezes.
    * The paper's layers are single layers (or blocks); ours are the job's
      ``G`` layer groups of roughly equal parameter count.
    * The paper schedules by iteration; here ``t_i`` is a share of the FLOP
      budget. A gate can only change between intervals (``spec.max_steps``
      steps each), so a group is frozen from the first interval that starts
      at or after ``t_i``.
    """

    name = "freezeout"

    def __init__(self, t0: float = 0.8, cubic: bool = True) -> None:
        freezeout_schedule(2, t0, cubic)  # validates t0
        self.t0 = float(t0)
        self.cubic = bool(cubic)
        self.job = None
        self.spec: AllocationSpec | None = None
        self.freeze_points: tuple[float, ...] = ()

    def reset(self, job) -> None:
        self.job = job
        self.spec = job.spec
        self.freeze_points = freezeout_schedule(job.spec.layer_groups, self.t0, self.cubic)

    def gates(self, compute_fraction: float) -> tuple[float, ...]:
        """Layer gates at this share of the budget: 1 before each group's freeze point, 0 from it."""
        return tuple(0.0 if compute_fraction >= t else 1.0 for t in self.freeze_points)

    def act(self, observation) -> Allocation:
        uniform = Allocation.uniform(self.spec)
        return Allocation(
            sample_shares=uniform.sample_shares,
            keep_fraction=1.0,
            layer_gates=self.gates(self.job.compute_fraction),
            steps=uniform.steps,
        )


# ---------------------------------------------------------------------------- loss sampling


class LossSampling:
    """Loss-proportional batch selection: draw more of each minibatch from high-loss groups.

    Online batch selection in the spirit of Loshchilov & Hutter 2015, "Online
    Batch Selection for Faster Training of Neural Networks"
    (arXiv:1511.06343). Each sample group's share of the minibatch is
    proportional to the group's loss, mixed with uniform shares so that no
    group drops to zero::

        share_k = floor / K + (1 - floor) * loss_k / sum_j loss_j

    where ``loss_k = exp(log_loss_k)`` is read from the observation's
    per-sample-group ``log_loss`` (the mean log of the group's last seen
    losses relative to the initial validation loss, i.e. a geometric mean).
    Default ``floor = 0.25``: every group keeps at least a quarter of its
    uniform share. Keep fraction 1, every layer trained, full steps.

    How this differs from the paper: Loshchilov & Hutter rank individual
    samples by their latest loss and select sample of rank ``r`` with
    probability decaying exponentially in ``r`` (a "selection pressure"
    ``s_e`` between the most and least likely sample), and they recompute all
    losses periodically. Here selection works on the job's K loss-quantile
    groups, is proportional to loss rather than exponential in rank, and uses
    each sample's last seen loss (no recomputation pass).
    """

    name = "loss-sampling"

    def __init__(self, floor: float = LOSS_SHARE_FLOOR) -> None:
        if not (math.isfinite(floor) and 0.0 <= floor <= 1.0):
            raise ValueError(f"floor must be in [0, 1], got {floor!r}")
        self.floor = float(floor)
        self.job = None
        self.spec: AllocationSpec | None = None
        self.layout: ObservationLayout | None = None

    def reset(self, job) -> None:
        self.job = job
        self.spec = job.spec
        self.layout = ObservationLayout(job.spec)

    def shares(self, observation) -> tuple[float, ...]:
        """Sample-group shares for this observation: proportional to group loss, floored."""
        groups = self.layout.sample_group_features(observation)
        log_loss = groups[:, self.layout.sample_index("log_loss")]
        return tuple(float(s) for s in loss_proportional_shares(log_loss, self.floor))

    def act(self, observation) -> Allocation:
        uniform = Allocation.uniform(self.spec)
        return Allocation(
            sample_shares=self.shares(observation),
            keep_fraction=1.0,
            layer_gates=uniform.layer_gates,
            steps=uniform.steps,
        )


# ---------------------------------------------------------------------------- random


class RandomAllocation:
    """Random allocations: a uniformly random action each interval, through the job's spec.

    Each interval draws an action uniformly from ``[-1, 1]^action_size`` and
    maps it with ``spec.to_allocation`` (so shares, keep fraction, gates and
    steps are as random as the action space makes them), always without the
    spec's ``dead_zone``. Seeded from the
    job's seed at ``reset``: the same job and seed give the same allocations.

    .. warning:: Before ``min_budget_fraction`` (default 10 %) of the budget
       is spent the steps entry is drawn again until it does not stop the job:
       a controller that may stop at any interval would, over a run of dozens
       of intervals, most often end long before the budget and measure
       "stopping early" rather than "allocating at random". Later intervals
       may stop.
    """

    name = "random"

    def __init__(self, min_budget_fraction: float = 0.1) -> None:
        if not 0.0 <= min_budget_fraction <= 1.0:
            raise ValueError(f"min_budget_fraction must be in [0, 1], got {min_budget_fraction!r}")
        self.min_budget_fraction = float(min_budget_fraction)
        self.job = None
        self.spec: AllocationSpec | None = None
        self.rng = np.random.default_rng()

    def reset(self, job) -> None:
        self.job = job
        # A policy's dead zone is part of how that policy acts, not of the job: without it
        # here, "random" would change with the policy it is compared with.
        self.spec = dataclasses.replace(job.spec, dead_zone=0.0)
        self.rng = np.random.default_rng([int(job.seed), _RANDOM_STREAM])

    def act(self, observation) -> Allocation:
        action = self.rng.uniform(-1.0, 1.0, self.spec.action_size)
        allocation = self.spec.to_allocation(action)
        if self.job.compute_fraction < self.min_budget_fraction:
            while allocation.stops:
                action[-1] = self.rng.uniform(-1.0, 1.0)
                allocation = self.spec.to_allocation(action)
        return allocation


class LossSamplingBeforeBudget(LossSampling):
    """Loss-sampling's batch shares with the stop before the budget.

    What a policy trained with ``env.share_prior: loss`` and
    ``env.stop_before_budget`` does at the zero action: the hand-designed
    controller such a policy must beat to show that its own allocations, not
    its two rules, saved the compute.
    """

    name = "loss-sampling-before-budget"

    def reset(self, job) -> None:
        super().reset(job)
        job.stop_before_budget = True


BASELINES = {
    controller.name: controller
    for controller in (
        Uniform,
        SelectiveBackprop,
        FreezeOut,
        LossSampling,
        RandomAllocation,
        StopBeforeBudget,
        LossSamplingBeforeBudget,
        EarlyStopping,
    )
}


def make(name: str):
    """A fresh baseline controller by name (see ``BASELINES``).

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    if not isinstance(name, str) or name not in BASELINES:
        raise ValueError(f"unknown controller {name!r}; choose one of {sorted(BASELINES)}")
    return BASELINES[name]()

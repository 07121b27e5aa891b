"""Allocations: where one interval of a training job spends its compute.

An :class:`Allocation` holds attention weights over the job's three compute axes:

* **sample groups** -- ``sample_shares`` is a distribution over K groups of the
  training set (group 0 holds the lowest last-seen losses, group K-1 the highest
  and the never-seen samples); each minibatch is drawn in these proportions.
  ``keep_fraction`` is the share of the drawn batch, highest loss first, that
  receives a backward pass (the forward pass covers the whole drawn batch).
* **layer groups** -- ``layer_gates[g]`` is the probability that layer group g
  (contiguous, in forward order, the output head in the last group) is trained
  at a step. A group that is not trained gets no weight gradient; a frozen
  prefix of the network gets no backward pass at all.
* **steps** -- how many optimizer steps the interval takes; ``0`` stops the job
  and returns the rest of the budget.

:class:`AllocationSpec` fixes the sizes (K, G, max steps) and maps a policy's
action vector in ``[-1, 1]`` to an allocation and back. The mapping is centred:
the zero action is uniform allocation (standard training), negative entries
depart from it, so a freshly initialised policy starts from standard training.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np

from allocator.token_dropping import TokenDropping

# Softmax temperature of the sample-share entries: an action of +-1 gives a
# ratio of e**6 (about 400) between two groups, enough to all but drop one.
SHARE_SCALE = 3.0
_SUM_TOLERANCE = 1e-5
# The steps entry stops the job below this value. A quarter of the action range
# is "stop", so a policy exploring around the zero action (standard training)
# tries stopping now and then and can learn when it pays; a stop region of a
# single rounding step (-1 only) is almost never explored.
STOP_BELOW = -0.5
# Selection pays only below this keep fraction. Keeping a fraction k costs a
# no-grad scoring pass over the batch plus forward and backward over k of it,
# about 1 + 3k forward passes against 3 for the plain step (backward ~ 2x
# forward): more than standard training for k > 2/3. So the keep entry
# chooses between no selection (1, one pass) and selection that saves compute
# (2/3 down to min_keep_fraction); the costly band in between is not reachable
# from an action. Without this, a policy drifting a little below the zero
# action paid 15-30 % more per step for a smaller batch (BENCHMARKS.md, 5).
KEEP_BREAK_EVEN = 2.0 / 3.0
# What a spec's ``share_prior`` may be: ``uniform`` (the action's shares as they are) or
# ``loss`` (the action's shares times loss-proportional ones, see loss_proportional_shares).
SHARE_PRIORS = ("uniform", "loss")
#: Values of ``AllocationSpec.layer_lever``: which jobs the action's layer gates act on.
LAYER_LEVERS = ("all", "convolutional", "cnn-first-group")
#: Values of ``AllocationSpec.gate_mapping``: how a gate entry of the action becomes a layer gate.
GATE_MAPPINGS = ("linear", "binary")
#: Values of ``AllocationSpec.gate_decision``: how often a job's layer gates are decided.
GATE_DECISIONS = ("interval", "job")
# Every group keeps at least this share of its uniform share under loss-proportional shares.
LOSS_SHARE_FLOOR = 0.25


def loss_proportional_shares(log_losses: Sequence[float], floor: float = LOSS_SHARE_FLOOR) -> np.ndarray:
    """Sample-group shares proportional to each group's loss, mixed with equal shares.

    ``share_k = floor / K + (1 - floor) * loss_k / sum_j loss_j`` with
    ``loss_k = exp(log_losses[k])``; adding a constant to every log-loss changes
    nothing, so relative and absolute log-losses give the same shares. What the
    ``loss-sampling`` baseline draws and what ``share_prior: loss`` multiplies a
    policy's shares by.
    """
    log_losses = np.asarray(log_losses, dtype=np.float64)
    weights = np.exp(log_losses - log_losses.max())  # relative losses, largest 1
    shares = floor / len(weights) + (1.0 - floor) * weights / weights.sum()
    return shares / shares.sum()



def check_choice(name: str, value, choices: Sequence[str]) -> None:
    """Raise ``ValueError`` naming ``name`` and its ``choices`` unless ``value`` is one of them."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def check_selection_gate(threshold, what: str = "selection_gate") -> float | None:
    """``threshold`` as a float in ``[-1, 1]`` (a cosine), or ``None``; anything else raises ``ValueError``."""
    if threshold is None:
        return None
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating, np.integer)):
        raise ValueError(f"{what} must be None or a number in [-1, 1], got {threshold!r}")
    if not (math.isfinite(threshold) and -1.0 <= threshold <= 1.0):
        raise ValueError(f"{what} must be in [-1, 1] (a cosine), got {threshold!r}")
    return float(threshold)


@dataclass(frozen=True)
class AllocationSpec:
    """The shape of a job's allocations: K sample groups, G layer groups, max steps.

    Args:
        sample_groups: K, the number of loss-quantile groups of the training set.
        layer_groups: G, the number of contiguous layer groups of the model.
        max_steps: optimizer steps of one interval at uniform allocation; the
            action maps to ``0 .. max_steps`` (0 stops the job).
        min_keep_fraction: the smallest keep fraction an action can ask for.
        dead_zone: actions within this distance of the zero action give exactly
            standard training, in ``[0, 0.5)``: share entries whose largest
            deviation from their mean is at most ``dead_zone`` give equal shares,
            and keep, gate and steps entries at or above ``-dead_zone`` give
            keep 1, gate 1 and ``max_steps``. Beyond it the mappings continue
            from there, so every allocation stays reachable. Why: a policy's
            mean action is never exactly zero, and on a job that wants standard
            training a 1 % tilt of the shares or a gate of 0.99 changes the
            trajectory (BENCHMARKS.md, section 5). 0 (the default, and what a
            policy.json without the field means) is the original mapping.
        min_layer_gate: the smallest layer gate an action can ask for, in
            ``[0, 1]``: gate entries map onto ``[min_layer_gate, 1]``. 1 takes
            the layer lever away (every group trained at every step, as in
            standard training), as ``min_keep_fraction`` 1 takes selection
            away. 0 (the default, and what a policy.json without the field
            means) is the original mapping.
        stop_before_budget: the policy's jobs skip the interval that would end
            the budget: once the budget left is at most what the last interval
            spent, the next interval is a stop
            (:attr:`~allocator.TrainingJob.stop_before_budget`). Under J that
            interval buys the least (the learning rate has decayed to near zero)
            at a full interval's compute; standard training stopped there wins
            21 of 24 train pairs (BENCHMARKS.md section 5, eleventh round).
            Trap: it is a rule of the policy, not of the job: a policy sets it
            on the jobs it runs in ``reset(job)``, and a job that only takes
            this spec (``use_spec``, as ``evaluate`` does for the baselines)
            runs without it. False (the default, and what a policy.json
            without the field means) leaves every stop to the action.
        share_prior: ``uniform`` or ``loss``. With ``loss`` the policy's jobs
            draw each group's share of a batch in proportion to the action's
            share times :func:`loss_proportional_shares` of the groups' last
            seen losses (:attr:`~allocator.TrainingJob.share_prior`), so the
            zero action draws as the ``loss-sampling`` baseline does and the
            action tilts from there. Why: on compute-bound jobs that baseline
            makes more progress per FLOP than standard training on some jobs,
            which policies holding their shares at uniform did not find
            (BENCHMARKS.md section 4). Trap: like ``stop_before_budget``, a
            rule of the policy that ``reset(job)`` sets, not of the job:
            ``use_spec`` alone (the baselines in ``evaluate``, the env's
            uniform reference) runs without it, and the first interval, before
            any loss is seen, draws the action's shares. ``uniform`` (the
            default, and what a policy.json without the field means) is the
            action's shares as they are.
        token_dropping: a :class:`~allocator.token_dropping.TokenDropping` (or
            ``{"keep": k, "until": u}``) or ``None``. The policy's jobs train on
            ``keep`` of each input's tokens until ``until`` of the budget
            (:attr:`~allocator.TrainingJob.token_dropping`); jobs whose model
            has no tokens run as before. Why: on transformers the cheaper
            early steps buy more steps, and half the tokens until half the
            budget reaches standard training's best loss within 0.7 of the
            budget on half the train split's transformer runs (BENCHMARKS.md
            section 5, twenty-third round). Trap: like ``share_prior``, a rule
            of the policy that ``reset(job)`` sets, not of the job; it needs no
            retraining and can be added to a trained policy
            (``--token-dropping`` of ``evaluate`` and ``apply``). ``None`` (the
            default, and what a policy.json without the field means) is off.
        freeze_cnn_first_group: the policy's jobs whose model has a
            convolution keep their first layer group frozen at every interval
            (gate 0: no weight gradients and no backward pass into it), whatever
            the action's first gate (:attr:`~allocator.TrainingJob.freeze_cnn_first_group`);
            other jobs run as before. Why: a frozen stem makes each step cheaper,
            so the budget buys more of them, and on the train split's 1-D CNNs
            that reaches standard training's best loss within 0.7 of the budget
            where no action of the published policies does (BENCHMARKS.md
            section 5, twenty-eighth round). Trap: like ``token_dropping``, a
            rule of the policy that ``reset(job)`` sets, not of the job, added to
            a trained policy (``--freeze-cnn-first-group`` of ``evaluate`` and
            ``apply``, ``env.freeze_cnn_first_group`` of a training
            configuration); the training envs do not apply it, so a policy
            never learns around it; on the held-out 2-D CNN it costs J. False
            (the default, and what a policy.json without the field means) is off.

        layer_lever: ``all`` or ``convolutional``. With ``convolutional`` the
            action's layer gates act only on jobs whose model has a convolution;
            on every other job each layer group trains at every step, whatever
            the gates (:attr:`~allocator.TrainingJob.layer_lever`). Why: the
            layer lever cost policies J on the MLP and regression families
            (e25 and e27 close it everywhere, ``min_layer_gate: 1``), while on
            the 1-D CNNs a frozen first group is the one allocation that reaches
            standard training's best loss within 0.7 of the budget; opened there
            only, PPO can learn the freeze instead of a hand-set rule
            (BENCHMARKS.md section 5, twenty-ninth round). Trap: unlike the
            rules above it changes what a policy learns, so it belongs to the
            training configuration (``env.layer_lever``), not to ``evaluate`` or
            ``apply``; the env's uniform reference and the baselines are
            unaffected (their gates are 1). ``all`` (the default, and what a
            policy.json without the field means) is the original lever.
            ``cnn-first-group`` narrows ``convolutional`` to the first layer
            group's gate: on a CNN every later group trains at every step, so
            the first gate alone decides the freeze that pays there (e29c's
            four free gates shut all groups alike, never the first alone).
        gate_mapping: ``linear`` or ``binary``. ``linear`` maps a gate entry
            onto the gate ``clip((1 + a) / (1 - dead_zone), 0, 1)`` (each step
            trains the group with that probability). ``binary`` rounds that
            gate: the group is frozen for the whole interval when it is below
            1/2 (``a < -1 + (1 - dead_zone) / 2``, -0.55 at a dead zone of 0.1)
            and trained at every step otherwise; with ``min_layer_gate`` the
            two gates are ``min_layer_gate`` and 1. Why: under a Gaussian
            policy the expected clipped linear gate is not the gate of the
            mean action, so PPO rewarded gates of 0.62 to 0.69 while the
            deployed mean read 0.81 to 0.86, and its mean never reached the
            full freeze that pays on the 1-D CNNs (BENCHMARKS.md section 5,
            thirtieth and thirty-first rounds). With ``binary`` the deployed
            mean action freezes exactly when training froze in more than half
            of its draws, and the chance of a freeze is smooth in the mean.
            Measured: among all three train families drawn evenly no seed
            learned to freeze with it; trained on CNN jobs only, one seed of
            two did; with three quarters of the sampled jobs CNNs, two seeds
            of seven did (thirty-second to thirty-fifth rounds).
            Trap: part of what a policy learns (``env.gate_mapping``); a
            policy trained with one mapping acts differently under the other.
            ``linear`` (the default, and what a policy.json without the field
            means) is the original mapping.
        gate_decision: ``interval`` or ``job``. With ``job`` the layer gates
            the job runs on its first interval hold for every later one
            (:attr:`~allocator.TrainingJob.gate_decision`): a freeze is one
            decision per job, taken on the first observation, and the action's
            gate entries on later intervals are ignored. Why: the freeze pays
            only when it holds for the whole run, and decided per interval PPO
            credits each interval's draw with a sliver of that effect; two
            seeds of seven learned it so (thirty-fourth and thirty-fifth
            rounds); decided once, the whole run's J follows one draw.
            Measured: one seed of three learned it at 15,104 timesteps, both
            seeds trained on to 25,088 did (thirty-sixth round).
            Trap: part of what a policy learns (``env.gate_decision``); the
            gates held are those after ``layer_lever`` and ``gate_mapping``,
            reported and observed on every interval as run. ``interval`` (the
            default, and what a policy.json without the field means) decides
            them anew on every interval.

    .. warning:: A policy only runs on jobs with the spec it was trained with;
       ``run_job`` with an ``AllocatorPolicy`` sets the job's spec to the policy's.
    """

    sample_groups: int = 4
    layer_groups: int = 4
    max_steps: int = 10
    min_keep_fraction: float = 0.1
    dead_zone: float = 0.0
    min_layer_gate: float = 0.0
    stop_before_budget: bool = False
    share_prior: str = "uniform"
    token_dropping: TokenDropping | None = None
    freeze_cnn_first_group: bool = False
    layer_lever: str = "all"
    gate_mapping: str = "linear"
    gate_decision: str = "interval"

    def __post_init__(self) -> None:
        for name in ("sample_groups", "layer_groups", "max_steps"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not 0.0 < self.min_keep_fraction <= 1.0:
            raise ValueError(f"min_keep_fraction must be in (0, 1], got {self.min_keep_fraction!r}")
        if not (math.isfinite(self.dead_zone) and 0.0 <= self.dead_zone < -STOP_BELOW):
            raise ValueError(f"dead_zone must be in [0, {-STOP_BELOW}), got {self.dead_zone!r}")
        if not (math.isfinite(self.min_layer_gate) and 0.0 <= self.min_layer_gate <= 1.0):
            raise ValueError(f"min_layer_gate must be in [0, 1], got {self.min_layer_gate!r}")
        if not isinstance(self.stop_before_budget, (bool, np.bool_)):
            raise ValueError(f"stop_before_budget must be true or false, got {self.stop_before_budget!r}")
        check_choice("share_prior", self.share_prior, SHARE_PRIORS)
        check_choice("layer_lever", self.layer_lever, LAYER_LEVERS)
        check_choice("gate_mapping", self.gate_mapping, GATE_MAPPINGS)
        check_choice("gate_decision", self.gate_decision, GATE_DECISIONS)
        if not isinstance(self.freeze_cnn_first_group, (bool, np.bool_)):
            raise ValueError(f"freeze_cnn_first_group must be true or false, got {self.freeze_cnn_first_group!r}")
        # frozen: from_dict and the config pass {keep, until}, stored as the hashable TokenDropping
        object.__setattr__(self, "token_dropping", TokenDropping.from_value(self.token_dropping))

    @property
    def action_size(self) -> int:
        """Length of the action vector: K shares + keep + G gates + steps."""
        return self.sample_groups + 1 + self.layer_groups + 1

    @property
    def gate_entries(self) -> slice:
        """Where the G layer-gate entries sit in the action (after the K shares and keep)."""
        return slice(self.sample_groups + 1, self.sample_groups + 1 + self.layer_groups)

    def to_dict(self) -> dict:
        spec = {
            "sample_groups": int(self.sample_groups),
            "layer_groups": int(self.layer_groups),
            "max_steps": int(self.max_steps),
            "min_keep_fraction": float(self.min_keep_fraction),
            "dead_zone": float(self.dead_zone),
        }
        if self.min_layer_gate:  # only when set: policies of the original mapping write what they always did
            spec["min_layer_gate"] = float(self.min_layer_gate)
        if self.stop_before_budget:  # likewise
            spec["stop_before_budget"] = True
        if self.share_prior != "uniform":  # likewise
            spec["share_prior"] = self.share_prior
        if self.token_dropping is not None:  # likewise
            spec["token_dropping"] = self.token_dropping.to_dict()
        if self.freeze_cnn_first_group:  # likewise
            spec["freeze_cnn_first_group"] = True
        if self.layer_lever != "all":  # likewise
            spec["layer_lever"] = self.layer_lever
        if self.gate_mapping != "linear":  # likewise
            spec["gate_mapping"] = self.gate_mapping
        if self.gate_decision != "interval":  # likewise
            spec["gate_decision"] = self.gate_decision
        return spec

    @classmethod
    def from_dict(cls, data: dict) -> AllocationSpec:
        known = {field.name for field in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown AllocationSpec field(s): {sorted(unknown)}")
        return cls(**data)

    def to_allocation(self, action: Sequence[float]) -> Allocation:
        """Map an action in ``[-1, 1]^action_size`` to an :class:`Allocation`.

        Out-of-range entries are clipped; non-finite ones raise ``ValueError``.

        With ``dead_zone`` 0 (d below):

        * shares: ``softmax(3 * a[:K])`` (zero -> equal shares);
        * keep: ``1`` for ``a >= 0``; below 0 it jumps to the break-even fraction
          ``2/3`` (:data:`KEEP_BREAK_EVEN`) and falls linearly to ``min_keep_fraction``
          at -1 (a fraction between 2/3 and 1 would cost more than keeping all);
        * gates: ``clip(1 + a, 0, 1)`` (zero or more -> always trained), rounded
          to 0 or 1 with ``gate_mapping`` ``binary``, then mapped onto
          ``[min_layer_gate, 1]``;
        * steps: ``max_steps`` for ``a >= 0``, falling linearly to 1 at
          ``a = -0.5``; below -0.5 the job stops (steps = 0).

        With ``dead_zone`` d > 0, the deviation ``a[:K] - mean`` is shrunk by d in
        its largest entry (equal shares when that entry is at most d), and the
        keep, gate and steps mappings above start at ``-d`` instead of 0, with
        their linear parts rescaled to end where they did (-1, -1 and -0.5).
        """
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape[0] != self.action_size:
            raise ValueError(
                f"action must have {self.action_size} entries "
                f"(K={self.sample_groups} shares, keep, G={self.layer_groups} gates, steps), "
                f"got {a.shape[0]}"
            )
        if not np.all(np.isfinite(a)):
            raise ValueError(f"action must be finite, got {a.tolist()}")
        a = np.clip(a, -1.0, 1.0)
        k, g = self.sample_groups, self.layer_groups
        logits = SHARE_SCALE * self._share_deviation(a[:k])
        shares = np.exp(logits - logits.max())
        shares /= shares.sum()
        keep = self._keep_of(a[k])
        gates = np.clip((1.0 + a[self.gate_entries]) / (1.0 - self.dead_zone), 0.0, 1.0)
        gates = self._on_gate_mapping(gates)
        if self.min_layer_gate:
            gates = self.min_layer_gate + (1.0 - self.min_layer_gate) * gates
        steps = self._steps_of(a[k + 1 + g])
        return Allocation(
            sample_shares=tuple(float(x) for x in shares),
            keep_fraction=float(keep),
            layer_gates=tuple(float(x) for x in gates),
            steps=steps,
        )

    def to_action(self, allocation: Allocation) -> np.ndarray:
        """The action (float32, in ``[-1, 1]``) that maps back to ``allocation``.

        Exact up to clipping: shares whose log-ratio exceeds the softmax range,
        and keep fractions below ``min_keep_fraction`` or between the break-even
        ``2/3`` and 1, map to the nearest reachable allocation's action.
        """
        self.check(allocation)
        d = self.dead_zone
        shares = np.maximum(np.asarray(allocation.sample_shares, dtype=np.float64), 1e-12)
        logits = np.log(shares) / SHARE_SCALE
        if d > 0.0:
            # the inverse of the shrink in _share_deviation: mean-centred, largest entry grown by d
            logits -= logits.mean()
            largest = np.abs(logits).max()
            logits = logits * ((largest + d) / largest) if largest > 1e-12 else logits * 0.0
        # the mapping ignores a shift; centring the range keeps every reachable share in [-1, 1]
        logits -= (logits.max() + logits.min()) / 2.0
        top = self._keep_top
        if allocation.keep_fraction >= 1.0 or top <= self.min_keep_fraction:
            keep = 0.0
        else:  # a fraction above the break-even point maps to it: the nearest reachable one
            keep = -d + (1.0 - d) * (min(allocation.keep_fraction, top) - top) / (top - self.min_keep_fraction)
            keep = min(keep, -d - 1e-6)  # strictly below -d, where selection starts
        floor = self.min_layer_gate
        wanted = np.asarray(allocation.layer_gates, dtype=np.float64)
        # a gate below the floor maps to the floor: the nearest reachable one
        unit = np.clip((wanted - floor) / (1.0 - floor), 0.0, 1.0) if floor < 1.0 else np.ones_like(wanted)
        unit = self._on_gate_mapping(unit)  # a gate binary cannot reach maps to the nearest one it can
        gates = unit * (1.0 - d) - 1.0
        gates[unit >= 1.0] = 0.0
        if allocation.steps == 0:
            steps = (-1.0 + STOP_BELOW) / 2.0  # the middle of the stop region
        elif allocation.steps == self.max_steps:
            steps = 0.0
        else:
            steps = -d + (STOP_BELOW + d) * (1.0 - (allocation.steps - 1) / (self.max_steps - 1))
        action = np.concatenate([logits, [keep], gates, [steps]])
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    def _on_gate_mapping(self, unit_gates: np.ndarray) -> np.ndarray:
        """Linear gates in ``[0, 1]`` as :attr:`gate_mapping` gives them: as they are, or rounded at 1/2
        (``binary``: frozen for the interval, or trained at every step)."""
        if self.gate_mapping == "binary":
            return (unit_gates >= 0.5).astype(np.float64)
        return unit_gates

    @property
    def _keep_top(self) -> float:
        """The largest keep fraction below 1 that an action can ask for."""
        return max(KEEP_BREAK_EVEN, self.min_keep_fraction)

    def _share_deviation(self, entries: np.ndarray) -> np.ndarray:
        """The share entries with the dead zone applied (softmax ignores their mean)."""
        d = self.dead_zone
        if d == 0.0:
            return entries  # the original mapping, bit for bit: published policies replay exactly
        deviation = entries - entries.mean()
        largest = np.abs(deviation).max()
        if largest <= d:
            return deviation * 0.0
        return deviation * ((largest - d) / largest)

    def _keep_of(self, entry: float) -> float:
        d = self.dead_zone
        if entry >= -d:
            return 1.0
        top = self._keep_top
        return top + ((entry + d) / (1.0 - d)) * (top - self.min_keep_fraction)

    def _steps_of(self, entry: float) -> int:
        d = self.dead_zone
        if entry < STOP_BELOW:
            return 0
        if entry >= -d:
            return self.max_steps
        return 1 + int(round((self.max_steps - 1) * (1.0 - (entry + d) / (STOP_BELOW + d))))

    def check(self, allocation: Allocation) -> None:
        """Raise ``ValueError`` if ``allocation`` does not fit this spec."""
        if len(allocation.sample_shares) != self.sample_groups:
            raise ValueError(
                f"sample_shares has {len(allocation.sample_shares)} groups, "
                f"the job's spec has {self.sample_groups}"
            )
        if len(allocation.layer_gates) != self.layer_groups:
            raise ValueError(
                f"layer_gates has {len(allocation.layer_gates)} groups, "
                f"the job's spec has {self.layer_groups}"
            )
        if allocation.steps > self.max_steps:
            raise ValueError(f"steps={allocation.steps} exceeds the spec's max_steps={self.max_steps}")


@dataclass(frozen=True)
class Allocation:
    """How one interval spends compute: sample shares, keep fraction, layer gates, steps.

    Args:
        sample_shares: K non-negative shares summing to 1; share k of every
            minibatch is drawn from loss-quantile group k (0 = lowest loss).
        keep_fraction: in ``(0, 1]``; the highest-loss fraction of the drawn
            batch that gets a backward pass (at least one sample is kept).
        layer_gates: G probabilities in ``[0, 1]`` that each layer group is
            trained at a step.
        steps: optimizer steps in this interval; 0 stops the job.

    Invalid values raise ``ValueError``.
    """

    sample_shares: tuple[float, ...]
    keep_fraction: float
    layer_gates: tuple[float, ...]
    steps: int

    def __post_init__(self) -> None:
        shares = tuple(float(x) for x in self.sample_shares)
        gates = tuple(float(x) for x in self.layer_gates)
        object.__setattr__(self, "sample_shares", shares)
        object.__setattr__(self, "layer_gates", gates)
        if not shares:
            raise ValueError("sample_shares must hold at least one group")
        if not all(math.isfinite(x) and x >= 0.0 for x in shares):
            raise ValueError(f"sample_shares must be finite and >= 0, got {shares}")
        if abs(sum(shares) - 1.0) > _SUM_TOLERANCE:
            raise ValueError(f"sample_shares must sum to 1, got {sum(shares):.6g}")
        keep = float(self.keep_fraction)
        if not (math.isfinite(keep) and 0.0 < keep <= 1.0):
            raise ValueError(f"keep_fraction must be in (0, 1], got {self.keep_fraction!r}")
        object.__setattr__(self, "keep_fraction", keep)
        if not gates:
            raise ValueError("layer_gates must hold at least one group")
        if not all(math.isfinite(x) and 0.0 <= x <= 1.0 for x in gates):
            raise ValueError(f"layer_gates must be in [0, 1], got {gates}")
        steps = self.steps
        if isinstance(steps, float) and steps.is_integer():
            steps = int(steps)
        if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or steps < 0:
            raise ValueError(f"steps must be an integer >= 0, got {self.steps!r}")
        object.__setattr__(self, "steps", int(steps))

    @classmethod
    def uniform(cls, spec: AllocationSpec) -> Allocation:
        """Standard training: equal shares, every sample and layer trained, full steps."""
        k = spec.sample_groups
        return cls(
            sample_shares=(1.0 / k,) * k,
            keep_fraction=1.0,
            layer_gates=(1.0,) * spec.layer_groups,
            steps=spec.max_steps,
        )

    @property
    def stops(self) -> bool:
        """True when this allocation ends the job (zero steps)."""
        return self.steps == 0

    def to_dict(self) -> dict:
        return {
            "sample_shares": list(self.sample_shares),
            "keep_fraction": self.keep_fraction,
            "layer_gates": list(self.layer_gates),
            "steps": self.steps,
        }

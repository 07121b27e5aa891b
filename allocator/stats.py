"""Loss and gradient statistics of an interval, turned into a fixed-size observation.

The observation is a float32 vector of scale-free features, the same size for
every model and dataset, so one policy serves any job. Its layout is::

    [ global (16) | K x per-sample-group (4) | G x per-layer-group (4) ]

Global features (``GLOBAL_FEATURES``):

==  ======================  ====================================================
 0  budget_used             share of the budget R spent so far, C/R
 1  log_train_loss          log(train loss of the last interval / initial val loss)
 2  log_val_loss            log(val loss / initial val loss)
 3  val_loss_change         change of log_val_loss over the last interval
 4  val_loss_above_best     log_val_loss minus its best value so far (>= 0)
 5  generalisation_gap      log_val_loss - log_train_loss
 6  unseen_fraction         share of training samples never drawn yet
 7  log_epochs              log(1 + samples drawn / training-set size)
 8  log_budget_epochs       log(samples the budget buys at uniform / set size)
 9  gradient_coherence      mean over layer groups of feature 2 below
10  previous_keep_fraction  keep fraction of the previous allocation
11  previous_steps          steps of the previous allocation / max_steps
12  val_loss_slope          val_loss_change / budget share of the last interval
13  val_loss_trend          running mean of val_loss_slope (half-life 1 interval)
14  budget_since_best       budget share spent since the best val loss so far
15  selection_alignment     cosine of top-third and whole-batch gradients
==  ======================  ====================================================

Features 12 to 14 are what a stopping decision needs. Under J, one more interval
of budget share ``c`` pays off when the relative loss falls faster than about
``0.2 / (1 + 0.8 U)`` per unit of budget (``s = 0.2``, ``U`` unused), so
``val_loss_slope`` is in those units: about -0.2 is where training stops
paying. It is noisy (the validation set is finite); ``val_loss_trend`` smooths it.

``selection_alignment`` is what selective backprop needs, and what the
job's selection gate reads (:attr:`TrainingJob.selection_gate`): on the first
batch of the interval, the cosine between the gradient of the mean loss of
its highest-loss third (:data:`SELECTION_PROBE_FRACTION`) and that of the
whole batch, over all parameters. Near 1, backpropagating only the hardest
samples moves the model the way the whole batch would, at a third of the
backward cost; low, the hardest samples pull elsewhere (noise, outliers), and
selection spends the budget on them. Trap: it is measured only while the job
runs under a selection gate (the probe costs about 12 % wall time, not
charged to C); without one, and before the first interval, it reads 1. So
under a gate of threshold T, from the second interval on, the next interval
may select exactly when the feature is at least T: the policy sees whether
the gate is open. The first interval never selects under a gate although
the feature reads 1 there (``budget_used`` is 0 only there). Policies
trained before it existed read the observation without it
(:meth:`ObservationLayout.positions_in`).

Per sample group k (``SAMPLE_GROUP_FEATURES``), group 0 the lowest losses:
``log_loss`` (mean log(last seen loss / initial val loss) of its seen
samples), ``log_loss_spread`` (their standard deviation), ``staleness`` (mean
optimizer steps since seen, over the budget's steps; 1 for never seen) and
``previous_share`` (K times the previous share: 1 is uniform).

Per layer group g (``LAYER_GROUP_FEATURES``), in forward order, head last:
``log_grad_to_weight`` (log of RMS gradient norm over weight norm in the
interval), its ``change``, ``gradient_coherence`` (``|sum g|^2 / (n sum |g|^2)``
over the interval's n steps: 1 when every step pushes the same way, about 1/n
when gradients are noise) and ``previous_gate``.

Every feature is clipped to ``[-OBSERVATION_CLIP, OBSERVATION_CLIP]``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from allocator.allocation import AllocationSpec

OBSERVATION_CLIP = 10.0

GLOBAL_FEATURES = (
    "budget_used",
    "log_train_loss",
    "log_val_loss",
    "val_loss_change",
    "val_loss_above_best",
    "generalisation_gap",
    "unseen_fraction",
    "log_epochs",
    "log_budget_epochs",
    "gradient_coherence",
    "previous_keep_fraction",
    "previous_steps",
    "val_loss_slope",
    "val_loss_trend",
    "budget_since_best",
    "selection_alignment",
)
SELECTION_PROBE_FRACTION = 1 / 3
"""Share of the probed batch, highest loss first, whose gradient ``selection_alignment``
compares with the whole batch's: the middle of the keep fractions selection can ask for."""
TREND_DECAY = 0.5  # weight of the old trend in val_loss_trend: a half-life of one interval
SAMPLE_GROUP_FEATURES = ("log_loss", "log_loss_spread", "staleness", "previous_share")
LAYER_GROUP_FEATURES = ("log_grad_to_weight", "change", "gradient_coherence", "previous_gate")
FEATURE_NAMES = tuple(dict.fromkeys(GLOBAL_FEATURES + SAMPLE_GROUP_FEATURES + LAYER_GROUP_FEATURES))
"""Every feature name, once (``gradient_coherence`` is both global and per layer group)."""


@dataclass(frozen=True)
class ObservationLayout:
    """Where each feature sits in the observation vector of a given spec.

    Use it to read an observation group by group::

        layout = ObservationLayout(job.spec)
        layout.sample_group_features(obs)[:, layout.sample_index("log_loss")]

    The feature lists default to today's (``GLOBAL_FEATURES`` and so on). A
    policy trained on an earlier version of the observation carries its own
    lists in policy.json; :meth:`from_names` rebuilds its layout and
    :meth:`positions_in` finds its features in today's observation.
    """

    spec: AllocationSpec
    global_names: tuple[str, ...] = GLOBAL_FEATURES
    sample_group_names: tuple[str, ...] = SAMPLE_GROUP_FEATURES
    layer_group_names: tuple[str, ...] = LAYER_GROUP_FEATURES

    @classmethod
    def from_names(cls, spec: AllocationSpec, names: dict) -> ObservationLayout:
        """The layout of policy.json's ``observation.features`` (keys ``global``,
        ``per_sample_group``, ``per_layer_group``); unknown names raise ``ValueError``."""
        sections = ("global", "per_sample_group", "per_layer_group")
        lists = []
        for section, known in zip(sections, (GLOBAL_FEATURES, SAMPLE_GROUP_FEATURES, LAYER_GROUP_FEATURES)):
            section_names = names.get(section)
            if not isinstance(section_names, (list, tuple)) or not all(
                isinstance(n, str) for n in section_names
            ):
                raise ValueError(
                    f"observation features {section!r} must be a list of names, got {section_names!r}"
                )
            unknown = [n for n in section_names if n not in known]
            if unknown:
                raise ValueError(
                    f"{section} feature(s) {unknown} are not in this version's observation "
                    f"(it has {list(known)})"
                )
            lists.append(tuple(section_names))
        return cls(spec, *lists)

    @property
    def is_current(self) -> bool:
        """True when this is today's layout: a job's observation needs no selection."""
        return (self.global_names, self.sample_group_names, self.layer_group_names) == (
            GLOBAL_FEATURES,
            SAMPLE_GROUP_FEATURES,
            LAYER_GROUP_FEATURES,
        )

    @property
    def global_size(self) -> int:
        return len(self.global_names)

    @property
    def sample_group_size(self) -> int:
        """Features per sample group."""
        return len(self.sample_group_names)

    @property
    def layer_group_size(self) -> int:
        """Features per layer group."""
        return len(self.layer_group_names)

    @property
    def size(self) -> int:
        return (
            self.global_size
            + self.spec.sample_groups * self.sample_group_size
            + self.spec.layer_groups * self.layer_group_size
        )

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Every feature name of this layout, once each (``gradient_coherence`` is global and per layer group)."""
        return tuple(dict.fromkeys(self.global_names + self.sample_group_names + self.layer_group_names))

    def names(self) -> dict:
        """The feature names section by section, as policy.json's ``observation.features``
        lists them: what :meth:`from_names` reads back."""
        return {
            "global": list(self.global_names),
            "per_sample_group": list(self.sample_group_names),
            "per_layer_group": list(self.layer_group_names),
        }

    def to_dict(self) -> dict:
        return {**self.names(), "size": self.size}

    def global_index(self, name: str) -> int:
        return self.global_names.index(name)

    def sample_index(self, name: str) -> int:
        return self.sample_group_names.index(name)

    def layer_index(self, name: str) -> int:
        return self.layer_group_names.index(name)

    def global_features(self, observation: np.ndarray) -> np.ndarray:
        return np.asarray(observation)[: self.global_size]

    def sample_group_features(self, observation: np.ndarray) -> np.ndarray:
        """``(K, sample_group_size)`` array: one row per sample group."""
        start = self.global_size
        stop = start + self.spec.sample_groups * self.sample_group_size
        return np.asarray(observation)[start:stop].reshape(self.spec.sample_groups, -1)

    def layer_group_features(self, observation: np.ndarray) -> np.ndarray:
        """``(G, layer_group_size)`` array: one row per layer group."""
        start = self.global_size + self.spec.sample_groups * self.sample_group_size
        return np.asarray(observation)[start:].reshape(self.spec.layer_groups, -1)

    def positions_in(self, other: ObservationLayout) -> np.ndarray:
        """For each entry of this layout, in order, its position in ``other``'s observation.

        ``observation[layout.positions_in(ObservationLayout(spec))]`` turns
        today's observation into the one this (older) layout describes. Raises
        ``ValueError`` when ``other`` lacks one of the features.
        """
        if (
            other.spec.sample_groups != self.spec.sample_groups
            or other.spec.layer_groups != self.spec.layer_groups
        ):
            raise ValueError("layouts of different numbers of sample or layer groups cannot be matched")
        flat = np.arange(other.size)
        missing = [
            n
            for n, known in (
                *((n, other.global_names) for n in self.global_names),
                *((n, other.sample_group_names) for n in self.sample_group_names),
                *((n, other.layer_group_names) for n in self.layer_group_names),
            )
            if n not in known
        ]
        if missing:
            raise ValueError(f"the observation lacks feature(s) {missing}")
        parts = [
            other.global_features(flat)[[other.global_index(n) for n in self.global_names]],
            other.sample_group_features(flat)[
                :, [other.sample_index(n) for n in self.sample_group_names]
            ].reshape(-1),
            other.layer_group_features(flat)[
                :, [other.layer_index(n) for n in self.layer_group_names]
            ].reshape(-1),
        ]
        return np.concatenate(parts).astype(np.int64)

    def positions(self, names: Iterable[str]) -> list[int]:
        """Sorted positions in the flat observation of every feature with one of these names.

        A name counts in every section it appears in: ``gradient_coherence``
        gives the global entry and one per layer group, ``previous_share`` one
        per sample group. An unknown name raises ``ValueError`` listing the known ones.
        """
        names = list(names)
        unknown = [name for name in names if name not in self.feature_names]
        if unknown:
            raise ValueError(f"unknown observation feature(s) {unknown}; the features are {list(self.feature_names)}")
        flat = np.arange(self.size)
        found = [self.global_index(name) for name in names if name in self.global_names]
        for name in names:
            if name in self.sample_group_names:
                found += self.sample_group_features(flat)[:, self.sample_index(name)].tolist()
            if name in self.layer_group_names:
                found += self.layer_group_features(flat)[:, self.layer_index(name)].tolist()
        return sorted(set(found))


@dataclass
class IntervalStatistics:
    """Host-side statistics of one interval, read from the device in one transfer."""

    budget_used: float
    train_loss: float  # mean per-sample loss of the samples drawn in the interval
    val_loss: float
    samples_drawn: int  # cumulative, whole run
    training_set_size: int
    budget_samples: int  # samples the whole budget draws at uniform allocation
    unseen_fraction: float
    group_log_loss: np.ndarray  # (K,)
    group_log_loss_spread: np.ndarray  # (K,)
    group_staleness: np.ndarray  # (K,)
    layer_log_grad_to_weight: np.ndarray  # (G,) NaN where the group was not trained
    layer_coherence: np.ndarray  # (G,) NaN where the group was not trained
    selection_alignment: float = 1.0  # NaN when not probed (no selection gate, no step, vanished gradients)


class ObservationBuilder:
    """Turns each interval's statistics into the observation; keeps the history it needs."""

    def __init__(self, spec: AllocationSpec, initial_val_loss: float) -> None:
        self.layout = ObservationLayout(spec)
        self.spec = spec
        self._log_initial = float(np.log(max(initial_val_loss, 1e-12)))
        self._previous_log_val = 0.0
        self._best_log_val = 0.0
        self._previous_budget_used = 0.0
        self._budget_at_best = 0.0
        self._trend: float | None = None
        self._layer_ratio = np.zeros(spec.layer_groups)
        self._layer_coherence = np.ones(spec.layer_groups)
        self._alignment = 1.0

    def _relative_log(self, loss: float) -> float:
        if not np.isfinite(loss) or loss <= 0:
            return OBSERVATION_CLIP if not np.isfinite(loss) else -OBSERVATION_CLIP
        return float(np.log(loss) - self._log_initial)

    def initial(self, budget_samples: int, training_set_size: int, allocation) -> np.ndarray:
        """The observation before any training: losses at their initial values."""
        spec = self.spec
        global_part = np.zeros(self.layout.global_size)
        global_part[self.layout.global_index("unseen_fraction")] = 1.0
        global_part[self.layout.global_index("log_budget_epochs")] = np.log(
            max(budget_samples, 1) / max(training_set_size, 1)
        )
        global_part[self.layout.global_index("gradient_coherence")] = 1.0
        global_part[self.layout.global_index("selection_alignment")] = 1.0
        samples = np.zeros((spec.sample_groups, self.layout.sample_group_size))
        samples[:, self.layout.sample_index("staleness")] = 1.0
        layers = np.zeros((spec.layer_groups, self.layout.layer_group_size))
        layers[:, self.layout.layer_index("gradient_coherence")] = 1.0
        return self._assemble(global_part, samples, layers, allocation)

    def update(self, stats: IntervalStatistics, allocation) -> np.ndarray:
        """The observation after an interval run under ``allocation``."""
        layout = self.layout
        log_val = self._relative_log(stats.val_loss)
        log_train = self._relative_log(stats.train_loss)
        if log_val < self._best_log_val:
            self._best_log_val = log_val
            self._budget_at_best = stats.budget_used
        spent = stats.budget_used - self._previous_budget_used
        # An interval that spent (almost) nothing carries no slope: keep the last trend.
        slope = (log_val - self._previous_log_val) / spent if spent > 1e-6 else (self._trend or 0.0)
        slope = float(np.clip(slope, -OBSERVATION_CLIP, OBSERVATION_CLIP))
        self._trend = slope if self._trend is None else TREND_DECAY * self._trend + (1 - TREND_DECAY) * slope

        trained = np.isfinite(stats.layer_log_grad_to_weight)
        new_ratio = np.where(trained, stats.layer_log_grad_to_weight, self._layer_ratio)
        change = new_ratio - self._layer_ratio
        self._layer_ratio = new_ratio
        self._layer_coherence = np.where(
            np.isfinite(stats.layer_coherence), stats.layer_coherence, self._layer_coherence
        )

        if np.isfinite(stats.selection_alignment):  # an interval without a probe keeps the last one
            self._alignment = float(stats.selection_alignment)

        global_part = np.zeros(layout.global_size)
        values = {
            "budget_used": stats.budget_used,
            "log_train_loss": log_train,
            "log_val_loss": log_val,
            "val_loss_change": log_val - self._previous_log_val,
            "val_loss_above_best": log_val - self._best_log_val,
            "generalisation_gap": log_val - log_train,
            "unseen_fraction": stats.unseen_fraction,
            "log_epochs": np.log1p(stats.samples_drawn / max(stats.training_set_size, 1)),
            "log_budget_epochs": np.log(max(stats.budget_samples, 1) / max(stats.training_set_size, 1)),
            "gradient_coherence": float(np.mean(self._layer_coherence)),
            "val_loss_slope": slope,
            "val_loss_trend": self._trend,
            "budget_since_best": stats.budget_used - self._budget_at_best,
            "selection_alignment": self._alignment,
        }
        for name, value in values.items():
            global_part[layout.global_index(name)] = value
        self._previous_log_val = log_val
        self._previous_budget_used = stats.budget_used

        samples = np.stack(
            [
                stats.group_log_loss - self._log_initial,
                stats.group_log_loss_spread,
                stats.group_staleness,
                np.zeros(self.spec.sample_groups),  # previous share, filled in _assemble
            ],
            axis=1,
        )
        layers = np.stack(
            [
                self._layer_ratio,
                change,
                self._layer_coherence,
                np.zeros(self.spec.layer_groups),  # previous gate, filled in _assemble
            ],
            axis=1,
        )
        return self._assemble(global_part, samples, layers, allocation)

    def _assemble(self, global_part, samples, layers, allocation) -> np.ndarray:
        layout = self.layout
        global_part[layout.global_index("previous_keep_fraction")] = allocation.keep_fraction
        global_part[layout.global_index("previous_steps")] = allocation.steps / self.spec.max_steps
        samples[:, layout.sample_index("previous_share")] = (
            np.asarray(allocation.sample_shares) * self.spec.sample_groups
        )
        layers[:, layout.layer_index("previous_gate")] = allocation.layer_gates
        observation = np.concatenate([global_part, samples.reshape(-1), layers.reshape(-1)])
        observation = np.nan_to_num(observation, nan=0.0, posinf=OBSERVATION_CLIP, neginf=-OBSERVATION_CLIP)
        return np.clip(observation, -OBSERVATION_CLIP, OBSERVATION_CLIP).astype(np.float32)

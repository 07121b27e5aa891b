"""A stop veto: a logistic regression that refuses a policy's stop where continuing pays.

A policy decides when a job stops, and PPO learns that decision from the
reward alone; on slow learners the published policies stop early
(BENCHMARKS.md section 5, forty-first round). A veto is a second,
small model fitted to hindsight instead: on standard training's own
curves, was a later stop better under J than stopping here? When a
policy carrying a veto asks to stop and the veto's regression says
continuing pays (probability above 1/2), the job runs on.

It travels in the policy directory, as JSON in policy.json (no pickle)::

    "stop_veto": {
      "features": ["budget_used", "log_val_loss", ...],  # global features, by name
      "mean": [...], "scale": [...],                       # standardisation, one per feature
      "weights": [...], "intercept": b,                    # the regression, on standardised features
      "extra": {...}                                       # free-form: how it was fitted
    }

``continue_pays(observation)`` is ``(x - mean) / scale . weights + intercept > 0``
with ``x`` the named features of the job's raw observation (today's layout:
global features first, see :mod:`allocator.stats`).

Fit one with ``python benchmarks/stop_veto.py fit --policy P --out DIR``:
it writes ``P`` with its veto as a new policy directory, which ``apply``
and ``evaluate`` run like any other (``AllocatorPolicy.act`` consults the
veto). Trap: the veto reads features by name, so one fitted on another
version of the observation (a feature since removed) is refused at load;
refit it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from allocator.stats import GLOBAL_FEATURES

#: the key of policy.json that holds a veto
STOP_VETO_KEY = "stop_veto"
_LISTS = ("mean", "scale", "weights")


@dataclass(frozen=True)
class StopVeto:
    """A standardised logistic regression on the observation's global features.

    Attributes:
        features: the global features it reads, by name (each in ``GLOBAL_FEATURES``).
        mean, scale: the standardisation, one entry per feature (``scale`` > 0).
        weights, intercept: the regression on the standardised features.
        extra: free-form notes on how it was fitted (written to policy.json as they are).
    """

    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    weights: tuple[float, ...]
    intercept: float
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.features:
            raise ValueError("a stop veto reads at least one feature")
        unknown = [name for name in self.features if name not in GLOBAL_FEATURES]
        if unknown:
            raise ValueError(
                f"the stop veto reads feature(s) {unknown} that this version's observation lacks "
                "(it was fitted on another version: refit it)"
            )
        if len(set(self.features)) != len(self.features):
            raise ValueError(f"the stop veto names a feature twice: {list(self.features)}")
        for name in _LISTS:
            values = getattr(self, name)
            if len(values) != len(self.features):
                raise ValueError(
                    f"the stop veto's {name} has {len(values)} entries for {len(self.features)} features"
                )
            if not all(math.isfinite(v) for v in values):
                raise ValueError(f"the stop veto's {name} holds NaN or inf values")
        if not all(v > 0 for v in self.scale):
            raise ValueError("the stop veto's scale must be positive")
        if not math.isfinite(self.intercept):
            raise ValueError("the stop veto's intercept must be finite")

    @classmethod
    def from_dict(cls, value: Any) -> StopVeto:
        """Parse policy.json's ``stop_veto`` object; ``ValueError`` saying what is wrong."""
        if not isinstance(value, dict):
            raise ValueError(f"stop_veto must be a JSON object, got {type(value).__name__}")
        known = {"features", *_LISTS, "intercept", "extra"}
        missing = sorted(known - {"extra"} - set(value))
        unexpected = sorted(set(value) - known)
        if missing or unexpected:
            raise ValueError(f"stop_veto: missing key(s) {missing}, unexpected key(s) {unexpected}")
        features = value["features"]
        if not isinstance(features, list) or not all(isinstance(n, str) for n in features):
            raise ValueError("stop_veto.features must be a list of feature names")
        numbers = {}
        for name in (*_LISTS, "intercept"):
            entry = value[name]
            items = entry if name != "intercept" else [entry]
            if not isinstance(items, list) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in items
            ):
                raise ValueError(f"stop_veto.{name} must be {'a number' if name == 'intercept' else 'a list of numbers'}")
            numbers[name] = tuple(float(v) for v in items)
        extra = value.get("extra", {})
        if not isinstance(extra, dict):
            raise ValueError("stop_veto.extra must be a JSON object")
        return cls(
            features=tuple(features),
            mean=numbers["mean"],
            scale=numbers["scale"],
            weights=numbers["weights"],
            intercept=numbers["intercept"][0],
            extra=extra,
        )

    def to_dict(self) -> dict:
        """The JSON object of policy.json's ``stop_veto``."""
        return {
            "features": list(self.features),
            "mean": list(self.mean),
            "scale": list(self.scale),
            "weights": list(self.weights),
            "intercept": self.intercept,
            "extra": dict(self.extra),
        }

    def continue_pays(self, observation: Sequence[float] | np.ndarray) -> bool:
        """True when the regression says running on beats stopping here (probability above 1/2).

        ``observation`` is a job's raw observation of this version (not normalised,
        not a policy's own older layout).
        """
        # the global features come first in a job's observation, in GLOBAL_FEATURES' order
        x = np.asarray(observation, dtype=np.float64)[[GLOBAL_FEATURES.index(n) for n in self.features]]
        z = (x - np.asarray(self.mean)) / np.asarray(self.scale)
        return float(z @ np.asarray(self.weights) + self.intercept) > 0.0

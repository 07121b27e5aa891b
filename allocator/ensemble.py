"""Several trained policies acting as one: the mean (or median) of their deterministic actions.

PPO runs that differ only in their seed learn different policies, and on new
jobs they fail in different places (BENCHMARKS.md section 5: one seed stops a
compute-bound CNN at half its budget, another selects samples where that
costs loss). Averaging their actions keeps what the runs agree on and damps
what only one of them does: a stop needs the mean of the steps entries to
fall in the stop region, so one member alone rarely stops a job the others
would run on.

A policy ensemble is an ordinary policy directory, in the same safe format:

* ``policy.json`` with ``"kind": "ensemble"``, the shared ``spec`` and
  ``observation`` size, and ``"members"``: each member's own policy.json
  (what it was trained with stays readable);
* ``policy.safetensors`` with each member's tensors under ``members.{i}.``.

``AllocatorPolicy.load(path)`` reads one as it reads a single policy, so
``compute-allocator evaluate --policy DIR`` and ``apply --policy DIR`` take an
ensemble unchanged. Make one from trained policy directories with
``compute-allocator ensemble --out DIR POLICY_DIR POLICY_DIR ...`` or::

    from allocator.ensemble import PolicyEnsemble

    ensemble = PolicyEnsemble.from_directories(["runs/quick-s0", "runs/quick-s1", "runs/quick-s2"])
    ensemble.save("runs/quick-ensemble")

.. warning:: Every member must have the same :class:`AllocationSpec` (K, G,
   max steps, keep floor, dead zone, token dropping, ...) and read the same observation: the
   members' action entries are averaged position by position, which only
   means something when each position means the same thing to every member.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from allocator.allocation import STOP_BELOW
from allocator.policy import (
    CONFIG_FILE,
    ENSEMBLE_KIND,
    FORMAT_NAME,
    FORMAT_VERSION,
    WEIGHTS_FILE,
    AllocatorPolicy,
    _read_safetensors,
    stop_veto_of,
)

MEMBER_PREFIX = "members"


def _mean_with_unanimous_stop(actions: np.ndarray, axis: int = 0) -> np.ndarray:
    """The mean action, except that a job stops only when every member's steps entry stops it.

    Where the mean's steps entry (the last) falls in the stop region while some
    member's does not, the steps entry becomes the mean over the members that
    go on: the job runs the interval those members would run.
    """
    actions = np.asarray(actions, dtype=np.float64)
    combined = actions.mean(axis=axis)
    steps = np.moveaxis(actions, axis, 0)[..., -1]  # (members, ...) steps entries
    going_on = steps >= STOP_BELOW
    some_go_on = going_on.any(axis=0)
    mean_of_those = np.where(going_on, steps, 0.0).sum(axis=0) / np.maximum(going_on.sum(axis=0), 1)
    outvoted_stop = some_go_on & (combined[..., -1] < STOP_BELOW)
    combined[..., -1] = np.where(outvoted_stop, mean_of_those, combined[..., -1])
    return combined


#: How the members' actions are combined (policy.json's ``combine``): entry by entry, their
#: mean (the default) or their median (with 3 members, the middle one: one member far from
#: the other two moves nothing); or their mean with a stop only when every member stops
#: (``"unanimous-stop"``: one member that would go on keeps the job training).
COMBINE = "mean-action"
COMBINES = {
    "mean-action": np.mean,
    "median-action": np.median,
    "unanimous-stop": _mean_with_unanimous_stop,
}


#: The spec's rules a trained policy can take on later, with the flag of evaluate and apply that sets each.
_RULE_FLAGS = {"token_dropping": "--token-dropping", "freeze_cnn_first_group": "--freeze-cnn-first-group"}


def _shown(value) -> str:
    return "off" if value is None else str(value)


class PolicyEnsemble(AllocatorPolicy):
    """Several trained :class:`AllocatorPolicy` members acting as one controller.

    ``action(observation)`` is the mean (or, with ``combine="median-action"``,
    the median; with ``"unanimous-stop"``, the mean with a stop only when every
    member stops) of the members' deterministic actions, entry by entry (each
    the mean of its Gaussian clipped to ``[-1, 1]``), mapped to an
    :class:`Allocation` by the shared spec. Each member normalises the raw
    observation with its own VecNormalize statistics and hides its own
    ignored features, so members trained with different options combine.

    Attributes:
        members: the member policies, in order.
        combine: ``"mean-action"``, ``"median-action"`` or ``"unanimous-stop"``
            (:data:`COMBINES`). Trap: ``"unanimous-stop"`` runs a job on while any
            member would, so one member that never stops a data-bound job keeps
            it training to the budget (BENCHMARKS.md section 5, twenty-seventh round).
        spec, observation_size, metadata, name: as for :class:`AllocatorPolicy`;
            ``kind`` is ``"ensemble"``.
    """

    def __init__(
        self,
        members: Sequence[AllocatorPolicy],
        metadata: dict | None = None,
        name: str = "ensemble",
        combine: str = COMBINE,
    ) -> None:
        members = list(members)
        if not isinstance(combine, str) or combine not in COMBINES:
            raise ValueError(f"unknown combine {combine!r}; known: {', '.join(COMBINES)}")
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 policies, got {len(members)}")
        for member in members:
            if isinstance(member, PolicyEnsemble):
                raise ValueError(
                    f"{member.name} is already an ensemble; combine its members with the others instead"
                )
            if not isinstance(member, AllocatorPolicy):
                raise ValueError(
                    f"ensemble members must be AllocatorPolicy objects, got {type(member).__name__}"
                )
        first = members[0]
        for member in members[1:]:
            if member.spec != first.spec:
                differences = ", ".join(
                    f"{field.name} {_shown(getattr(member.spec, field.name))} against "
                    f"{_shown(getattr(first.spec, field.name))}"
                    for field in dataclasses.fields(first.spec)
                    if getattr(member.spec, field.name) != getattr(first.spec, field.name)
                )
                flags = [
                    flag
                    for name, flag in _RULE_FLAGS.items()
                    if getattr(member.spec, name) != getattr(first.spec, name)
                ]
                hint = (
                    f" (give every member the same setting, or none and pass {' and '.join(flags)} to "
                    "evaluate or apply)"
                    if flags
                    else ""
                )
                raise ValueError(
                    f"{member.name} differs from {first.name} in its allocation spec: {differences}; an "
                    f"ensemble's members must share it{hint}"
                )
            if member.selection_gate != first.selection_gate:
                raise ValueError(
                    f"{member.name} was trained with selection gate {member.selection_gate}, {first.name} with "
                    f"{first.selection_gate}: an ensemble's members must run their jobs under the same rule"
                )
            # members trained before a feature was added read theirs out of today's observation by name
            if member.job_observation_size != first.job_observation_size:
                raise ValueError(
                    f"{member.name} reads {member.job_observation_size} observation features, {first.name} reads "
                    f"{first.job_observation_size}: the members were trained on different observations"
                )
        vetoed = [member.name for member in members if member.stop_veto is not None]
        if vetoed:
            raise ValueError(
                f"{', '.join(vetoed)} carr{'ies' if len(vetoed) == 1 else 'y'} a stop veto, which an ensemble "
                "would not run (it acts on the combined action): ensemble the policies without it and "
                "give the ensemble a veto of its own"
            )
        self.members = members
        self.combine = combine
        self.spec = first.spec
        self.kind = ENSEMBLE_KIND
        self.observation_size = self.job_observation_size = first.job_observation_size
        self.selection_gate = first.selection_gate
        self.name = name
        self.metadata = metadata if metadata is not None else self._policy_json()
        self.stop_veto = stop_veto_of(self.metadata, name)

    @property
    def normalizes_observation(self) -> bool:
        """True when every member normalises observations with its shipped statistics."""
        return all(member.normalizes_observation for member in self.members)

    def normalize(self, observation):
        raise TypeError(
            "an ensemble has no single normalised observation: each member normalises with its own "
            "statistics (use ensemble.members[i].normalize)"
        )

    def _with_spec(self, **changes) -> PolicyEnsemble:
        """The ensemble with the spec's rules ``changes`` replaced (``with_token_dropping``,
        ``with_cnn_first_group_frozen``): on every member too, since a saved ensemble's spec
        must equal its members'."""
        ensemble = super()._with_spec(**changes)
        ensemble.members = [member._with_spec(**changes) for member in self.members]
        ensemble.metadata = {**ensemble.metadata, "members": [member.metadata for member in ensemble.members]}
        return ensemble

    @torch.no_grad()
    def action(self, observation) -> np.ndarray:
        """The members' deterministic actions for a raw observation (``(N,)`` or ``(B, N)``), combined."""
        actions = [member.action(observation) for member in self.members]
        return COMBINES[self.combine](actions, axis=0).astype(np.float32)

    # ------------------------------------------------------------------ making and saving

    @classmethod
    def from_directories(
        cls, paths: Sequence[str | os.PathLike], name: str = "ensemble", combine: str = COMBINE
    ) -> PolicyEnsemble:
        """Load each policy directory and combine them (``ValueError`` for a bad one)."""
        return cls([AllocatorPolicy.load(path) for path in paths], name=name, combine=combine)

    def _policy_json(self) -> dict:
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "kind": ENSEMBLE_KIND,
            "combine": self.combine,
            "spec": self.spec.to_dict(),
            "observation": {"size": self.observation_size, "features": self._feature_names()},
            "members": [member.metadata for member in self.members],
            "extra": {"members": [member.name for member in self.members]},
        }

    def _feature_names(self) -> dict | None:
        """The features of the observation the ensemble reads: its members' when they share a layout."""
        features = [member.metadata["observation"].get("features") for member in self.members]
        if all(names == features[0] for names in features):
            return features[0]
        from allocator.stats import ObservationLayout  # members of several versions read today's

        return ObservationLayout(self.spec).names()

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every member's tensors, named ``members.{i}.<name>`` as in the ensemble's policy.safetensors."""
        return {
            f"{MEMBER_PREFIX}.{index}.{key}": tensor.contiguous()
            for index, member in enumerate(self.members)
            for key, tensor in member.tensors().items()
        }

    @classmethod
    def from_policy_file(cls, directory: Path, metadata: dict) -> PolicyEnsemble:
        """Read an ensemble's policy directory (``AllocatorPolicy.load`` calls this for kind "ensemble")."""
        config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
        where = str(config_path)
        members_metadata = metadata.get("members")
        if not isinstance(members_metadata, list) or not all(isinstance(m, dict) for m in members_metadata):
            raise ValueError(f"{where}: an ensemble needs 'members', a list of policy.json objects")
        combine = metadata.get("combine", COMBINE)
        if not isinstance(combine, str) or combine not in COMBINES:
            raise ValueError(f"{where}: unknown 'combine' {combine!r}; known: {', '.join(COMBINES)}")
        tensors = _read_safetensors(weights_path)
        by_member: list[dict[str, torch.Tensor]] = [{} for _ in members_metadata]
        for key, tensor in tensors.items():
            prefix, _, rest = key.partition(".")
            index, _, name = rest.partition(".")
            if prefix != MEMBER_PREFIX or not index.isdigit() or int(index) >= len(by_member) or not name:
                raise ValueError(
                    f"unexpected tensor {key!r} in {weights_path}: an ensemble's tensors are named "
                    f"'{MEMBER_PREFIX}.<i>.<name>' for its {len(by_member)} members"
                )
            by_member[int(index)][name] = tensor
        members = [
            AllocatorPolicy.from_parts(
                member_metadata,
                member_tensors,
                where=f"{where} (member {index})",
                weights=f"{weights_path} (member {index})",
                name=f"member:{index}",
            )
            for index, (member_metadata, member_tensors) in enumerate(zip(members_metadata, by_member))
        ]
        ensemble = cls(members, metadata=metadata, name=f"policy:{directory.resolve().name}", combine=combine)
        if metadata.get("spec") is not None and metadata["spec"] != ensemble.spec.to_dict():
            raise ValueError(f"{where}: 'spec' differs from its members' spec {ensemble.spec.to_dict()}")
        return ensemble

    def __repr__(self) -> str:
        return (
            f"PolicyEnsemble(name={self.name!r}, members={len(self.members)}, combine={self.combine!r}, "
            f"spec={self.spec})"
        )

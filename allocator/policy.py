"""Load a trained allocator policy from its safe on-disk format and run it.

A policy directory written by :func:`agents.export.export_policy` holds two
files that are all a user needs to apply a trained policy:

* ``policy.safetensors`` -- the actor's weights (float32) and, when the agent
  was trained on ``VecNormalize``d observations, the normalisation statistics
  ``observation.mean`` and ``observation.var`` (float64, as VecNormalize keeps
  them). No pickle, no code: safetensors holds named tensors only.
* ``policy.json`` -- everything needed to rebuild the actor around them::

    {
      "format": "compute-allocator-policy",
      "format_version": 1,
      "kind": "mlp" | "attention",
      "spec": {"sample_groups": K, "layer_groups": G, "max_steps": ..., "min_keep_fraction": ...,
               "dead_zone": ... (absent in older files: 0),
               "min_layer_gate": ... (absent unless set: 0),
               "stop_before_budget": true (absent unless set: false),
               "share_prior": "loss" (absent unless set: "uniform"),
               "token_dropping": {"keep": k, "until": u} (absent unless set: off)},
      "selection_gate": T,                                   # optional: absent means off
      "stop_veto": {...},                                    # optional: absent means none
      "observation": {"size": N, "global": n_g, "per_sample_group": n_s,
                      "per_layer_group": n_l, "features": {...names, optional...},
                      "ignored_features": [names, optional]},
      "network": {"activation": "tanh", "hidden_sizes": [64, 64]}      # kind "mlp"
                 {"activation": "tanh", "hidden_size": 64}             # kind "attention"
      "normalization": {"observation": true, "clip_obs": 10.0, "epsilon": 1e-8,
                        "reward": true},
      "versions": {"torch": ..., "stable_baselines3": ..., "compute_allocator": ...},
      "extra": {...}                                                   # free-form
    }

  with ``N = n_g + K * n_s + G * n_l`` (the observation is laid out as
  ``[global | K x per-sample-group | G x per-layer-group]``, see
  :mod:`allocator.stats`). ``ignored_features`` names the features the agent
  was trained without (its env held them at 0); the policy zeroes the same
  entries of a job's observation before normalising it. ``features`` lists
  what the policy reads, by name: a policy trained before a feature was added
  to the observation takes its own features out of a job's observation of
  today's version (``AllocatorPolicy.layout``); one naming a feature this
  version lacks is refused ("retrain it"). ``selection_gate``
  is the alignment threshold of the jobs' selection gate the agent was
  trained with (``TrainingJob.selection_gate``); the policy sets it on every
  job in ``reset(job)``, so a job runs under the rule it was trained under.
  ``stop_veto`` is a regression that refuses the policy's stops where
  continuing pays (:mod:`allocator.stop_veto`); ``act`` consults it.

Tensor names: ``actor.hidden.{i}.weight/bias`` and ``actor.output.weight/bias``
for ``"mlp"`` (SB3's ``mlp_extractor.policy_net`` and ``action_net``); the
``state_dict`` keys of :class:`AttentionActor` prefixed with ``actor.`` for
``"attention"``.

:class:`AllocatorPolicy` rebuilds the actor in plain PyTorch: applying a policy
needs neither gymnasium nor stable-baselines3.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from allocator.allocation import Allocation, AllocationSpec, check_selection_gate
from allocator.stop_veto import STOP_VETO_KEY, StopVeto
from allocator.token_dropping import TokenDropping

FORMAT_NAME = "compute-allocator-policy"
FORMAT_VERSION = 1
WEIGHTS_FILE = "policy.safetensors"
CONFIG_FILE = "policy.json"
POLICY_KINDS = ("mlp", "attention")
#: policy.json's kind for several policies acting as one (:mod:`allocator.ensemble`).
ENSEMBLE_KIND = "ensemble"
OBSERVATION_MEAN = "observation.mean"
OBSERVATION_VAR = "observation.var"

# Activations a policy may use, by the name written to policy.json.
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "leaky_relu": nn.LeakyReLU,
    "sigmoid": nn.Sigmoid,
    "identity": nn.Identity,
}


def activation_name(activation_fn: type[nn.Module] | str) -> str:
    """The policy.json name of an activation class (``nn.Tanh`` -> ``"tanh"``).

    Raises ``ValueError`` for activations the safe format cannot rebuild.
    """
    if isinstance(activation_fn, str):
        if activation_fn in ACTIVATIONS:
            return activation_fn
    else:
        for name, cls in ACTIVATIONS.items():
            if activation_fn is cls:
                return name
    raise ValueError(
        f"activation {activation_fn!r} is not supported by the policy format; "
        f"use one of {sorted(ACTIVATIONS)} (torch.nn classes with default arguments)"
    )


def _activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; known: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def observation_layout_sizes(layout: Any) -> dict[str, int]:
    """The three feature counts of an observation layout, as written to policy.json.

    ``layout`` is an :class:`allocator.stats.ObservationLayout` (or any object with
    ``global_size``, ``sample_group_size`` and ``layer_group_size``), a mapping with
    those keys or with policy.json's ``global`` / ``per_sample_group`` /
    ``per_layer_group``, or a tuple ``(n_global, n_per_sample_group, n_per_layer_group)``.
    Returns ``{"global": n_g, "per_sample_group": n_s, "per_layer_group": n_l}``.
    """
    if isinstance(layout, Mapping):
        if {"global", "per_sample_group", "per_layer_group"} <= set(layout):
            values = (layout["global"], layout["per_sample_group"], layout["per_layer_group"])
        elif {"global_size", "sample_group_size", "layer_group_size"} <= set(layout):
            values = (
                layout["global_size"],
                layout["sample_group_size"],
                layout["layer_group_size"],
            )
        else:
            raise ValueError(
                "an observation layout mapping needs the keys 'global', 'per_sample_group' "
                f"and 'per_layer_group', got {sorted(layout)}"
            )
    elif isinstance(layout, (tuple, list)):
        if len(layout) != 3:
            raise ValueError(
                "an observation layout tuple is (n_global, n_per_sample_group, "
                f"n_per_layer_group), got {layout!r}"
            )
        values = tuple(layout)
    elif all(hasattr(layout, a) for a in ("global_size", "sample_group_size", "layer_group_size")):
        values = (layout.global_size, layout.sample_group_size, layout.layer_group_size)
    else:
        raise ValueError(f"cannot read an observation layout from {layout!r}")
    names = ("global", "per_sample_group", "per_layer_group")
    sizes = {}
    for name, value in zip(names, values):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"observation layout {name!r} must be an integer >= 0, got {value!r}")
        sizes[name] = int(value)
    if sizes["per_sample_group"] < 1 or sizes["per_layer_group"] < 1:
        raise ValueError(f"every sample group and layer group needs at least one feature: {sizes}")
    return sizes


def observation_size(sizes: Mapping[str, int], spec: AllocationSpec) -> int:
    """Length of the flat observation: ``n_g + K * n_s + G * n_l``."""
    return (
        sizes["global"]
        + spec.sample_groups * sizes["per_sample_group"]
        + spec.layer_groups * sizes["per_layer_group"]
    )


class MlpActor(nn.Module):
    """SB3's ``MlpPolicy`` actor: ``mlp_extractor.policy_net`` then ``action_net``.

    Outputs the mean of the Gaussian action distribution (before clipping).
    """

    def __init__(
        self,
        input_size: int,
        hidden_sizes: Sequence[int],
        output_size: int,
        activation: str = "tanh",
    ) -> None:
        super().__init__()
        self.activation_name = activation
        self.activation = _activation(activation)
        sizes = [int(input_size), *(int(h) for h in hidden_sizes)]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
        self.output = nn.Linear(sizes[-1], int(output_size))

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        x = observation
        for layer in self.hidden:
            x = self.activation(layer(x))
        return self.output(x)


class AttentionActor(nn.Module):
    """The attention actor of DESIGN.md 5a: every group scored by weights shared across groups.

    The flat observation ``[global | K x per-sample-group | G x per-layer-group]``
    is split into groups. Each sample group's features go through one shared
    encoder, each layer group's through another; a context vector is computed
    from the global features and the mean of each group encoding (so every score
    can see the whole job). Each sample group is then scored from its own
    encoding plus the context by one shared head, each layer group likewise, and
    a global head on the context gives keep fraction and steps. The output is in
    action order ``[K share logits | keep | G gate logits | steps]``; the softmax
    over shares and the gates' mapping are done by
    :meth:`AllocationSpec.to_allocation`.

    No weight depends on K or G: the same weights run with any number of groups
    (set ``sample_groups`` / ``layer_groups``), and permuting the groups of the
    observation permutes the outputs the same way.

    Args:
        global_size, sample_group_size, layer_group_size: the layout's feature counts.
        sample_groups, layer_groups: K and G of the observations it will read.
        hidden_size: width of the encodings, the context and the heads' hidden layer.
        activation: a name from :data:`ACTIVATIONS`.
    """

    def __init__(
        self,
        global_size: int,
        sample_group_size: int,
        layer_group_size: int,
        sample_groups: int,
        layer_groups: int,
        hidden_size: int = 64,
        activation: str = "tanh",
    ) -> None:
        super().__init__()
        h = int(hidden_size)
        if h < 1:
            raise ValueError(f"hidden_size must be >= 1, got {hidden_size!r}")
        self.global_size = int(global_size)
        self.sample_group_size = int(sample_group_size)
        self.layer_group_size = int(layer_group_size)
        self.sample_groups = int(sample_groups)
        self.layer_groups = int(layer_groups)
        self.hidden_size = h
        self.activation_name = activation
        self.activation = _activation(activation)
        self.sample_encoder = nn.Linear(self.sample_group_size, h)
        self.layer_encoder = nn.Linear(self.layer_group_size, h)
        self.context = nn.Linear(self.global_size + 2 * h, h)
        self.sample_hidden = nn.Linear(2 * h, h)
        self.sample_score = nn.Linear(h, 1)
        self.layer_hidden = nn.Linear(2 * h, h)
        self.layer_score = nn.Linear(h, 1)
        self.global_hidden = nn.Linear(h, h)
        self.global_output = nn.Linear(h, 2)  # keep fraction, steps

    @property
    def input_size(self) -> int:
        return (
            self.global_size
            + self.sample_groups * self.sample_group_size
            + self.layer_groups * self.layer_group_size
        )

    def output_layers(self) -> tuple[nn.Linear, ...]:
        """The layers that emit action means (SB3 initialises them with a small gain)."""
        return (self.sample_score, self.layer_score, self.global_output)

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        if observation.shape[-1] != self.input_size:
            raise ValueError(
                f"observation has {observation.shape[-1]} features, the attention actor expects "
                f"{self.input_size} ({self.global_size} global + {self.sample_groups} x "
                f"{self.sample_group_size} per sample group + {self.layer_groups} x "
                f"{self.layer_group_size} per layer group)"
            )
        act = self.activation
        batch = observation.shape[:-1]
        k, g = self.sample_groups, self.layer_groups
        s0 = self.global_size
        l0 = s0 + k * self.sample_group_size
        global_features = observation[..., :s0]
        samples = observation[..., s0:l0].reshape(*batch, k, self.sample_group_size)
        layers = observation[..., l0:].reshape(*batch, g, self.layer_group_size)

        sample_code = act(self.sample_encoder(samples))  # (..., K, h)
        layer_code = act(self.layer_encoder(layers))  # (..., G, h)
        context = act(
            self.context(
                torch.cat([global_features, sample_code.mean(-2), layer_code.mean(-2)], dim=-1)
            )
        )  # (..., h)

        def score(code: torch.Tensor, hidden: nn.Linear, out: nn.Linear) -> torch.Tensor:
            ctx = context.unsqueeze(-2).expand(*code.shape[:-1], self.hidden_size)
            return out(act(hidden(torch.cat([code, ctx], dim=-1)))).squeeze(-1)

        share_logits = score(sample_code, self.sample_hidden, self.sample_score)  # (..., K)
        gate_logits = score(layer_code, self.layer_hidden, self.layer_score)  # (..., G)
        keep_steps = self.global_output(act(self.global_hidden(context)))  # (..., 2)
        return torch.cat(
            [share_logits, keep_steps[..., :1], gate_logits, keep_steps[..., 1:]], dim=-1
        )


def standardize(
    observation: np.ndarray, mean: np.ndarray, var: np.ndarray, epsilon: float, clip_obs: float
) -> np.ndarray:
    """VecNormalize's clipped standardisation, computed in float64 and returned as float32."""
    normalized = (observation - mean) / np.sqrt(var + epsilon)
    return np.clip(normalized, -clip_obs, clip_obs).astype(np.float32)


def build_actor(
    kind: str, spec: AllocationSpec, sizes: Mapping[str, int], network: Mapping[str, Any]
) -> nn.Module:
    """Build an untrained actor of ``kind`` from policy.json's ``network`` section.

    Its initial weights are placeholders for the caller to load over, drawn
    under a forked generator: building one leaves torch's global random
    stream as it was (PPO samples its actions from it during training, where
    every checkpoint's export builds an actor to check it).
    """
    with torch.random.fork_rng(devices=[]):
        return _build_actor(kind, spec, sizes, network)


def _build_actor(
    kind: str, spec: AllocationSpec, sizes: Mapping[str, int], network: Mapping[str, Any]
) -> nn.Module:
    activation = network.get("activation")
    if not isinstance(activation, str):
        raise ValueError(f"network.activation must be a string, got {activation!r}")
    if kind == "mlp":
        hidden = network.get("hidden_sizes")
        if not isinstance(hidden, list) or not all(
            isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in hidden
        ):
            raise ValueError(
                f"network.hidden_sizes must be a list of integers >= 1, got {hidden!r}"
            )
        return MlpActor(observation_size(sizes, spec), hidden, spec.action_size, activation)
    if kind == "attention":
        hidden_size = network.get("hidden_size")
        if not isinstance(hidden_size, int) or isinstance(hidden_size, bool) or hidden_size < 1:
            raise ValueError(f"network.hidden_size must be an integer >= 1, got {hidden_size!r}")
        return AttentionActor(
            sizes["global"],
            sizes["per_sample_group"],
            sizes["per_layer_group"],
            spec.sample_groups,
            spec.layer_groups,
            hidden_size=hidden_size,
            activation=activation,
        )
    raise ValueError(f"unknown policy kind {kind!r}; known kinds: {list(POLICY_KINDS)}")


def use_policy_spec(job: Any, spec: AllocationSpec, selection_gate: float | None = None) -> bool:
    """Make ``job`` run as a policy with ``spec`` runs it: the spec and every rule it carries.

    Calls ``job.use_spec(spec)`` and sets ``job.selection_gate``,
    ``job.stop_before_budget``, ``job.share_prior``, ``job.token_dropping``,
    ``job.freeze_cnn_first_group``, ``job.layer_lever`` and ``job.gate_decision`` from ``spec`` (and
    ``selection_gate``), each one the job has. Returns ``False``, setting
    nothing, when the job has no ``use_spec`` method.

    The one place that turns a spec into a job's rules: the training env, an
    applied :class:`AllocatorPolicy` and training's evaluations of the live
    agent all call it. Trap: ``job.use_spec`` alone leaves the rules as they
    were, so a policy trained with ``layer_lever: cnn-first-group`` then has
    its later gates act on every model (BENCHMARKS.md section 5,
    thirty-fifth round: the evaluation of the live agent ran so until it used this).
    """
    use_spec = getattr(job, "use_spec", None)
    if not callable(use_spec):
        return False
    use_spec(spec)
    rules = {
        "selection_gate": selection_gate,
        "stop_before_budget": spec.stop_before_budget,
        "share_prior": spec.share_prior,
        "token_dropping": spec.token_dropping,
        "freeze_cnn_first_group": spec.freeze_cnn_first_group,
        "layer_lever": spec.layer_lever,
        "gate_decision": spec.gate_decision,
    }
    for name, value in rules.items():
        if hasattr(job, name):
            setattr(job, name, value)
    return True


class AllocatorPolicy:
    """A trained allocator policy, loaded from a policy directory; a controller for ``run_job``.

    Load it with :meth:`load`; then ``act(observation)`` gives the deterministic
    :class:`Allocation` for one observation (the mean of the trained Gaussian,
    clipped to ``[-1, 1]`` and mapped by the policy's :class:`AllocationSpec`).

    Attributes:
        spec: the :class:`AllocationSpec` the policy was trained with.
        kind: ``"mlp"`` or ``"attention"``.
        observation_size: length of the observations its network reads.
        job_observation_size: length of the observation a job of this version
            gives it: ``observation_size``, or more for a policy trained before
            a feature was added (it reads its own by name, see ``layout``).
        layout: the :class:`~allocator.stats.ObservationLayout` of the features
            it reads (``None`` for a file without names that fits no job).
        metadata: the parsed ``policy.json`` (free-form extras under ``"extra"``).
        name: ``"policy:<directory name>"``.
        stop_veto: the :class:`~allocator.stop_veto.StopVeto` policy.json carries, or ``None``.

    .. warning:: The observation must come from a job with the **same spec** as
       the policy (same K, G and max steps): the layout of the observation, and
       the meaning of each action entry, depend on it. ``reset(job)`` makes the
       job adopt the policy's spec; call it (``run_job`` does) before the first
       ``act``. Pass the job's **raw** observation: the policy applies the
       VecNormalize statistics it was trained with itself.
    """

    def __init__(
        self,
        actor: nn.Module,
        spec: AllocationSpec,
        kind: str,
        observation_mean: np.ndarray | None,
        observation_var: np.ndarray | None,
        clip_obs: float,
        epsilon: float,
        metadata: dict,
        name: str = "policy",
        ignored_positions: Sequence[int] = (),
        layout: Any = None,
    ) -> None:
        self.actor = actor.eval()
        self.spec = spec
        self.kind = kind
        self.observation_size = int(metadata["observation"]["size"])
        self._mean = observation_mean
        self._var = observation_var
        self._clip_obs = float(clip_obs)
        self._epsilon = float(epsilon)
        self.metadata = metadata
        self.name = name
        self.stop_veto = stop_veto_of(metadata, name)
        self._ignored_positions = list(ignored_positions)
        self.selection_gate = check_selection_gate(metadata.get("selection_gate"))
        from allocator.stats import ObservationLayout

        today = ObservationLayout(spec)
        if layout is None and self.observation_size == today.size:
            layout = today
        #: the features the policy reads, by name (policy.json's ``observation.features``);
        #: None for a file without names whose sizes are not today's (no job can feed it)
        self.layout = layout
        # A policy trained before a feature was added reads its own features out of today's
        # observation, by name; None when it reads a job's observation as it is.
        self._input_positions = None if layout is None or layout.is_current else layout.positions_in(today)
        #: the length of the observation a job of this version gives the policy
        self.job_observation_size = today.size if self._input_positions is not None else self.observation_size

    def with_token_dropping(self, dropping) -> AllocatorPolicy:
        """This policy with its jobs' token dropping set to ``dropping`` (``None``: off).

        A new policy sharing this one's network and statistics; only its spec's
        ``token_dropping`` differs (see :class:`~allocator.AllocationSpec`). The
        rule needs no retraining: the policy acts on the job as before, and on a
        job whose model has tokens the early steps see part of them. Its
        ``metadata`` carries the new spec, so :meth:`save` writes a policy
        directory that loads with the setting.
        """
        return self._with_spec(token_dropping=TokenDropping.from_value(dropping))

    def with_cnn_first_group_frozen(self, frozen: bool = True) -> AllocatorPolicy:
        """This policy with its convolutional jobs' first layer group frozen (``False``: not).

        A new policy sharing this one's network and statistics; only its spec's
        ``freeze_cnn_first_group`` differs (see :class:`~allocator.AllocationSpec`).
        The rule needs no retraining: on a job whose model has a convolution the
        first gate of every allocation becomes 0. Its ``metadata`` carries the
        new spec, so :meth:`save` writes a policy directory that loads with it.
        """
        if not isinstance(frozen, (bool, np.bool_)):
            raise ValueError(f"frozen must be true or false, got {frozen!r}")
        return self._with_spec(freeze_cnn_first_group=bool(frozen))

    def with_stop_veto(self, veto: StopVeto | None) -> AllocatorPolicy:
        """This policy with its stops refused where ``veto`` says continuing pays (``None``: no veto).

        A new policy sharing this one's network and statistics. Its ``metadata``
        carries the veto, so :meth:`save` writes a policy directory that loads
        with it. See :meth:`act` for what a refused stop runs.
        """
        if veto is not None and not isinstance(veto, StopVeto):
            raise ValueError(f"veto must be a StopVeto or None, got {type(veto).__name__}")
        policy = copy.copy(self)
        policy.stop_veto = veto
        policy.metadata = {key: value for key, value in self.metadata.items() if key != STOP_VETO_KEY}
        if veto is not None:
            policy.metadata[STOP_VETO_KEY] = veto.to_dict()
        return policy

    def _with_spec(self, **changes) -> AllocatorPolicy:
        """A copy sharing the network, with the spec's rules ``changes`` (``token_dropping``, ...) replaced."""
        policy = copy.copy(self)
        policy.spec = dataclasses.replace(self.spec, **changes)
        policy.metadata = {**self.metadata, "spec": policy.spec.to_dict()}
        return policy

    @property
    def normalizes_observation(self) -> bool:
        """True when observations are normalised with the shipped VecNormalize statistics."""
        return self._mean is not None

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, path: str | os.PathLike) -> AllocatorPolicy:
        """Load a policy from a policy directory (or its policy.json / policy.safetensors).

        Reads only JSON and safetensors: no pickle, no code execution, no
        stable-baselines3 or gymnasium. A damaged or mismatched policy (missing
        file, invalid JSON, unknown format version, missing, extra or misshapen
        tensors, a spec that does not match the observation size) raises
        ``ValueError`` saying what is wrong.
        """
        directory = Path(path)
        if directory.name in (CONFIG_FILE, WEIGHTS_FILE) and not directory.is_dir():
            directory = directory.parent
        if not directory.is_dir():
            raise ValueError(f"policy directory {str(directory)!r} does not exist")
        config_path = directory / CONFIG_FILE
        weights_path = directory / WEIGHTS_FILE
        for required in (config_path, weights_path):
            if not required.is_file():
                raise ValueError(
                    f"{str(directory)!r} is not a policy directory: {required.name} is missing "
                    f"(a policy directory holds {CONFIG_FILE} and {WEIGHTS_FILE}, "
                    "written by agents.export.export_policy)"
                )
        try:
            metadata = json.loads(config_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{config_path} is not valid JSON: {error}") from None
        if not isinstance(metadata, dict):
            raise ValueError(
                f"{config_path} must hold a JSON object, got {type(metadata).__name__}"
            )
        if metadata.get("kind") == ENSEMBLE_KIND:
            from allocator.ensemble import PolicyEnsemble  # an ensemble is a policy of policies

            return PolicyEnsemble.from_policy_file(directory, metadata)
        return cls.from_parts(
            metadata,
            _read_safetensors(weights_path),
            where=str(config_path),
            weights=str(weights_path),
            name=f"policy:{directory.resolve().name}",
        )

    @classmethod
    def from_parts(
        cls,
        metadata: dict,
        tensors: Mapping[str, torch.Tensor],
        where: str,
        weights: str,
        name: str,
    ) -> AllocatorPolicy:
        """Build a policy from a parsed policy.json and its tensors, validating both.

        :meth:`load` reads them from a directory; an ensemble's loader passes
        each member's part of its files. ``where`` and ``weights`` name the
        sources in error messages.
        """
        spec, kind, sizes, actor, normalization = _parse_config(metadata, where)
        try:
            check_selection_gate(metadata.get("selection_gate"))
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
        layout = _policy_layout(metadata["observation"], spec, sizes, where)
        ignored_positions = _ignored_positions(metadata["observation"], layout, spec, where)

        expected = {f"actor.{key}": value for key, value in actor.state_dict().items()}
        size = observation_size(sizes, spec)
        if normalization["observation"]:
            expected[OBSERVATION_MEAN] = torch.empty(size, dtype=torch.float64)
            expected[OBSERVATION_VAR] = torch.empty(size, dtype=torch.float64)
        missing = sorted(set(expected) - set(tensors))
        extra = sorted(set(tensors) - set(expected))
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing tensor(s) {missing}")
            if extra:
                parts.append(f"unexpected tensor(s) {extra}")
            raise ValueError(
                f"{weights} does not match {where} (kind {kind!r}, "
                f"normalization.observation={normalization['observation']}): " + "; ".join(parts)
            )
        for key, reference in expected.items():
            tensor = tensors[key]
            if tuple(tensor.shape) != tuple(reference.shape):
                raise ValueError(
                    f"tensor {key!r} in {weights} has shape {tuple(tensor.shape)}, "
                    f"expected {tuple(reference.shape)} for kind {kind!r} with spec "
                    f"K={spec.sample_groups}, G={spec.layer_groups} and an observation of "
                    f"{size} features: the weights do not match policy.json's spec, "
                    "observation layout or network"
                )
            if not tensor.is_floating_point():
                raise ValueError(
                    f"tensor {key!r} in {weights} has dtype {tensor.dtype}, expected a float"
                )
            if not bool(torch.isfinite(tensor).all()):
                raise ValueError(f"tensor {key!r} in {weights} holds NaN or inf values")
        actor.load_state_dict(
            {
                key[len("actor.") :]: tensors[key].to(torch.float32)
                for key in expected
                if key.startswith("actor.")
            }
        )
        mean = var = None
        if normalization["observation"]:
            mean = tensors[OBSERVATION_MEAN].to(torch.float64).numpy()
            var = tensors[OBSERVATION_VAR].to(torch.float64).numpy()
            if np.any(var < 0):
                raise ValueError(f"tensor {OBSERVATION_VAR!r} in {weights} has negative variances")
        return cls(
            actor,
            spec,
            kind,
            mean,
            var,
            normalization.get("clip_obs") or 0.0,
            normalization.get("epsilon") or 0.0,
            metadata,
            name=name,
            ignored_positions=ignored_positions,
            layout=layout,
        )

    def tensors(self) -> dict[str, torch.Tensor]:
        """The policy's weights and normalisation statistics, named as in policy.safetensors."""
        tensors = {f"actor.{key}": value.detach().clone() for key, value in self.actor.state_dict().items()}
        if self._mean is not None:
            tensors[OBSERVATION_MEAN] = torch.from_numpy(np.array(self._mean, dtype=np.float64))
            tensors[OBSERVATION_VAR] = torch.from_numpy(np.array(self._var, dtype=np.float64))
        return tensors

    def save(self, path: str | os.PathLike) -> Path:
        """Write the policy as a policy directory (policy.json + policy.safetensors); returns it.

        Refuses a directory that already holds a policy, so that writing a
        derived policy (an ensemble, a distilled actor) never overwrites a
        trained run. Training itself exports with :func:`agents.export.export_policy`.
        """
        directory = Path(path)
        if (directory / CONFIG_FILE).exists() or (directory / WEIGHTS_FILE).exists():
            raise FileExistsError(f"{str(directory)!r} already holds a policy; choose a new --out")
        directory.mkdir(parents=True, exist_ok=True)
        save_file(
            {key: tensor.contiguous() for key, tensor in self.tensors().items()},
            str(directory / WEIGHTS_FILE),
            metadata={"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION)},
        )
        text = json.dumps(self.metadata, indent=2, allow_nan=False) + "\n"
        (directory / CONFIG_FILE).write_text(text, encoding="utf-8")
        return directory

    # ------------------------------------------------------------------ acting

    def reset(self, job: Any) -> None:
        """Prepare ``job`` for this policy: make it use the policy's spec and its rules.

        A job with a ``use_spec`` method gets :func:`use_policy_spec` with the
        policy's spec and selection gate (``None`` for a policy trained without
        the gate); otherwise a job whose ``spec`` differs from the policy's
        raises ``ValueError``.
        """
        if use_policy_spec(job, self.spec, self.selection_gate):
            self._check_observation_size(job)
            return
        job_spec = getattr(job, "spec", None)
        if job_spec is not None and job_spec != self.spec:
            raise ValueError(
                f"the job's spec {job_spec} differs from the policy's {self.spec}, and the job "
                "cannot adopt another (it has no use_spec method)"
            )

    def _check_observation_size(self, job: Any) -> None:
        """A policy trained on another version of the observation cannot read this job's."""
        size = getattr(job, "observation_size", None)
        if isinstance(size, int) and size not in (self.observation_size, self.job_observation_size):
            raise ValueError(_another_observation_version(self.name, self.observation_size, size))

    def normalize(self, observation: Any) -> np.ndarray:
        """The observation as the network sees it: VecNormalize's clipped standardisation.

        ``clip((obs - mean) / sqrt(var + epsilon), -clip_obs, clip_obs)`` in float64,
        then float32, exactly as ``VecNormalize.normalize_obs``. Accepts one
        observation ``(N,)`` or a batch ``(B, N)``: a job's observation, or one
        already laid out as the policy's own (``self.layout``); a policy trained
        on an earlier version of the observation takes its features from a
        job's by name.
        """
        obs = np.asarray(
            observation.detach().cpu() if isinstance(observation, torch.Tensor) else observation
        )
        if self._input_positions is not None and obs.ndim in (1, 2) and obs.shape[-1] == self.job_observation_size:
            obs = obs[..., self._input_positions]
        if obs.ndim not in (1, 2) or obs.shape[-1] != self.observation_size:
            raise ValueError(
                f"observation has shape {obs.shape}, the policy expects ({self.observation_size},) "
                f"or (batch, {self.observation_size}); it must come from a job with the policy's "
                f"spec (K={self.spec.sample_groups}, G={self.spec.layer_groups})"
            )
        if not np.all(np.isfinite(obs)):
            raise ValueError("observation holds NaN or inf values")
        if self._ignored_positions:  # the env hid them from the agent in training
            obs = obs.copy()
            obs[..., self._ignored_positions] = 0.0
        if self._mean is None:
            return obs.astype(np.float32)
        return standardize(obs, self._mean, self._var, self._epsilon, self._clip_obs)

    @torch.no_grad()
    def action(self, observation: Any) -> np.ndarray:
        """The deterministic action for a raw observation: the Gaussian mean clipped to [-1, 1].

        Returns float32 of shape ``(action_size,)``, or ``(B, action_size)`` for
        a batch. Equals SB3's ``model.predict(vec_normalize.normalize_obs(obs),
        deterministic=True)``.
        """
        normalized = torch.from_numpy(self.normalize(observation))
        mean = self.actor(normalized).numpy()
        return np.clip(mean, -1.0, 1.0).astype(np.float32)

    def act(self, observation: Any) -> Allocation:
        """The allocation for the next interval, given the job's raw observation.

        With a ``stop_veto``, a stop the veto refuses becomes the allocation the
        policy asked for (its shares, keep fraction and gates) run for the
        spec's full ``max_steps``: the veto was fitted on intervals of that
        length, and the policy's last interval before a stop is often short.
        """
        obs = np.asarray(
            observation.detach().cpu() if isinstance(observation, torch.Tensor) else observation
        )
        if obs.ndim != 1:
            raise ValueError(
                f"act takes one observation of shape ({self.observation_size},), got {obs.shape}"
            )
        allocation = self.spec.to_allocation(self.action(obs))
        #: whether the last ``act`` refused a stop (``run_job`` records it with the interval)
        self.stop_vetoed = False
        if allocation.steps == 0 and self.stop_veto is not None:
            if obs.shape[0] != self.job_observation_size:
                raise ValueError(
                    f"{self.name} carries a stop veto, which reads a job's observation of this version "
                    f"({self.job_observation_size} features), got {obs.shape[0]}"
                )
            if self.stop_veto.continue_pays(obs):
                allocation = dataclasses.replace(allocation, steps=self.spec.max_steps)
                self.stop_vetoed = True
        return allocation

    def __repr__(self) -> str:
        return (
            f"AllocatorPolicy(name={self.name!r}, kind={self.kind!r}, spec={self.spec}, "
            f"observation_size={self.observation_size})"
        )


def stop_veto_of(metadata: dict, name: str) -> StopVeto | None:
    """The veto policy.json's ``metadata`` carries, or ``None``; ``ValueError`` naming ``name`` for a bad one."""
    if STOP_VETO_KEY not in metadata:
        return None
    try:
        return StopVeto.from_dict(metadata[STOP_VETO_KEY])
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from None


def _another_observation_version(who: str, reads: Any, gives: int) -> str:
    """The refusal of a policy whose observation size is not this version's (at load or at reset)."""
    return (
        f"{who} reads {reads} observation features, but a job gives {gives} under the policy's spec "
        "(see allocator/stats.py): the policy was trained with another version of the observation; "
        "retrain it"
    )


def _policy_layout(observation: dict, spec: AllocationSpec, sizes: dict[str, int], where: str) -> Any:
    """The policy's :class:`~allocator.stats.ObservationLayout`, from the feature names in policy.json.

    A file without names is read as today's layout when the sizes agree;
    otherwise its layout is unknown (``None``) and no job's observation fits it.
    """
    from allocator.stats import ObservationLayout

    names = observation.get("features")
    if names is None:
        layout = ObservationLayout(spec)
        return layout if observation_layout_sizes(layout) == sizes else None
    if not isinstance(names, dict):
        raise ValueError(f"{where}: 'observation.features' must be an object, got {names!r}")
    try:
        layout = ObservationLayout.from_names(spec, names)
    except ValueError as error:
        raise ValueError(
            f"{where}: {error}: the policy was trained with another version of the observation; retrain it"
        ) from None
    if observation_layout_sizes(layout) != sizes:
        raise ValueError(
            f"{where}: observation.features lists {observation_layout_sizes(layout)} features, "
            f"the sizes say {sizes}"
        )
    return layout


def _ignored_positions(observation: dict, layout: Any, spec: AllocationSpec, where: str) -> list[int]:
    """Positions, in the policy's own layout, of the features named in ``observation.ignored_features``."""
    names = observation.get("ignored_features", [])
    if not names:
        return []
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise ValueError(f"{where}: 'observation.ignored_features' must be a list of names, got {names!r}")
    if layout is None:
        from allocator.stats import ObservationLayout

        today = ObservationLayout(spec).size
        raise ValueError(_another_observation_version(where, observation.get("size"), today))
    try:
        return layout.positions(names)
    except ValueError as error:
        raise ValueError(f"{where}: observation.ignored_features: {error}") from None


def _parse_config(
    metadata: dict, where: str
) -> tuple[AllocationSpec, str, dict[str, int], nn.Module, dict]:
    """Validate policy.json (``where`` names it in errors) and build the (untrained) actor it describes."""
    if metadata.get("format") != FORMAT_NAME:
        raise ValueError(
            f"{where}: 'format' must be {FORMAT_NAME!r}, got {metadata.get('format')!r}"
        )
    version = metadata.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{where}: unknown format_version {version!r}; this version of compute-allocator "
            f"reads format_version {FORMAT_VERSION}"
        )
    for key in ("kind", "spec", "observation", "network", "normalization"):
        if key not in metadata:
            raise ValueError(f"{where}: missing key {key!r}")
    kind = metadata["kind"]
    if kind not in POLICY_KINDS:
        raise ValueError(
            f"{where}: unknown policy kind {kind!r}; known kinds: {list(POLICY_KINDS)}"
        )
    if not isinstance(metadata["spec"], dict):
        raise ValueError(f"{where}: 'spec' must be an object, got {metadata['spec']!r}")
    try:
        spec = AllocationSpec.from_dict(metadata["spec"])
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: invalid spec {metadata['spec']!r}: {error}") from None
    observation = metadata["observation"]
    if not isinstance(observation, dict):
        raise ValueError(f"{where}: 'observation' must be an object, got {observation!r}")
    try:
        sizes = observation_layout_sizes(observation)
    except ValueError as error:
        raise ValueError(f"{where}: invalid observation layout: {error}") from None
    size = observation.get("size")
    expected_size = observation_size(sizes, spec)
    if size != expected_size:
        raise ValueError(
            f"{where}: observation size {size!r} does not match the spec and layout: "
            f"{sizes['global']} global + K={spec.sample_groups} x {sizes['per_sample_group']} + "
            f"G={spec.layer_groups} x {sizes['per_layer_group']} = {expected_size}"
        )
    network = metadata["network"]
    if not isinstance(network, dict):
        raise ValueError(f"{where}: 'network' must be an object, got {network!r}")
    try:
        actor = build_actor(kind, spec, sizes, network)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    normalization = metadata["normalization"]
    if not isinstance(normalization, dict) or not isinstance(
        normalization.get("observation"), bool
    ):
        raise ValueError(
            f"{where}: 'normalization' must be an object with a boolean 'observation', got {normalization!r}"
        )
    for key in ("clip_obs", "epsilon") if normalization["observation"] else ():
        value = normalization.get(key)
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value < 0
        ):
            raise ValueError(f"{where}: normalization.{key} must be a number >= 0, got {value!r}")
    return spec, kind, sizes, actor, normalization


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise ValueError(f"{path} is not a readable safetensors file: {error}") from None

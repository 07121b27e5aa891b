"""Export a trained PPO agent to the safe, deployable policy format.

:func:`export_policy` writes ``policy.safetensors`` (the actor's weights and the
observation-normalisation statistics) and ``policy.json`` (how to rebuild the
actor), the format :class:`allocator.policy.AllocatorPolicy` loads without
pickle, gymnasium or stable-baselines3. The schema is documented in
:mod:`allocator.policy`.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from safetensors.torch import save_file
from stable_baselines3 import PPO
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.running_mean_std import RunningMeanStd
from stable_baselines3.common.torch_layers import FlattenExtractor
from stable_baselines3.common.vec_env import VecNormalize
from torch import nn

from agents.networks import AttentionAllocatorPolicy
from allocator.allocation import AllocationSpec, check_selection_gate
from allocator.policy import (
    CONFIG_FILE,
    FORMAT_NAME,
    FORMAT_VERSION,
    OBSERVATION_MEAN,
    OBSERVATION_VAR,
    WEIGHTS_FILE,
    activation_name,
    build_actor,
    observation_layout_sizes,
    observation_size,
)

# Largest difference tolerated between SB3's action mean and the rebuilt actor's.
_CHECK_TOLERANCE = 1e-5


def export_policy(
    model: PPO,
    vec_normalize: VecNormalize | None,
    spec: AllocationSpec,
    out_dir: str | os.PathLike,
    extra_metadata: dict | None = None,
    *,
    observation_layout: Any = None,
    ignored_features: Sequence[str] = (),
    selection_gate: float | None = None,
) -> Path:
    """Write the deployable policy (``policy.safetensors`` + ``policy.json``) to ``out_dir``.

    Only the actor is exported (features layers and action head; no critic, no
    optimizer, no log-std): the deployed policy acts deterministically with the
    Gaussian's mean. The exported actor is rebuilt and checked against SB3's
    deterministic action on random inputs before anything is written.

    Args:
        model: the trained agent, with SB3's ``MlpPolicy`` (flat observation,
            ``FlattenExtractor``) or :class:`agents.networks.AttentionAllocatorPolicy`.
        vec_normalize: the ``VecNormalize`` wrapper the agent was trained with
            (its observation statistics are shipped with the policy), or ``None``
            if observations were not normalised.
        spec: the :class:`AllocationSpec` of the training jobs.
        out_dir: the policy directory (created if needed); existing policy files
            in it are replaced atomically.
        extra_metadata: free-form JSON-serialisable data stored under ``"extra"``
            in policy.json (preset, timesteps, seed, ...).
        observation_layout: the observation layout (see
            :func:`allocator.policy.observation_layout_sizes`); by default the
            attention policy's own, else ``allocator.stats.ObservationLayout(spec)``.
        ignored_features: the observation features the agent was trained without
            (the env's ``ignored_features``); written to policy.json so that the
            policy zeroes them in a job's observation, as the env did.
        selection_gate: the env's selection gate threshold (``None``: off);
            written to policy.json so that the policy sets it on every job it runs.

    Returns:
        The policy directory.

    .. warning:: Pass the **same** ``VecNormalize`` the agent was trained with,
       after training (its statistics keep moving while it trains). Passing
       ``None`` for an agent whose env is wrapped in ``VecNormalize`` raises
       ``ValueError``: the policy would silently read unnormalised observations.
    """
    policy = model.policy
    if not isinstance(policy, ActorCriticPolicy):
        raise TypeError(f"only actor-critic policies can be exported, got {type(policy).__name__}")
    if not isinstance(spec, AllocationSpec):
        raise TypeError(f"spec must be an AllocationSpec, got {spec!r}")
    _check_action_space(model.action_space, spec)
    if policy.squash_output:
        raise ValueError("policies with squash_output=True (gSDE squashing) are not supported")
    if (
        not isinstance(model.observation_space, spaces.Box)
        or len(model.observation_space.shape) != 1
    ):
        raise ValueError(f"the observation space must be a flat Box, got {model.observation_space}")
    size = int(model.observation_space.shape[0])

    layout = _resolve_layout(policy, spec, observation_layout)
    sizes = observation_layout_sizes(layout)
    if observation_size(sizes, spec) != size:
        raise ValueError(
            f"the layout {sizes} with K={spec.sample_groups}, G={spec.layer_groups} gives "
            f"{observation_size(sizes, spec)} features, the model's observation space has {size}"
        )

    if isinstance(policy, AttentionAllocatorPolicy):
        kind, network, actor_tensors = _attention_actor(policy)
    else:
        kind, network, actor_tensors = _mlp_actor(policy)
    tensors = {
        f"actor.{name}": t.detach().cpu().to(torch.float32).contiguous()
        for name, t in actor_tensors.items()
    }
    _check_rebuilt_actor(policy, kind, spec, sizes, network, tensors)

    normalization, statistics = _normalization(model, vec_normalize, size)
    tensors.update(statistics)

    observation: dict[str, Any] = {"size": size, **sizes}
    features = _feature_names(layout, spec)
    if features is not None:
        observation["features"] = features
    if ignored_features:
        observation["ignored_features"] = [str(name) for name in ignored_features]
    config = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "spec": spec.to_dict(),
        **({} if selection_gate is None else {"selection_gate": check_selection_gate(selection_gate)}),
        "observation": observation,
        "network": network,
        "normalization": normalization,
        "versions": _versions(),
        "extra": _jsonable(extra_metadata or {}),
    }

    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    _write_atomically(
        directory / WEIGHTS_FILE,
        lambda path: save_file(
            tensors,
            str(path),
            metadata={"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION)},
        ),
    )
    text = json.dumps(config, indent=2, allow_nan=False) + "\n"
    _write_atomically(
        directory / CONFIG_FILE, lambda path: Path(path).write_text(text, encoding="utf-8")
    )
    return directory


def _check_action_space(action_space: spaces.Space, spec: AllocationSpec) -> None:
    if (
        not isinstance(action_space, spaces.Box)
        or action_space.shape != (spec.action_size,)
        or not np.all(action_space.low == -1.0)
        or not np.all(action_space.high == 1.0)
    ):
        raise ValueError(
            f"the action space must be Box(-1, 1, ({spec.action_size},)) for spec "
            f"K={spec.sample_groups}, G={spec.layer_groups}, got {action_space}"
        )


def _resolve_layout(policy: ActorCriticPolicy, spec: AllocationSpec, layout: Any) -> Any:
    if isinstance(policy, AttentionAllocatorPolicy):
        if (policy.spec.sample_groups, policy.spec.layer_groups) != (
            spec.sample_groups,
            spec.layer_groups,
        ):
            raise ValueError(f"the attention policy was built for {policy.spec}, not {spec}")
        if layout is None:
            return policy.layout_sizes
        if observation_layout_sizes(layout) != policy.layout_sizes:
            raise ValueError(
                f"observation_layout {observation_layout_sizes(layout)} differs from the "
                f"attention policy's {policy.layout_sizes}"
            )
        return layout
    if layout is not None:
        return layout
    try:
        from allocator.stats import ObservationLayout
    except ImportError:
        raise ValueError(
            "cannot tell the observation layout: pass observation_layout=(n_global, "
            "n_per_sample_group, n_per_layer_group)"
        ) from None
    return ObservationLayout(spec)


def _mlp_actor(policy: ActorCriticPolicy) -> tuple[str, dict, dict[str, torch.Tensor]]:
    """SB3 MlpPolicy: ``mlp_extractor.policy_net`` (Linear, activation)* then ``action_net``."""
    if not isinstance(policy.pi_features_extractor, FlattenExtractor):
        raise ValueError(
            f"only the default FlattenExtractor is supported for MlpPolicy, got "
            f"{type(policy.pi_features_extractor).__name__}"
        )
    activation = activation_name(policy.activation_fn)
    modules = list(policy.mlp_extractor.policy_net)
    tensors: dict[str, torch.Tensor] = {}
    hidden_sizes: list[int] = []
    if len(modules) % 2:
        raise ValueError(
            f"unexpected mlp_extractor.policy_net layout: {policy.mlp_extractor.policy_net}"
        )
    for i in range(0, len(modules), 2):
        linear, act = modules[i], modules[i + 1]
        if not isinstance(linear, nn.Linear) or type(act) is not policy.activation_fn:
            raise ValueError(
                f"unexpected mlp_extractor.policy_net layout: {policy.mlp_extractor.policy_net}"
            )
        index = len(hidden_sizes)
        tensors[f"hidden.{index}.weight"] = linear.weight
        tensors[f"hidden.{index}.bias"] = linear.bias
        hidden_sizes.append(int(linear.out_features))
    if not isinstance(policy.action_net, nn.Linear):
        raise ValueError(f"expected a linear action_net, got {policy.action_net}")
    tensors["output.weight"] = policy.action_net.weight
    tensors["output.bias"] = policy.action_net.bias
    return "mlp", {"activation": activation, "hidden_sizes": hidden_sizes}, tensors


def _attention_actor(policy: AttentionAllocatorPolicy) -> tuple[str, dict, dict[str, torch.Tensor]]:
    actor = policy.actor
    network = {"activation": actor.activation_name, "hidden_size": actor.hidden_size}
    return "attention", network, dict(actor.state_dict())


@torch.no_grad()
def _check_rebuilt_actor(
    policy: ActorCriticPolicy,
    kind: str,
    spec: AllocationSpec,
    sizes: dict,
    network: dict,
    tensors: dict[str, torch.Tensor],
) -> None:
    """Rebuild the actor as AllocatorPolicy will and compare it with SB3's deterministic action."""
    actor = build_actor(kind, spec, sizes, network)  # leaves PPO's random stream alone
    actor.load_state_dict({name[len("actor.") :]: t for name, t in tensors.items()})
    generator = torch.Generator().manual_seed(0)
    obs = torch.randn(16, observation_size(sizes, spec), generator=generator) * 2.0
    was_training = policy.training
    policy.set_training_mode(False)
    try:
        expected = policy.get_distribution(obs.to(policy.device)).mode().cpu()
    finally:
        policy.set_training_mode(was_training)
    error = float((actor(obs) - expected).abs().max())
    if not error <= _CHECK_TOLERANCE:
        raise ValueError(
            f"the exported {kind} actor does not reproduce the SB3 policy (max difference "
            f"{error:.3g}); is the policy a customised {type(policy).__name__}?"
        )


def _normalization(
    model: PPO, vec_normalize: VecNormalize | None, size: int
) -> tuple[dict, dict[str, torch.Tensor]]:
    if vec_normalize is None:
        if model.get_vec_normalize_env() is not None:
            raise ValueError(
                "vec_normalize is None but the model's env is wrapped in VecNormalize: pass "
                "model.get_vec_normalize_env() so the policy normalises observations as in training"
            )
        return {"observation": False, "clip_obs": None, "epsilon": None, "reward": False}, {}
    if not isinstance(vec_normalize, VecNormalize):
        raise TypeError(f"vec_normalize must be a VecNormalize, got {type(vec_normalize).__name__}")
    normalization = {
        "observation": bool(vec_normalize.norm_obs),
        "clip_obs": float(vec_normalize.clip_obs),
        "epsilon": float(vec_normalize.epsilon),
        "reward": bool(vec_normalize.norm_reward),
    }
    if not vec_normalize.norm_obs:
        return normalization, {}
    rms = vec_normalize.obs_rms
    if not isinstance(rms, RunningMeanStd):
        raise ValueError("only flat (non-dict) observations are supported")
    mean = torch.as_tensor(np.asarray(rms.mean, dtype=np.float64)).contiguous()
    var = torch.as_tensor(np.asarray(rms.var, dtype=np.float64)).contiguous()
    if tuple(mean.shape) != (size,) or tuple(var.shape) != (size,):
        raise ValueError(
            f"VecNormalize statistics have shape {tuple(mean.shape)}, the observation has {size} features"
        )
    return normalization, {OBSERVATION_MEAN: mean.clone(), OBSERVATION_VAR: var.clone()}


def _feature_names(layout: Any, spec: AllocationSpec) -> dict | None:
    """Feature names for policy.json, from the layout or else allocator.stats when sizes agree."""
    if not callable(getattr(layout, "to_dict", None)):
        try:
            from allocator.stats import ObservationLayout
        except ImportError:
            return None
        stats_layout = ObservationLayout(spec)
        if observation_layout_sizes(stats_layout) != observation_layout_sizes(layout):
            return None
        layout = stats_layout
    to_dict = getattr(layout, "to_dict", None)
    if not callable(to_dict):
        return None
    data = to_dict()
    keys = ("global", "per_sample_group", "per_layer_group")
    if not isinstance(data, dict) or not all(isinstance(data.get(k), (list, tuple)) for k in keys):
        return None
    return {k: [str(name) for name in data[k]] for k in keys}


def _versions() -> dict[str, str]:
    import stable_baselines3

    try:
        allocator_version = version("compute-allocator")
    except PackageNotFoundError:  # not installed as a distribution: fall back to the package
        import allocator

        allocator_version = getattr(allocator, "__version__", "unknown")
    return {
        "torch": torch.__version__,
        "stable_baselines3": stable_baselines3.__version__,
        "compute_allocator": allocator_version,
    }


def _jsonable(data: Any) -> Any:
    """``data`` with numpy scalars/arrays and paths turned into JSON types; ValueError otherwise."""

    def convert(value: Any) -> Any:
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        raise TypeError(f"{type(value).__name__} is not JSON serialisable")

    try:
        return json.loads(json.dumps(data, default=convert, allow_nan=False))
    except (TypeError, ValueError) as error:
        raise ValueError(f"extra_metadata must be JSON-serialisable: {error}") from None


def _write_atomically(path: Path, write: Any) -> None:
    """Write via a temporary file in the same directory, then rename over ``path``."""
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise

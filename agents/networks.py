"""The attention actor-critic (DESIGN.md 5a) as a stable-baselines3 policy.

:class:`AttentionAllocatorPolicy` is an ``ActorCriticPolicy`` whose actor is
:class:`allocator.policy.AttentionActor`: each sample group is scored from its
own features plus a global context by weights shared across groups, each layer
group likewise, and a global head gives keep fraction and steps. The critic is
a plain MLP over the flat observation. Use it like any SB3 policy::

    from allocator.stats import ObservationLayout
    model = PPO(AttentionAllocatorPolicy, env,
                policy_kwargs=dict(layout=ObservationLayout(spec)))

The actor module is the one :class:`allocator.policy.AllocatorPolicy` rebuilds
from the exported weights, so training and deployment run the same code.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import torch
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy
from torch import nn

from allocator.allocation import AllocationSpec
from allocator.policy import (
    AttentionActor,
    activation_name,
    observation_layout_sizes,
    observation_size,
)

DEFAULT_CRITIC_ARCH = (64, 64)


class AttentionActorCritic(nn.Module):
    """Stands in for SB3's ``MlpExtractor``: the attention actor and an MLP critic.

    ``forward_actor`` returns the action means directly (``latent_dim_pi`` is the
    action size); the policy replaces SB3's linear ``action_net`` by the identity
    so that the per-group weight sharing is not undone by a dense output layer.
    """

    def __init__(
        self,
        observation_size: int,
        actor: AttentionActor,
        critic_sizes: tuple[int, ...],
        activation_fn: type[nn.Module],
    ) -> None:
        super().__init__()
        self.actor = actor
        layers: list[nn.Module] = []
        last = observation_size
        for width in critic_sizes:
            layers += [nn.Linear(last, width), activation_fn()]
            last = width
        self.critic = nn.Sequential(*layers)
        self.latent_dim_pi = actor.sample_groups + 1 + actor.layer_groups + 1
        self.latent_dim_vf = last

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward_actor(features), self.forward_critic(features)

    def forward_actor(self, features: torch.Tensor) -> torch.Tensor:
        return self.actor(features)

    def forward_critic(self, features: torch.Tensor) -> torch.Tensor:
        return self.critic(features)


class AttentionAllocatorPolicy(ActorCriticPolicy):
    """PPO policy with the attention actor: per-group scores from weights shared across groups.

    Args (beyond ``ActorCriticPolicy``'s, passed through ``policy_kwargs``):
        layout: the observation layout -- an ``allocator.stats.ObservationLayout``
            (which also carries the spec), a mapping ``{"global": n_g,
            "per_sample_group": n_s, "per_layer_group": n_l}``, or a tuple
            ``(n_g, n_s, n_l)``.
        spec: the ``AllocationSpec`` (or its dict) giving K and G; optional when
            ``layout`` has a ``spec`` attribute.
        hidden_size: width of the actor's group encodings, context and heads.
        net_arch: the critic's hidden layers (a list, or a dict whose ``"vf"``
            entry is used; ``"pi"`` is ignored, the actor's size is ``hidden_size``).
        activation_fn: shared by actor and critic; one of
            ``allocator.policy.ACTIVATIONS`` so that the policy can be exported.

    .. warning:: The observation space must be the flat ``[global | K x
       per-sample-group | G x per-layer-group]`` vector of exactly this layout and
       spec, and the action space the spec's ``K + 1 + G + 1`` Box; both are
       checked here. With ``ortho_init`` (the default) the output layers start
       with gain 0.01, so a fresh policy's mean action is about zero: uniform
       allocation.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Any,
        layout: Any = None,
        spec: AllocationSpec | Mapping[str, Any] | None = None,
        hidden_size: int = 64,
        **kwargs: Any,
    ) -> None:
        if layout is None:
            raise ValueError(
                "AttentionAllocatorPolicy needs the observation layout: "
                "policy_kwargs=dict(layout=allocator.stats.ObservationLayout(spec))"
            )
        if spec is None:
            spec = getattr(layout, "spec", None)
        if spec is None:
            raise ValueError(
                "AttentionAllocatorPolicy needs the AllocationSpec: pass policy_kwargs "
                "spec=... or a layout that carries one (allocator.stats.ObservationLayout)"
            )
        if isinstance(spec, Mapping):
            spec = AllocationSpec.from_dict(dict(spec))
        sizes = observation_layout_sizes(layout)
        size = observation_size(sizes, spec)
        if not isinstance(observation_space, spaces.Box) or observation_space.shape != (size,):
            raise ValueError(
                f"observation space {observation_space} does not match the layout {sizes} with "
                f"K={spec.sample_groups}, G={spec.layer_groups}: expected a Box of shape ({size},)"
            )
        if not isinstance(action_space, spaces.Box) or action_space.shape != (spec.action_size,):
            raise ValueError(
                f"action space {action_space} does not match the spec: expected a Box of shape "
                f"({spec.action_size},) (K shares, keep, G gates, steps)"
            )
        activation_name(kwargs.get("activation_fn", nn.Tanh))  # fail early if not exportable
        # Read by _build_mlp_extractor, which the base constructor calls.
        self.layout_sizes = sizes
        self.spec = spec
        self.hidden_size = int(hidden_size)
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)

    def _critic_sizes(self) -> tuple[int, ...]:
        arch = self.net_arch
        if isinstance(arch, dict):
            arch = arch.get("vf", list(DEFAULT_CRITIC_ARCH))
        return tuple(int(width) for width in arch)

    def _build_mlp_extractor(self) -> None:
        actor = AttentionActor(
            self.layout_sizes["global"],
            self.layout_sizes["per_sample_group"],
            self.layout_sizes["per_layer_group"],
            self.spec.sample_groups,
            self.spec.layer_groups,
            hidden_size=self.hidden_size,
            activation=activation_name(self.activation_fn),
        )
        self.mlp_extractor = AttentionActorCritic(
            self.features_dim, actor, self._critic_sizes(), self.activation_fn
        ).to(self.device)

    def _build(self, lr_schedule: Any) -> None:
        super()._build(lr_schedule)
        # The actor already emits the action means in action order.
        self.action_net = nn.Identity()
        if self.ortho_init:
            for layer in self.mlp_extractor.actor.output_layers():
                layer.apply(partial(self.init_weights, gain=0.01))
        # Rebuild the optimizer: the replaced action_net's parameters are gone.
        self.optimizer = self.optimizer_class(
            self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs
        )

    @property
    def actor(self) -> AttentionActor:
        """The attention actor (the module that ``export_policy`` writes out)."""
        return self.mlp_extractor.actor

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            layout=dict(self.layout_sizes), spec=self.spec.to_dict(), hidden_size=self.hidden_size
        )
        return data

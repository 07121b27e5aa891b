"""The training configuration: typed sections, YAML presets, validation with clear errors.

A configuration has three sections, each a dataclass whose fields are
documented below::

    env:       the job distribution, the allocation spec and the objective
    ppo:       the PPO agent and its network
    training:  timesteps, parallel envs, seed, checkpoints and evaluation

It is resolved in this order, later ones overriding earlier ones:

1. the preset (``agents/presets/NAME.yaml``; ``quick`` unless ``--preset`` says otherwise),
2. the user's ``--config FILE`` (the same shape; any subset of keys),
3. command-line flags (``--timesteps``, ``--seed``, ``--n-envs``).

Files are read with YAML's safe loader. A repeated key, an unknown section or key, a value of
the wrong type or out of range raises ``ValueError`` naming the key and the
file, e.g. ``quick.yaml: unknown key 'ppo.learnig_rate'``. The resolved
configuration is written to the policy directory as ``config.yaml``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from allocator.allocation import (
    GATE_DECISIONS,
    GATE_MAPPINGS,
    LAYER_LEVERS,
    SHARE_PRIORS,
    STOP_BELOW,
    check_selection_gate,
)
from allocator.stats import FEATURE_NAMES
from allocator.token_dropping import TokenDropping

PRESET_DIR = Path(__file__).resolve().parent / "presets"
DEFAULT_PRESET = "quick"
POLICIES = ("mlp", "attention")
SPLITS = ("train", "heldout")
REFERENCES = ("none", "uniform")


@dataclass
class EnvConfig:
    """The environment: which jobs the agent trains on, the allocation spec, the objective."""

    split: str = "train"
    """Job distribution the agent trains on: ``train`` (``heldout`` is kept for evaluation)."""
    sample_groups: int = 4
    """K, loss-quantile groups of each job's training set (the sample-share axis)."""
    layer_groups: int = 4
    """G, contiguous layer groups of each job's model (the layer-gate axis)."""
    max_steps: int = 10
    """Optimizer steps of one interval (one env step) at uniform allocation."""
    min_keep_fraction: float = 0.1
    """Smallest share of a drawn batch that can get the backward pass."""
    min_layer_gate: float = 0.0
    """Smallest layer gate an action can ask for, in [0, 1]; 1 takes the layer lever away
    (every layer group trained at every step). The exported policy records it."""
    dead_zone: float = 0.0
    """Actions within this distance of the zero action give exactly standard training
    (``allocator.AllocationSpec``), in [0, 0.5); the exported policy records it."""
    selection_gate: float | None = None
    """Alignment threshold in [-1, 1] of the jobs' selection gate (``TrainingJob.selection_gate``):
    an interval that asks for selective backprop runs the whole batch unless the hardest third's
    gradient and the whole batch's had at least this cosine in the previous interval; null: off.
    The exported policy records it and sets it on the jobs it runs."""
    stop_before_budget: bool = False
    """Skip the interval that would end the budget (``allocator.AllocationSpec.stop_before_budget``):
    once the budget left is at most what the last interval spent, the job stops. Part of the
    spec, so the exported policy keeps it; standard training and the baselines run without it."""
    share_prior: str = "uniform"
    """``loss``: the jobs draw the action's sample shares times loss-proportional ones
    (``allocator.AllocationSpec.share_prior``), so the zero action samples as the
    ``loss-sampling`` baseline does; ``uniform``: the action's shares as they are. Part of the
    spec, so the exported policy keeps it; standard training and the baselines run without it."""
    token_dropping: list | None = None
    """``[keep, until]``: on jobs whose model has tokens (transformers), steps see ``keep`` of each
    input's tokens until ``until`` of the budget (``allocator.AllocationSpec.token_dropping``);
    null: off. Part of the spec, so the exported policy keeps it; standard training and the
    baselines run without it. The built-in train split has no transformer, so there it changes
    nothing in training; ``evaluate --token-dropping`` adds it to a trained policy."""
    freeze_cnn_first_group: bool = False
    """On jobs whose model has a convolution, keep the first layer group frozen at every interval
    (``allocator.AllocationSpec.freeze_cnn_first_group``). A rule of the exported policy only: it
    is written into the policy's spec, and ``evaluate`` and ``apply`` run it, but the training
    envs do not, so the policy learns as without it (the `default` preset's members are the
    runs trained without it). ``evaluate --freeze-cnn-first-group`` adds it to a trained policy."""
    layer_lever: str = "all"
    """``convolutional``: the action's layer gates act only on jobs whose model has a convolution
    (``allocator.AllocationSpec.layer_lever``); on every other job each layer group trains at
    every step. With ``min_layer_gate: 0`` the policy can learn to freeze layer groups of CNNs
    while the lever stays closed on the families where it cost J. ``cnn-first-group``: as
    ``convolutional`` with only the first group's gate acting (one entry decides the freeze
    that pays on the 1-D CNNs). ``all``: the gates act on
    every job. Part of the spec, and unlike the rules above the envs run it, so it changes what
    the policy learns."""
    gate_mapping: str = "linear"
    """``binary``: a layer gate entry freezes its group for the whole interval or trains it at
    every step (the linear gate rounded at 1/2, ``allocator.AllocationSpec.gate_mapping``), so the
    deployed mean action freezes exactly when most of training's draws did; ``linear``: the gate
    is the per-step chance that the group trains. Part of the spec, and the envs run it, so it
    changes what the policy learns."""
    gate_decision: str = "interval"
    """``job``: the layer gates a job runs on its first interval hold to its end
    (``allocator.AllocationSpec.gate_decision``), so a freeze is one decision per job whose effect
    on the whole run PPO credits to one draw; ``interval``: decided anew on every interval. Part of
    the spec, and the envs run it, so it changes what the policy learns."""
    s: float = 0.2
    """Objective: credit for unused budget, in [0, 1]."""
    w: float = 1.0
    """Objective: weight on the final relative validation loss, >= 0."""
    reference: str = "none"
    """``uniform``: the return is ``J_uniform - J`` (standard training's J on the same job
    and seed, run once per job and cached), removing the job from the return's variance;
    ``none``: the return is ``-J``."""
    job_pool: int = 0
    """Draw jobs from a fixed pool of this many (so reference runs are reused); 0: a fresh
    job every episode."""
    job_pool_seed: int = 0
    """Seed of the job pool (every env draws from the same pool)."""
    data_bound_share: float = 0.5
    """Share of data-bound jobs (the validation loss turns up before the budget ends) among
    the sampled training jobs; the rest are compute-bound."""
    families: list = field(default_factory=list)
    """Model families of the training jobs (``mlp``, ``resmlp``, ``cnn1d`` in the train split),
    named jobs included; empty: all of them. Leave one out (``[mlp, resmlp]``) and validate on
    it (``training.validation_families``) to measure transfer to an unseen architecture
    without touching the held-out split."""
    balance_families: bool = False
    """Draw each sampled training job's model family evenly first, then a dataset that has it
    (in the train split the 1-D CNN then makes a third of the sampled jobs rather than a
    twelfth); false: the dataset first, as every preset was trained."""
    family_weights: dict = field(default_factory=dict)
    """Relative weights of the sampled training jobs' model families, drawn first as with
    ``balance_families`` (``{cnn1d: 4}``: two thirds 1-D CNNs among the train split's three
    families); a family not named weighs 1; empty: as ``balance_families`` says. The
    validation jobs are drawn with the same weights."""
    many_epoch_share: float = 0.0
    """Share of the sampled compute-bound training jobs that run 6 to 30 epochs on a smaller
    clean set with a slower learning rate (``allocator.jobs.JobDistribution``), so that how many
    epochs a job runs no longer tells the policy whether it is data-bound; 0: as ``quick-v1`` and
    ``default`` were trained (compute-bound jobs 2 to 8 epochs, data-bound ones 10 to 80)."""
    device: str = "cpu"
    """Device of the training jobs the envs run: ``cpu``, ``auto`` (CUDA when available),
    ``cuda``, ``cuda:1``, ... The default is ``cpu``: the built-in jobs are small, so on a GPU
    they wait on kernel launches rather than arithmetic (BENCHMARKS.md, "The GPU path"), and
    CPU envs in subprocesses scale with cores. The PPO network itself always trains on the CPU."""
    ignored_features: list = field(default_factory=list)
    """Observation features the agent does not see (names from ``allocator.stats``, e.g.
    ``budget_used``, ``previous_share``): 0 in every observation. The exported policy
    records them and zeroes them in a job's observation too."""

    def distribution_options(self) -> dict[str, Any]:
        """Keyword arguments of ``allocator.jobs.JobDistribution`` (and of the env, which passes
        them on) for the configured training jobs: one place for both the envs and the
        validation jobs of ``agents.training``, so that a new option reaches both."""
        return {
            "data_bound_share": self.data_bound_share,
            "families": list(self.families) or None,
            "balance_families": self.balance_families,
            "many_epoch_share": self.many_epoch_share,
            "family_weights": dict(self.family_weights) or None,
        }

    def validate(self, where: str) -> None:
        _choice(where, "env.split", self.split, SPLITS)
        _choice(where, "env.reference", self.reference, REFERENCES)
        _choice(where, "env.share_prior", self.share_prior, SHARE_PRIORS)
        _at_least(where, "env.job_pool", self.job_pool, 0)
        _at_least(where, "env.job_pool_seed", self.job_pool_seed, 0)
        for name in ("sample_groups", "layer_groups", "max_steps"):
            _at_least(where, f"env.{name}", getattr(self, name), 1)
        _in_range(where, "env.min_keep_fraction", self.min_keep_fraction, 0.0, 1.0, low_open=True)
        _in_range(where, "env.min_layer_gate", self.min_layer_gate, 0.0, 1.0)
        _in_range(where, "env.dead_zone", self.dead_zone, 0.0, -STOP_BELOW, high_open=True)
        try:
            check_selection_gate(self.selection_gate, "env.selection_gate")
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
        try:
            TokenDropping.from_value(self.token_dropping)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{where}: env.token_dropping: {error}") from None
        if not isinstance(self.freeze_cnn_first_group, bool):
            raise ValueError(
                f"{where}: env.freeze_cnn_first_group must be true or false, got {self.freeze_cnn_first_group!r}"
            )
        _choice(where, "env.layer_lever", self.layer_lever, LAYER_LEVERS)
        _choice(where, "env.gate_mapping", self.gate_mapping, GATE_MAPPINGS)
        _choice(where, "env.gate_decision", self.gate_decision, GATE_DECISIONS)
        _in_range(where, "env.data_bound_share", self.data_bound_share, 0.0, 1.0)
        _in_range(where, "env.many_epoch_share", self.many_epoch_share, 0.0, 1.0)
        _check_families(where, "env.families", self.families, self.split)
        _check_family_weights(where, self)
        unknown = [name for name in self.ignored_features if name not in FEATURE_NAMES]
        if unknown or not all(isinstance(name, str) for name in self.ignored_features):
            raise ValueError(
                f"{where}: env.ignored_features has unknown feature(s) {unknown or self.ignored_features}; "
                f"the features are {', '.join(FEATURE_NAMES)}"
            )
        _in_range(where, "env.s", self.s, 0.0, 1.0)
        _at_least(where, "env.w", self.w, 0.0)
        _check_device(where, self.device)


def _check_families(where: str, key: str, families, split: str) -> None:
    from allocator.jobs import JobDistribution

    if not isinstance(families, list) or not all(isinstance(name, str) for name in families):
        raise ValueError(f"{where}: {key} must be a list of model family names, got {families!r}")
    if families:
        try:
            JobDistribution(split, families=families)
        except ValueError as error:
            raise ValueError(f"{where}: {key}: {error}") from None


def _check_family_weights(where: str, env: EnvConfig) -> None:
    from allocator.jobs import JobDistribution

    if not isinstance(env.family_weights, dict):
        raise ValueError(f"{where}: env.family_weights must map model family names to weights, got {env.family_weights!r}")
    if env.family_weights:
        try:
            JobDistribution(env.split, families=list(env.families) or None, family_weights=env.family_weights)
        except ValueError as error:
            raise ValueError(f"{where}: env.family_weights: {error}") from None


def _check_device(where: str, device) -> None:
    from allocator.job import _resolve_device

    if not isinstance(device, str):  # torch.device(3) would read a YAML number as cuda:3
        raise ValueError(f"{where}: env.device must be 'cpu', 'auto', 'cuda' or 'cuda:N', got {device!r}")
    try:
        _resolve_device(device)
    except ValueError as error:  # the same checks as every job's device, named as the config key
        raise ValueError(f"{where}: env.{error}") from None


@dataclass
class PPOConfig:
    """The PPO agent (stable-baselines3) and its policy network."""

    policy: str = "mlp"
    """``mlp`` (SB3's MlpPolicy on the flat observation) or ``attention`` (per-group scores)."""
    learning_rate: float = 3e-4
    """Adam learning rate, constant."""
    n_steps: int = 256
    """Env steps per env per rollout; a rollout holds ``n_steps * n_envs`` transitions."""
    batch_size: int = 64
    """Minibatch size of the PPO update."""
    n_epochs: int = 10
    """Passes over each rollout in the PPO update."""
    gamma: float = 1.0
    """Discount. Episodes are short and their undiscounted return is -J: keep it at or near 1."""
    gae_lambda: float = 0.95
    """GAE lambda of the advantage estimate."""
    ent_coef: float = 0.0
    """Entropy bonus coefficient."""
    vf_coef: float = 0.5
    """Value-loss coefficient."""
    clip_range: float = 0.2
    """PPO's policy-ratio clip range."""
    max_grad_norm: float = 0.5
    """Gradient-norm clip of the PPO update."""
    target_kl: float | None = None
    """Stop a rollout's update early when the approximate KL exceeds this (null: never)."""
    log_std_init: float = -1.0
    """Initial log standard deviation of the Gaussian policy. About -1 (std 0.37) keeps a
    fresh policy, whose mean is the zero action (standard training), from stopping at once."""
    steps_log_std_init: float | None = None
    """Initial log standard deviation of the steps entry alone (null: ``log_std_init``).
    Stopping is a big, rare decision and the sample and layer entries are many small ones:
    a lower ``log_std_init`` keeps exploration from spoiling the training jobs while this
    one keeps the policy trying to stop."""
    gates_log_std_init: float | None = None
    """Initial log standard deviation of the G layer-gate entries alone (null: ``log_std_init``).
    A gate is ``clip((1 + a) / (1 - dead_zone), 0, 1)``: freezing a group means an action entry
    near -1, about seven standard deviations from a fresh policy's zero mean at
    ``log_std_init: -2``, so PPO never tries it (twenty-ninth round). A wider gate noise lets it
    try partly and fully frozen groups; it matters only where the layer lever is open
    (``env.min_layer_gate`` < 1, see ``env.layer_lever``)."""
    gates_log_std_final: float | None = None
    """Log standard deviation the layer-gate entries narrow to, linearly over
    ``training.timesteps`` from ``gates_log_std_init`` (or ``log_std_init``); null leaves
    their std to PPO's gradient. Why: a gate is a clipped action, and at std 1 the deployed
    policy (the mean action) is not what PPO tried and rewarded: e29d's seeds kept the gate
    std at 1 all through training and asked for gates of 0.63 to 0.69 on average, while
    their means read 0.81 to 0.86 (thirtieth round). Narrowed, the two agree by the end of
    the run; in the thirty-first round (e29e) they agreed at the mean's gates, 0.83 to 0.97,
    not lower. Traps: the schedule overrides what PPO learns for these entries' std, and a
    run resumed to more timesteps follows the schedule of its new total."""
    steps_log_std_final: float | None = None
    """Log standard deviation the steps entry narrows to, linearly over ``training.timesteps``
    from ``steps_log_std_init`` (or ``log_std_init``); null leaves its std to PPO's gradient.
    Why: the steps entry stops the job below -0.5, so under noise the policy PPO trains stops
    with a rising chance while its mean sinks towards -0.5, and the deployed mean stops only
    once it crosses (forty-third round). Traps as for ``gates_log_std_final``."""
    net_arch: list = field(default_factory=lambda: [64, 64])
    """Hidden layer sizes of the actor and critic (for ``attention``: of the critic)."""
    attention_hidden_size: int = 64
    """``attention`` only: width of the actor's group encodings and heads."""
    normalize_reward: bool = True
    """Scale rewards with VecNormalize's running return statistics (observations are always normalised)."""

    def validate(self, where: str) -> None:
        _choice(where, "ppo.policy", self.policy, POLICIES)
        _in_range(where, "ppo.learning_rate", self.learning_rate, 0.0, 1.0, low_open=True)
        for name in ("n_steps", "batch_size", "n_epochs", "attention_hidden_size"):
            _at_least(where, f"ppo.{name}", getattr(self, name), 1)
        if self.n_steps < 2:
            raise ValueError(f"{where}: ppo.n_steps must be >= 2, got {self.n_steps!r}")
        _in_range(where, "ppo.gamma", self.gamma, 0.0, 1.0, low_open=True)
        _in_range(where, "ppo.gae_lambda", self.gae_lambda, 0.0, 1.0)
        _at_least(where, "ppo.ent_coef", self.ent_coef, 0.0)
        _at_least(where, "ppo.vf_coef", self.vf_coef, 0.0)
        _in_range(where, "ppo.clip_range", self.clip_range, 0.0, 1.0, low_open=True)
        _at_least(where, "ppo.max_grad_norm", self.max_grad_norm, 0.0)
        if self.target_kl is not None:
            _at_least(where, "ppo.target_kl", self.target_kl, 0.0)
        _in_range(where, "ppo.log_std_init", self.log_std_init, -10.0, 2.0)
        if self.steps_log_std_init is not None:
            _in_range(where, "ppo.steps_log_std_init", self.steps_log_std_init, -10.0, 2.0)
        if self.gates_log_std_init is not None:
            _in_range(where, "ppo.gates_log_std_init", self.gates_log_std_init, -10.0, 2.0)
        if self.gates_log_std_final is not None:
            _in_range(where, "ppo.gates_log_std_final", self.gates_log_std_final, -10.0, 2.0)
        if self.steps_log_std_final is not None:
            _in_range(where, "ppo.steps_log_std_final", self.steps_log_std_final, -10.0, 2.0)
        if not self.net_arch or not all(
            isinstance(width, int) and not isinstance(width, bool) and width >= 1 for width in self.net_arch
        ):
            raise ValueError(
                f"{where}: ppo.net_arch must be a non-empty list of layer sizes >= 1, got {self.net_arch!r}"
            )


@dataclass
class TrainingConfig:
    """How long to train, in how many envs, and when to checkpoint and evaluate."""

    timesteps: int = 20_000
    """Total env steps (intervals of training jobs) to train for, over all envs."""
    n_envs: int = 1
    """Parallel envs: SubprocVecEnv (one process each, 1 torch thread) when > 1."""
    seed: int = 0
    """Seeds PPO, the envs' job sampling and the network initialisation."""
    seeds: list = field(default_factory=list)
    """Train an ensemble: one run per seed (``seed`` is then each run's), one after the
    other, and their mean action as the policy (``compute-allocator train --seeds``; the
    ``default`` preset's recipe). Empty: one run. The command line's ``--seeds`` replaces
    it and ``--seed N`` trains the single run N instead. Costs one training per seed."""
    checkpoint_every: int = 2_000
    """Save a checkpoint (and export the policy, or validate it: ``validation_jobs``) every
    this many timesteps."""
    eval_every: int = 5_000
    """Run the held-out evaluation every this many timesteps (0: only at the end)."""
    eval_jobs: int = 4
    """Held-out jobs of each evaluation (0: no evaluation); the same jobs and seeds every time."""
    eval_seed: int = 12_345
    """Seed of the held-out evaluation jobs."""
    validation_jobs: int = 0
    """Keep the best policy rather than the last: at every checkpoint, run the policy and
    uniform on this many jobs of the training distribution (fixed jobs and seeds, drawn apart
    from the envs' jobs) and export ``policy.*`` only when the mean J difference improves.
    0: export the last policy. The held-out evaluation never chooses."""
    validation_seed: int = 1
    """Seed of the validation jobs."""
    validation_families: list = field(default_factory=list)
    """Model families of the validation jobs; empty: those of training (``env.families``).
    With a family left out of ``env.families``, ``validation/`` measures transfer to it."""
    keep_snapshots: bool = False
    """Also keep the policy exported at every checkpoint, in ``snapshots/<timesteps>/``
    (policy.json + policy.safetensors), for ``compute-allocator ensemble`` to combine.
    Only with ``validation_jobs: 0`` (each checkpoint then exports its policy)."""

    def validate(self, where: str) -> None:
        _at_least(where, "training.timesteps", self.timesteps, 1)
        _at_least(where, "training.n_envs", self.n_envs, 1)
        _at_least(where, "training.seed", self.seed, 0)
        if self.seeds and not are_ensemble_seeds(self.seeds):
            raise ValueError(
                f"{where}: training.seeds must be empty (one run) or at least 2 different "
                f"integer seeds >= 0, got {self.seeds!r}"
            )
        _at_least(where, "training.checkpoint_every", self.checkpoint_every, 1)
        _at_least(where, "training.eval_every", self.eval_every, 0)
        _at_least(where, "training.eval_jobs", self.eval_jobs, 0)
        _at_least(where, "training.eval_seed", self.eval_seed, 0)
        _at_least(where, "training.validation_jobs", self.validation_jobs, 0)
        _at_least(where, "training.validation_seed", self.validation_seed, 0)
        if not isinstance(self.keep_snapshots, bool):
            raise ValueError(f"{where}: training.keep_snapshots must be true or false, got {self.keep_snapshots!r}")
        if self.keep_snapshots and self.validation_jobs:
            raise ValueError(
                f"{where}: training.keep_snapshots needs training.validation_jobs: 0 "
                "(with validation, a checkpoint exports only a policy that improves)"
            )


@dataclass
class TrainConfig:
    """A complete training configuration: ``env``, ``ppo`` and ``training`` sections."""

    env: EnvConfig = field(default_factory=EnvConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    def validate(self, where: str = "configuration") -> TrainConfig:
        """Check every value; ``ValueError`` names the first bad key. Returns ``self``."""
        self.env.validate(where)
        self.ppo.validate(where)
        self.training.validate(where)
        _check_families(where, "training.validation_families", self.training.validation_families, self.env.split)
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def updated(self, data: Mapping[str, Any], where: str) -> TrainConfig:
        """A copy with the sections and keys of ``data`` (same shape, any subset) replaced."""
        if data is None:
            return dataclasses.replace(self)
        if not isinstance(data, Mapping):
            raise ValueError(  # noqa: TRY004 - bad user input: the CLI reports ValueError
                f"{where}: a configuration must be a mapping of sections "
                f"({', '.join(SECTIONS)}), got {type(data).__name__}"
            )
        sections = {}
        for section, values in data.items():
            if section not in SECTIONS:
                raise ValueError(
                    f"{where}: unknown section {section!r}; the sections are {', '.join(SECTIONS)}"
                )
            current = getattr(self, section)
            if values is None:
                continue
            if not isinstance(values, Mapping):
                raise ValueError(  # noqa: TRY004
                    f"{where}: section {section!r} must be a mapping of keys, got {type(values).__name__}"
                )
            changes = {}
            known = {f.name: f for f in dataclasses.fields(current)}
            for key, value in values.items():
                if key not in known:
                    raise ValueError(
                        f"{where}: unknown key '{section}.{key}'; the keys of {section} are "
                        f"{', '.join(known)}"
                    )
                changes[key] = _coerce(where, f"{section}.{key}", value, known[key], current)
            sections[section] = dataclasses.replace(current, **changes)
        return dataclasses.replace(self, **sections)


SECTIONS = tuple(f.name for f in dataclasses.fields(TrainConfig))


# ---------------------------------------------------------------------- loading


def recorded_config(policy) -> TrainConfig:
    """The training configuration a policy (an ensemble's first member) recorded in its policy.json
    (``extra.config``): the job distribution it was trained on.

    ``ValueError`` when it records none (a policy exported by hand): pass ``--config`` then.
    """
    first = list(getattr(policy, "members", [policy]))[0]
    recorded = first.metadata.get("extra", {}).get("config")
    if not isinstance(recorded, dict):
        raise ValueError(
            f"{policy.name} records no training configuration (extra.config in policy.json); "
            "pass --config with the job distribution to run on"
        )
    return TrainConfig().updated(recorded, f"{policy.name}'s extra.config").validate(policy.name)


def available_presets() -> list[str]:
    """Names of the presets shipped in ``agents/presets``."""
    return sorted(path.stem for path in PRESET_DIR.glob("*.yaml"))


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping with the same key twice.

    PyYAML keeps the last of two equal keys without a word, so a key repeated
    by an edit (``env:`` twice) would silently drop everything under the first.
    """

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _UniqueKeyLoader.construct_mapping
)


def read_yaml(path: str | Path, what: str = "configuration file") -> Any:
    """A YAML file read safely (no Python objects); a missing file, bad YAML or a
    repeated key raises ``ValueError``."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} {str(path)!r} does not exist")
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except yaml.YAMLError as error:
        detail = " ".join(str(error).split())
        raise ValueError(f"{path.name} is not valid YAML: {detail}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path.name} is not a UTF-8 text file") from None


def load_preset(name: str) -> TrainConfig:
    """The configuration of a shipped preset (``quick``, ``default``, ...)."""
    presets = available_presets()
    if name not in presets:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(presets)}")
    path = PRESET_DIR / f"{name}.yaml"
    return TrainConfig().updated(read_yaml(path, "preset"), path.name).validate(path.name)


def resolve_config(
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> TrainConfig:
    """The preset (default ``quick``), then ``config_file``, then ``overrides``, validated.

    ``overrides`` has the configuration's shape, e.g. ``{"training": {"seed": 3}}``;
    entries whose value is ``None`` are left out (flags the user did not give).
    """
    config = load_preset(preset or DEFAULT_PRESET)
    if config_file is not None:
        path = Path(config_file)
        config = config.updated(read_yaml(path), path.name).validate(path.name)
    if overrides:
        given = {
            section: {key: value for key, value in values.items() if value is not None}
            for section, values in overrides.items()
        }
        config = config.updated(given, "command line").validate("command line")
    return config


def config_from_yaml(path: str | Path) -> TrainConfig:
    """A saved ``config.yaml`` (a complete, resolved configuration) read back."""
    path = Path(path)
    return TrainConfig().updated(read_yaml(path), path.name).validate(path.name)


# ---------------------------------------------------------------------- value checks


def _coerce(where: str, key: str, value: Any, spec: dataclasses.Field, section: Any) -> Any:
    """``value`` checked against the field's type (ints are accepted where floats are)."""
    kind = typing.get_type_hints(type(section))[spec.name]
    union = typing.get_origin(kind) in (typing.Union, types.UnionType)
    optional = union and type(None) in typing.get_args(kind)
    if optional:
        if value is None:
            return None
        kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{where}: {key} must be true or false, got {value!r}")
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ValueError(f"{where}: {key} must be an integer, got {value!r}")
    if kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        if isinstance(value, str):
            try:  # YAML 1.1 reads "3e-4" (no dot) as a string
                number = float(value)
            except ValueError:
                pass
            else:
                if math.isfinite(number):
                    return number
        raise ValueError(f"{where}: {key} must be a finite number, got {value!r}")
    if kind is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"{where}: {key} must be a string, got {value!r}")
    if kind is list:
        if isinstance(value, (list, tuple)):
            return list(value)
        raise ValueError(f"{where}: {key} must be a list, got {value!r}")
    if kind is dict:
        if isinstance(value, dict):
            return dict(value)
        raise ValueError(f"{where}: {key} must be a mapping, got {value!r}")
    raise TypeError(f"unsupported configuration field type {kind!r} of {key}")  # pragma: no cover


def _choice(where: str, key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{where}: {key} must be one of {', '.join(choices)}, got {value!r}")


def are_ensemble_seeds(seeds: list) -> bool:
    """At least 2 different integer seeds >= 0: what ``training.seeds`` and ``--seeds`` accept."""
    return (
        len(seeds) >= 2
        and len(set(seeds)) == len(seeds)
        and all(isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0 for seed in seeds)
    )


def _at_least(where: str, key: str, value: Any, low: float) -> None:
    if not value >= low:
        raise ValueError(f"{where}: {key} must be >= {low:g}, got {value!r}")


def _in_range(
    where: str, key: str, value: Any, low: float, high: float, low_open: bool = False, high_open: bool = False
) -> None:
    ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        left, right = "(" if low_open else "[", ")" if high_open else "]"
        raise ValueError(f"{where}: {key} must be in {left}{low:g}, {high:g}{right}, got {value!r}")

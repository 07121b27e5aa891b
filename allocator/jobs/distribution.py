"""The built-in training jobs: named recipes and the train / held-out job distribution.

A :class:`JobRecipe` is everything needed to build a :class:`TrainingJob`
(dataset and its options, model family and size, optimizer, learning rate,
batch size, budget) plus the regime it is meant to exercise. ``make_job(name)``
builds one of the named recipes; :class:`JobDistribution` draws varied recipes
from a ``numpy`` generator, so that a policy trained on it sees many jobs.

Regimes (both must occur, see design section 7):

* **compute-bound** -- under uniform training the validation loss is still
  falling when the budget ends (a large training set and a short budget);
* **data-bound** -- the validation loss turns up before the budget ends (a
  small, noisy training set, a big model and many steps).

The named jobs' regimes were measured with real uniform runs
(``compute-allocator jobs --measure``); sampled recipes carry the regime their
knobs were drawn for.

Splits: every named job and every sampled recipe belongs to exactly one split.
The ``heldout`` split holds model families the ``train`` split never uses (the
2-D CNN and the transformer) and dataset variants it never sees (the
random-teacher classification task and the harder MNIST-1D), so held-out
results measure transfer to unseen jobs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from allocator.jobs.datasets import Dataset, load_dataset
from allocator.jobs.models import MODEL_FAMILIES, build_model

REGIMES = ("compute-bound", "data-bound")
SPLITS = ("train", "heldout")
OPTIMIZERS = ("adam", "adamw", "sgd")

#: Model families each split may use; the held-out ones are never trained on.
TRAIN_FAMILIES = ("mlp", "resmlp", "cnn1d")
HELDOUT_FAMILIES = ("cnn2d", "transformer")


@dataclass(frozen=True)
class JobRecipe:
    """A recipe for one built-in training job: data, model, optimizer, budget and regime.

    Args:
        name: the job's name (also the built job's ``name``).
        dataset: a built-in dataset (``synthetic-classification``,
            ``synthetic-regression``, ``mnist1d``, ``digits``).
        dataset_options: keyword arguments of the dataset function (training
            set size, label noise, seed, ...); a mapping, stored sorted.
        model: a model family (``mlp``, ``resmlp``, ``cnn1d``, ``cnn2d``,
            ``transformer``).
        width: the model's width.
        depth: the model's depth (hidden layers / blocks / convolutions).
        optimizer: ``adam``, ``adamw`` or ``sgd`` (with momentum 0.9).
        lr: initial learning rate (the job decays it linearly to zero).
        batch_size: samples per optimizer step.
        budget_steps: the budget, in uniform optimizer steps.
        regime: ``compute-bound`` or ``data-bound`` (see the module docstring).
        split: ``train`` or ``heldout``.
        weight_decay: optimizer weight decay.
    """

    name: str
    dataset: str
    dataset_options: Any
    model: str
    width: int
    depth: int
    optimizer: str = "adam"
    lr: float = 1e-3
    batch_size: int = 64
    budget_steps: int = 200
    regime: str = "compute-bound"
    split: str = "train"
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        # Stored as a sorted tuple of pairs so that recipes stay hashable and
        # compare by value; ``options`` gives the dict back.
        options = dict(self.dataset_options or {})
        object.__setattr__(self, "dataset_options", tuple(sorted(options.items())))
        if self.model not in MODEL_FAMILIES:
            raise ValueError(
                f"unknown model family {self.model!r}; choose one of {sorted(MODEL_FAMILIES)}"
            )
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.regime not in REGIMES:
            raise ValueError(f"regime must be one of {REGIMES}, got {self.regime!r}")
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        for field_name in ("width", "depth", "batch_size", "budget_steps"):
            value = getattr(self, field_name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{field_name} must be an integer >= 1, got {value!r}")
            object.__setattr__(self, field_name, int(value))
        object.__setattr__(self, "lr", float(self.lr))
        object.__setattr__(self, "weight_decay", float(self.weight_decay))

    @property
    def options(self) -> dict[str, Any]:
        """The dataset's keyword arguments as a dict."""
        return dict(self.dataset_options)

    def data(self) -> Dataset:
        """The recipe's dataset (cached in-process: repeated calls return the same tensors)."""
        return load_dataset(self.dataset, **self.options)

    @property
    def budget_epochs(self) -> float:
        """Passes over the training set that the budget buys at standard training (loads the data)."""
        return self.budget_steps * self.batch_size / len(self.data().train[1])

    def build(self, seed: int = 0, spec=None, device: str = "auto"):
        """Build a fresh TrainingJob from this recipe; ``seed`` seeds the initial weights and the job.

        Args:
            seed: seeds the model's initial weights and the job (minibatch
                order, gate draws). The data is fixed by ``dataset_options``.
            spec: the job's :class:`~allocator.allocation.AllocationSpec`
                (``None``: the default K=4, G=4, 10 steps per interval).
            device: ``"auto"`` (CUDA when available), ``"cpu"``, ...
        """
        from allocator.job import TrainingJob  # the job module pulls in FLOP counting; load on use

        data = self.data()
        model = build_model(
            self.model, data.input_shape, data.output_size, self.width, self.depth, seed=seed
        )
        return TrainingJob(
            model,
            train=data.train,
            val=data.val,
            loss=data.loss,
            optimizer=self.optimizer,
            lr=self.lr,
            batch_size=self.batch_size,
            budget_steps=self.budget_steps,
            device=device,
            seed=seed,
            spec=spec,
            weight_decay=self.weight_decay,
            name=self.name,
        )

    def describe(self) -> str:
        """One line: dataset, model, optimizer, lr, batch, budget, regime, split."""
        options = ", ".join(f"{key}={value}" for key, value in self.dataset_options)
        decay = f" wd {self.weight_decay:g}" if self.weight_decay else ""
        return (
            f"{self.dataset}({options}) | {self.model} width {self.width} depth {self.depth} | "
            f"{self.optimizer} lr {self.lr:.2g}{decay} | batch {self.batch_size} | "
            f"{self.budget_steps} steps | {self.regime} | {self.split}"
        )


# --------------------------------------------------------------------------- named jobs


def _named(*recipes: JobRecipe) -> dict[str, JobRecipe]:
    return {recipe.name: recipe for recipe in recipes}


# Each recipe reads: name, dataset, dataset options, model, width, depth,
# optimizer, lr, batch size, budget steps, regime, split. The regimes are the
# ones measured under uniform training for job seeds 0, 1 and 2
# (`compute-allocator jobs --measure --seed N`); tests/test_jobs.py checks seed 0.
# fmt: off
NAMED_JOBS: dict[str, JobRecipe] = _named(
    # ---- train split: MLP, residual MLP, 1-D CNN on clusters, regression, MNIST-1D, flat digits
    JobRecipe(
        "synth-clusters-mlp", "synthetic-classification", {"n_train": 4000, "seed": 0},
        "mlp", 128, 3, "adam", 1e-3, 64, 150, "compute-bound", "train",
    ),
    JobRecipe(
        "synth-noisy-mlp", "synthetic-classification", {"n_train": 300, "label_noise": 0.3, "seed": 1},
        "mlp", 256, 3, "adam", 1e-3, 64, 250, "data-bound", "train",
    ),
    JobRecipe(
        "synth-imbalanced-resmlp", "synthetic-classification",
        {"n_train": 4000, "imbalance": 10.0, "redundant_fraction": 0.3, "difficulty": 1.3, "seed": 2},
        "resmlp", 64, 2, "adamw", 1e-3, 64, 150, "compute-bound", "train", weight_decay=0.01,
    ),
    JobRecipe(
        "regression-mlp", "synthetic-regression", {"n_train": 4000, "noise": 0.1, "seed": 0},
        "mlp", 128, 3, "adam", 1e-3, 64, 200, "compute-bound", "train",
    ),
    JobRecipe(
        "regression-small-resmlp", "synthetic-regression", {"n_train": 200, "noise": 0.5, "seed": 1},
        "resmlp", 128, 2, "adam", 3e-3, 64, 250, "data-bound", "train",
    ),
    JobRecipe(
        "mnist1d-cnn1d", "mnist1d", {"seed": 0},
        "cnn1d", 32, 3, "adam", 3e-3, 64, 300, "compute-bound", "train",
    ),
    JobRecipe(
        "mnist1d-resmlp", "mnist1d", {"n_train": 1000, "label_noise": 0.2, "seed": 0},
        "resmlp", 128, 2, "adam", 2e-3, 64, 250, "data-bound", "train",
    ),
    JobRecipe(
        "digits-mlp", "digits", {"flat": True, "seed": 0},
        "mlp", 64, 3, "sgd", 0.05, 32, 150, "compute-bound", "train",
    ),
    # ---- held-out split: the 2-D CNN and the transformer, the teacher task, the hard MNIST-1D
    JobRecipe(
        "digits-cnn", "digits", {"seed": 0},
        "cnn2d", 16, 3, "adam", 3e-3, 64, 200, "compute-bound", "heldout",
    ),
    JobRecipe(
        "digits-transformer", "digits", {"seed": 0},
        "transformer", 32, 2, "adamw", 2e-3, 64, 250, "compute-bound", "heldout", weight_decay=0.01,
    ),
    JobRecipe(
        "mnist1d-transformer", "mnist1d", {"seed": 0},
        "transformer", 32, 2, "adamw", 2e-3, 64, 250, "compute-bound", "heldout", weight_decay=0.01,
    ),
    JobRecipe(
        "synth-teacher-noisy-mlp", "synthetic-classification",
        {"kind": "teacher", "n_train": 400, "label_noise": 0.25, "seed": 100},
        "mlp", 256, 3, "adam", 1e-3, 64, 250, "data-bound", "heldout",
    ),
    JobRecipe(
        "digits-noisy-transformer", "digits", {"n_train": 300, "label_noise": 0.3, "seed": 0},
        "transformer", 32, 2, "adam", 3e-3, 64, 250, "data-bound", "heldout",
    ),
    JobRecipe(
        "mnist1d-hard-mlp", "mnist1d", {"variant": "hard", "n_train": 600, "label_noise": 0.2, "seed": 0},
        "mlp", 256, 3, "adam", 1e-3, 64, 250, "data-bound", "heldout",
    ),
    JobRecipe(
        "mnist1d-hard-cnn1d", "mnist1d", {"variant": "hard", "seed": 0},
        "cnn1d", 32, 3, "adam", 3e-3, 64, 250, "compute-bound", "heldout",
    ),
)
# fmt: on


def names(split: str | None = None) -> list[str]:
    """List the named built-in jobs, optionally only those of one split (``train`` or ``heldout``)."""
    if split in (None, "all"):
        return list(NAMED_JOBS)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or 'all', got {split!r}")
    return [name for name, recipe in NAMED_JOBS.items() if recipe.split == split]


def recipe(name: str) -> JobRecipe:
    """The :class:`JobRecipe` of a named built-in job."""
    try:
        return NAMED_JOBS[name]
    except KeyError:
        raise ValueError(
            f"unknown job {name!r}; run `compute-allocator jobs` to list them"
        ) from None


def make_job(name: str, seed: int = 0, spec=None, device: str = "auto"):
    """Build a named built-in training job, e.g. ``make_job("mnist1d-cnn1d", seed=3)``.

    Raises:
        ValueError: for an unknown name (``names()`` lists the known ones).
    """
    return recipe(name).build(seed=seed, spec=spec, device=device)


def describe(name: str) -> str:
    """Describe a named built-in job in one line: dataset, model, optimizer, lr, batch, budget, regime, split."""
    return recipe(name).describe()


# --------------------------------------------------------------------------- measuring regimes


def measured_regime(
    curve: Sequence[tuple[float, float]], turn_up: float = 0.03, still_falling: float = 0.01
) -> str:
    """Classify a uniform run's validation curve as ``compute-bound``, ``data-bound`` or ``converged``.

    Args:
        curve: ``RunResult.curve``, ``[(compute fraction, validation loss), ...]``.
        turn_up: data-bound when the final loss exceeds the best by this
            relative margin (the loss turned up before the budget ended).
        still_falling: compute-bound when the final loss is the best (within
            ``still_falling``) and the last quarter of the budget lowered the
            loss by at least this relative amount.

    A curve that is neither -- flat over the last quarter without turning up
    -- is ``converged``.
    """
    fractions = np.asarray([point[0] for point in curve], dtype=float)
    losses = np.asarray([point[1] for point in curve], dtype=float)
    if len(losses) < 3 or not np.all(np.isfinite(losses)):
        return "diverged" if not np.all(np.isfinite(losses)) else "converged"
    best, final = losses.min(), losses[-1]
    if final > best * (1.0 + turn_up):
        return "data-bound"
    three_quarters = losses[np.searchsorted(fractions, 0.75 * fractions[-1])]
    if final <= best * (1.0 + still_falling) and three_quarters > final * (1.0 + still_falling):
        return "compute-bound"
    return "converged"


# --------------------------------------------------------------------------- the distribution


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


# Learning-rate ranges per optimizer, drawn log-uniformly: the usual safe
# ranges for small networks (SGD runs with momentum 0.9). Below them, the short
# budgets here barely move the loss, and a job that learns nothing teaches a
# policy nothing.
LR_RANGES = {"adam": (5e-4, 5e-3), "adamw": (5e-4, 5e-3), "sgd": (1e-2, 1e-1)}

# Sizes per family: (widths, depths, batch sizes), small enough that one
# uniform episode stays around a second or two on one CPU thread.
MODEL_SIZES = {
    "mlp": ((64, 128, 256), (3, 4), (32, 64, 128)),
    "resmlp": ((64, 128), (1, 2, 3), (32, 64, 128)),
    "cnn1d": ((16, 32, 64), (3, 4), (32, 64, 128)),
    "cnn2d": ((16, 32), (3, 4), (32, 64)),
    "transformer": ((16, 32), (1, 2), (32, 64)),
}

# Dataset variants of each split: variant -> (dataset, fixed options, model families).
# Held-out variants and families never appear in the train split.
_VARIANTS: dict[str, dict[str, tuple[str, dict, tuple[str, ...]]]] = {
    "train": {
        "clusters": ("synthetic-classification", {"kind": "clusters"}, ("mlp", "resmlp")),
        "regression": ("synthetic-regression", {}, ("mlp", "resmlp")),
        "mnist1d": ("mnist1d", {"variant": "standard"}, ("mlp", "resmlp", "cnn1d")),
        "digits-flat": ("digits", {"flat": True}, ("mlp", "resmlp")),
    },
    "heldout": {
        "teacher": ("synthetic-classification", {"kind": "teacher"}, ("mlp", "resmlp")),
        "mnist1d-hard": ("mnist1d", {"variant": "hard"}, ("mlp", "resmlp", "cnn1d", "transformer")),
        "mnist1d": ("mnist1d", {"variant": "standard"}, ("transformer",)),
        "digits": ("digits", {}, ("cnn2d", "transformer")),
    },
}

# Many-epoch compute-bound draws (``JobDistribution(many_epoch_share=...)``): the budget buys
# this many passes over the training set (drawn log-uniformly; the set is subsampled to fit),
# and the learning rate is the optimizer's usual draw times a factor from this range, so the
# model is still learning when the budget ends. Measured on the train split
# (benchmarks/regime_mix.py): about 6 in 10 such jobs are compute-bound under uniform
# training, most of the rest converged, few data-bound.
MANY_EPOCHS = (6.0, 30.0)
MANY_EPOCH_LR_SCALE = (0.15, 0.5)
MANY_EPOCH_BUDGET_STEPS = (150, 300)
# Bounds on the subsampled training set: small enough for many epochs, never a handful.
MANY_EPOCH_TRAIN_SIZE = (200, 4000)

# Synthetic data seeds of the two splits never overlap.
_SYNTHETIC_SEEDS = {"train": (0, 100_000), "heldout": (100_000, 200_000)}
# MNIST-1D generation costs ~0.6 s a seed; a few seeds, each cached, keep resets cheap.
_MNIST1D_SEEDS = 4


class JobDistribution:
    """A distribution over small training jobs to train (``train``) or evaluate (``heldout``) a policy on.

    ``sample(rng)`` draws a regime, a dataset variant, a model family and
    size, an optimizer with a log-uniform learning rate, a batch size, a
    budget and the job seed, all from ``rng``, and builds the job. With
    probability ``named_share`` it draws one of the split's named jobs instead.

    Args:
        split: ``"train"`` or ``"heldout"``. The held-out split uses the 2-D
            CNN and the transformer (never in ``train``), the random-teacher
            classification task and the hard MNIST-1D variant (never in
            ``train``); synthetic data seeds of the two splits are disjoint.
        named_share: probability of drawing a named job of the split.
        device: device of the built jobs.
        data_bound_share: probability that a sampled (not named) recipe is
            data-bound; the rest are compute-bound. 0.5 draws exactly as
            before this option existed, so the presets' job pools are unchanged.
        families: only these model families (named jobs included), e.g.
            ``("mlp", "resmlp")`` to leave the 1-D CNN out of training and
            measure transfer to it on the same split; ``None``: all of the
            split's families, drawn exactly as before this option existed.
            Dataset variants none of whose families are kept are not drawn.
        balance_families: draw a sampled recipe's model family first, evenly,
            then a dataset variant that has it. ``False`` (the default) draws
            the variant first and a family of it, so a family offered by one
            variant alone (the 1-D CNN: MNIST-1D only) is rarer than the others.
        many_epoch_share: probability that a sampled compute-bound recipe is
            a *many-epoch* one: a clean training set subsampled so that the
            budget buys 6 to 30 epochs, and a learning rate 0.15 to 0.5 times
            the usual draw, so the model still learns at the budget's end. By
            default (0) compute-bound jobs run 2 to 8 epochs and data-bound
            ones 10 to 80, so the number of epochs alone tells the regime, and
            a policy learns to stop on it; a model family that learns slowly
            (a CNN or a transformer on 1,400 digits, 9 to 12 epochs) then looks
            data-bound to it. Many-epoch jobs break that shortcut. 0 draws
            exactly as before this option existed. Trap: their ``regime`` is
            the one they are drawn for; measured under uniform training about
            6 in 10 are compute-bound, most others converged
            (``benchmarks/regime_mix.py``).

    Example::

        rng = np.random.default_rng(0)
        jobs = JobDistribution("train")
        job = jobs.sample(rng)          # a TrainingJob
        recipe = jobs.sample_recipe(rng)  # or just the recipe
    """

    def __init__(
        self,
        split: str = "train",
        named_share: float = 0.2,
        device: str = "auto",
        data_bound_share: float = 0.5,
        families: Sequence[str] | None = None,
        balance_families: bool = False,
        many_epoch_share: float = 0.0,
        family_weights: Mapping[str, float] | None = None,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if not 0.0 <= named_share <= 1.0:
            raise ValueError(f"named_share must be in [0, 1], got {named_share!r}")
        if not 0.0 <= data_bound_share <= 1.0:
            raise ValueError(f"data_bound_share must be in [0, 1], got {data_bound_share!r}")
        if not 0.0 <= many_epoch_share <= 1.0:
            raise ValueError(f"many_epoch_share must be in [0, 1], got {many_epoch_share!r}")
        self.split = split
        self.many_epoch_share = float(many_epoch_share)
        self.named_share = float(named_share)
        self.data_bound_share = float(data_bound_share)
        self.device = device
        if isinstance(families, str):  # tuple("mlp") would be three one-letter families
            raise ValueError(f"families must be a list of model family names, got {families!r}")
        self.families = None if families is None else tuple(families)
        self.balance_families = bool(balance_families)
        self.variants = _VARIANTS[split]
        self.named = names(split)
        if self.families is not None:
            available = self.model_families
            unknown = [family for family in self.families if family not in available]
            if unknown or not self.families:
                raise ValueError(
                    f"families must be a non-empty subset of the {split} split's model families "
                    f"{list(available)}, got {list(self.families)}"
                )
            kept = {
                variant: (dataset, fixed, tuple(f for f in fams if f in self.families))
                for variant, (dataset, fixed, fams) in self.variants.items()
            }
            self.variants = {variant: entry for variant, entry in kept.items() if entry[2]}
            self.named = [name for name in self.named if NAMED_JOBS[name].model in self.families]
        self.family_weights = None if family_weights is None else self._check_family_weights(family_weights)

    def _check_family_weights(self, family_weights) -> dict[str, float]:
        """The weights as floats, after checking that they name sampled families and can draw one."""
        sampled = self._sampled_families()
        if not isinstance(family_weights, Mapping) or not all(isinstance(name, str) for name in family_weights):
            raise ValueError(f"family_weights must map model family names to weights, got {family_weights!r}")
        unknown = [name for name in family_weights if name not in sampled]
        if unknown:
            raise ValueError(
                f"family_weights names {unknown}, not among the sampled model families {sampled} of this distribution"
            )
        weights = {}
        for name, weight in family_weights.items():
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight < float("inf"):
                raise ValueError(f"family_weights[{name!r}] must be a finite number >= 0, got {weight!r}")
            weights[name] = float(weight)
        if not any(weights.get(name, 1.0) > 0 for name in sampled):
            raise ValueError(f"family_weights leave no sampled model family to draw: {weights}")
        return weights

    @property
    def model_families(self) -> tuple[str, ...]:
        """The model families this distribution draws from (named jobs included)."""
        families = set(self._sampled_families())
        families |= {NAMED_JOBS[name].model for name in self.named}
        return tuple(sorted(families))

    def _sampled_families(self) -> list[str]:
        """The model families of the dataset variants, sorted (named jobs not included)."""
        return sorted({family for _, _, families in self.variants.values() for family in families})

    def sample(self, rng: np.random.Generator | int | None = None, spec=None):
        """Draw a training job from this split: a fresh :class:`TrainingJob` seeded from ``rng``."""
        rng = np.random.default_rng(rng)
        chosen = self.sample_recipe(rng)
        seed = int(rng.integers(0, 2**31 - 1))
        return chosen.build(seed=seed, spec=spec, device=self.device)

    def recipes(self, rng: np.random.Generator | int | None, count: int) -> list[JobRecipe]:
        """Draw ``count`` recipes (e.g. a fixed evaluation set for a given rng seed)."""
        rng = np.random.default_rng(rng)
        return [self.sample_recipe(rng) for _ in range(count)]

    def distinct_recipes(self, count: int, job_seed: int, keep=None) -> dict[str, JobRecipe]:
        """``{name: JobRecipe}``: the first ``count`` distinct recipes drawn from ``job_seed``
        (of those ``keep(recipe)`` accepts, if given), out of ``count * 4`` draws; fewer when the
        draws hold fewer (named jobs repeat)."""
        recipes: dict[str, JobRecipe] = {}
        for recipe in self.recipes(job_seed, count * 4):
            if keep is None or keep(recipe):
                recipes.setdefault(recipe.name, recipe)
            if len(recipes) == count:
                break
        return recipes

    def sample_recipe(self, rng: np.random.Generator | int | None = None) -> JobRecipe:
        """Draw one :class:`JobRecipe` of this split from ``rng`` (nothing is built)."""
        rng = np.random.default_rng(rng)
        if rng.random() < self.named_share and self.named:
            return NAMED_JOBS[self.named[int(rng.integers(len(self.named)))]]

        if self.data_bound_share == 0.5:  # the original draw: keeps seeded job pools as they were
            regime = REGIMES[int(rng.integers(len(REGIMES)))]
        else:
            regime = "data-bound" if rng.random() < self.data_bound_share else "compute-bound"
        if self.family_weights is not None or self.balance_families:
            sampled_families = self._sampled_families()
            if self.family_weights is None:  # the even draw as it was, so seeded job pools stay
                family = sampled_families[int(rng.integers(len(sampled_families)))]
            else:
                weights = np.array([self.family_weights.get(name, 1.0) for name in sampled_families])
                family = sampled_families[int(rng.choice(len(sampled_families), p=weights / weights.sum()))]
            offering = [variant for variant, (_, _, fams) in self.variants.items() if family in fams]
            variant = offering[int(rng.integers(len(offering)))]
            dataset, fixed, _ = self.variants[variant]
        else:
            variant = list(self.variants)[int(rng.integers(len(self.variants)))]
            dataset, fixed, families = self.variants[variant]
            family = families[int(rng.integers(len(families)))]
        widths, depths, batches = MODEL_SIZES[family]
        data_bound = regime == "data-bound"
        # drawn only when asked for, so that the default keeps seeded job pools as they were
        many_epochs = not data_bound and self.many_epoch_share > 0 and rng.random() < self.many_epoch_share
        # Data-bound jobs get the wider models: more capacity to memorise noise.
        width = int(widths[-1] if data_bound else rng.choice(widths))
        depth = int(rng.choice(depths))
        batch_size = int(rng.choice(batches))
        optimizer = OPTIMIZERS[int(rng.integers(len(OPTIMIZERS)))]
        low, high = LR_RANGES[optimizer]
        lr = _log_uniform(rng, low, high)
        weight_decay = _log_uniform(rng, 1e-3, 1e-1) if optimizer == "adamw" else 0.0
        options = dict(fixed)
        options.update(self._data_options(rng, dataset, data_bound))
        # Compute-bound: a short budget, shorter still for the easy digits, which
        # a longer one would fit to convergence; data-bound: a long one, many
        # passes over a small noisy set.
        if many_epochs:
            budget = self._many_epochs(rng, options, batch_size)
            lr *= _log_uniform(rng, *MANY_EPOCH_LR_SCALE)
        elif data_bound:
            # not much longer: standard training must still beat not training
            # at all (J < 1.8) on most jobs, or the job teaches only "stop at once"
            budget = int(rng.integers(150, 301))
        else:
            budget = int(rng.integers(60, 151) if dataset == "digits" else rng.integers(100, 251))
        tag = int(rng.integers(0, 100_000))
        kind = f"{variant}-{family}-many-epochs" if many_epochs else f"{variant}-{family}"
        return JobRecipe(
            name=f"{self.split}-{kind}-{tag:05d}",
            dataset=dataset,
            dataset_options=options,
            model=family,
            width=width,
            depth=depth,
            optimizer=optimizer,
            lr=lr,
            batch_size=batch_size,
            budget_steps=budget,
            regime=regime,
            split=self.split,
            weight_decay=weight_decay,
        )

    @staticmethod
    def _many_epochs(rng: np.random.Generator, options: dict, batch_size: int) -> int:
        """A many-epoch draw's budget; sets its training-set size and clean labels in ``options``."""
        budget = int(rng.integers(MANY_EPOCH_BUDGET_STEPS[0], MANY_EPOCH_BUDGET_STEPS[1] + 1))
        epochs = _log_uniform(rng, *MANY_EPOCHS)
        smallest, largest = MANY_EPOCH_TRAIN_SIZE
        # MNIST-1D and digits keep their whole set when this asks for more than it has
        options["n_train"] = int(min(largest, max(smallest, round(budget * batch_size / epochs))))
        if "label_noise" in options:
            options["label_noise"] = 0.0
        return budget

    def _data_options(self, rng: np.random.Generator, dataset: str, data_bound: bool) -> dict:
        """Training-set size, noise and seed for the regime being drawn."""
        if dataset in ("synthetic-classification", "synthetic-regression"):
            seed = int(rng.integers(*_SYNTHETIC_SEEDS[self.split]))
        elif dataset == "mnist1d":
            seed = int(rng.integers(_MNIST1D_SEEDS))
        else:
            seed = int(rng.integers(1000))
        options: dict[str, Any] = {"seed": seed}
        if dataset == "synthetic-regression":
            options["n_train"] = int(
                rng.integers(200, 600) if data_bound else rng.integers(2000, 4001)
            )
            options["noise"] = round(
                float(rng.uniform(0.3, 0.6) if data_bound else rng.uniform(0.05, 0.2)), 3
            )
            return options
        if data_bound:
            # Small and noisy enough that the validation loss turns up within
            # the budget, not so small that it explodes far above its start.
            options["n_train"] = int(rng.integers(300, 1000))
            options["label_noise"] = round(float(rng.uniform(0.1, 0.3)), 3)
        else:
            if dataset == "synthetic-classification":
                options["n_train"] = int(rng.integers(2000, 4001))
            # MNIST-1D and digits keep their whole training set (4000 / 1397).
            options["label_noise"] = round(float(rng.choice([0.0, 0.0, 0.05, 0.1])), 3)
        if dataset == "synthetic-classification":
            # The knobs that make sample selection matter: imbalance and easy duplicates.
            options["imbalance"] = round(float(rng.choice([1.0, _log_uniform(rng, 2.0, 10.0)])), 2)
            options["redundant_fraction"] = round(
                float(rng.choice([0.0, rng.uniform(0.1, 0.4)])), 3
            )
        return options

    def __repr__(self) -> str:
        families = "" if self.families is None else f", families={list(self.families)}"
        if self.family_weights is not None:
            families += f", family_weights={self.family_weights}"
        many = f", many_epoch_share={self.many_epoch_share}" if self.many_epoch_share else ""
        return f"JobDistribution(split={self.split!r}, named_share={self.named_share}{families}{many})"

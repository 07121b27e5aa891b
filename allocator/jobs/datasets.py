"""Built-in datasets for training jobs, generated offline from a seed.

Every function returns a :class:`Dataset`: train and validation tensors on the
CPU (inputs ``float32``, standardised with training-set statistics; labels
``int64`` for classification, targets ``float32`` of shape ``(N, d)`` for
regression). Nothing is downloaded: the synthetic sets are drawn from a
``numpy`` generator, MNIST-1D comes from the ``mnist1d`` package's own
procedural generator and the digits from scikit-learn's bundled copy.

Results are cached in-process (``functools.lru_cache``) because an RL episode
builds a fresh job every reset; the same arguments give the *same* tensor
objects back.

.. warning:: The cached tensors are shared between every job built from the
   same arguments. Treat them as read-only; copy before modifying in place.

Datasets that make the allocation matter:

* ``label_noise`` flips a fraction of the *training* labels to another class
  (validation labels stay clean), so a model that memorises them gets worse on
  validation: with a small ``n_train`` this makes a data-bound job;
* ``imbalance`` makes class 0 that many times more frequent than the last class
  in the training set (validation stays class-balanced, so rare classes count);
* ``redundant_fraction`` fills that share of the training set with near
  duplicates of a few easy, correctly labelled samples, which a good sample
  allocation can skip.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

TASKS = ("classification", "regression")


@dataclass(frozen=True, eq=False)
class Dataset:
    """A train/validation pair of in-memory tensors with what a model needs to fit it.

    Args:
        name: short description, e.g. ``"mnist1d(n_train=1000, label_noise=0.2)"``.
        train: ``(X, y)`` training tensors.
        val: ``(X, y)`` validation tensors (at most about 1000 samples).
        task: ``"classification"`` (``y`` int64 class indices) or
            ``"regression"`` (``y`` float32 of shape ``(N, output_dim)``).
        input_shape: shape of one input, without the batch dimension.
        num_classes: number of classes (classification only).
        output_dim: number of regression targets (regression only).
    """

    name: str
    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    task: str
    input_shape: tuple[int, ...]
    num_classes: int | None = None
    output_dim: int | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.task == "classification" and not self.num_classes:
            raise ValueError("a classification dataset needs num_classes")
        if self.task == "regression" and not self.output_dim:
            raise ValueError("a regression dataset needs output_dim")

    @property
    def output_size(self) -> int:
        """Width of the model's output layer: classes for classification, targets for regression."""
        return int(self.num_classes if self.task == "classification" else self.output_dim)

    @property
    def loss(self) -> str:
        """The ``TrainingJob`` loss that fits this task (``"cross_entropy"`` or ``"mse"``)."""
        return "cross_entropy" if self.task == "classification" else "mse"

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name}, train={len(self.train[0])}, val={len(self.val[0])}, "
            f"input_shape={self.input_shape}, output_size={self.output_size})"
        )


# --------------------------------------------------------------------------- helpers


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")


def _flip_labels(y: np.ndarray, fraction: float, num_classes: int, rng: np.random.Generator):
    """Give exactly ``round(fraction * N)`` samples a label drawn from the *other* classes."""
    y = y.copy()
    flip = rng.choice(len(y), size=round(fraction * len(y)), replace=False)
    # An offset in 1..C-1 never lands on the true class, so the noise rate is exact.
    y[flip] = (y[flip] + rng.integers(1, num_classes, size=len(flip))) % num_classes
    return y


def _standardise(train_x: np.ndarray, val_x: np.ndarray, per_feature: bool):
    """Centre and scale inputs with training-set statistics (never the validation set's)."""
    axis = 0 if per_feature else None
    mean = train_x.mean(axis=axis, keepdims=per_feature)
    std = train_x.std(axis=axis, keepdims=per_feature)
    std = np.maximum(std, 1e-6)
    return (train_x - mean) / std, (val_x - mean) / std


def _class_counts(n: int, num_classes: int, imbalance: float) -> np.ndarray:
    """Per-class sample counts for a geometric class prior; class 0 ``imbalance`` x class C-1."""
    if imbalance < 1.0:
        raise ValueError(
            f"imbalance must be >= 1 (ratio of largest to smallest class), got {imbalance!r}"
        )
    prior = imbalance ** (-np.arange(num_classes) / max(num_classes - 1, 1))
    counts = np.floor(n * prior / prior.sum()).astype(int)
    counts = np.maximum(counts, 1)
    counts[0] += n - counts.sum()  # rounding remainder goes to the largest class
    return counts


def _tensors(x: np.ndarray, y: np.ndarray, task: str) -> tuple[torch.Tensor, torch.Tensor]:
    x_t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    if task == "classification":
        y_t = torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))
    else:
        y_t = torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))
    return x_t, y_t


def _shuffled(rng: np.random.Generator, x: np.ndarray, y: np.ndarray):
    order = rng.permutation(len(y))
    return x[order], y[order]


def _subsample(
    x: np.ndarray, y: np.ndarray, n: int | None, rng: np.random.Generator, stratify: bool
):
    """The first ``n`` samples of a seeded permutation (class-stratified for classification)."""
    if n is None or n >= len(y):
        return x, y
    if n < 1:
        raise ValueError(f"n_train must be >= 1, got {n}")
    if not stratify:
        keep = rng.permutation(len(y))[:n]
        return x[keep], y[keep]
    # Stratify so that a small subsample still holds every class in its original proportion.
    classes, counts = np.unique(y, return_counts=True)
    quota = np.maximum(np.floor(counts * n / len(y)).astype(int), 1)
    quota[np.argmax(counts)] += n - quota.sum()
    keep = np.concatenate(
        [rng.permutation(np.flatnonzero(y == c))[:q] for c, q in zip(classes, quota)]
    )
    keep = rng.permutation(keep)
    return x[keep], y[keep]


# --------------------------------------------------------------------------- synthetic


@functools.lru_cache(maxsize=64)
def synthetic_classification(
    seed: int = 0,
    n_train: int = 2000,
    n_val: int = 1000,
    num_features: int = 16,
    num_classes: int = 4,
    kind: str = "clusters",
    label_noise: float = 0.0,
    imbalance: float = 1.0,
    redundant_fraction: float = 0.0,
    difficulty: float = 1.0,
) -> Dataset:
    """Synthetic classification data: Gaussian clusters or a random-MLP teacher.

    Args:
        seed: seeds everything (teacher/centres, samples, noise, duplicates).
        n_train: training samples (redundant duplicates included).
        n_val: validation samples; class-balanced, clean labels.
        num_features: input dimension.
        num_classes: number of classes.
        kind: ``"clusters"`` -- each class is a mixture of 3 Gaussian clusters
            with random centres (a non-linear boundary, since clusters of a class
            are scattered); ``"teacher"`` -- labels are the argmax of a random
            2-layer tanh network (8 hidden units) applied to Gaussian inputs.
        label_noise: fraction of training labels moved to another class.
        imbalance: ratio of the most to the least frequent class in training.
        redundant_fraction: share of the training set made of near duplicates
            of a few easy samples (cluster centres, or the teacher's most
            confident points), correctly labelled.
        difficulty: > 1 pulls clusters together (more overlap) or steepens the
            teacher's units (a more non-linear boundary).
    """
    if kind not in ("clusters", "teacher"):
        raise ValueError(f"kind must be 'clusters' or 'teacher', got {kind!r}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    _check_fraction("label_noise", label_noise)
    _check_fraction("redundant_fraction", redundant_fraction)
    rng = np.random.default_rng(seed)
    n_redundant = round(redundant_fraction * n_train)
    n_regular = n_train - n_redundant
    train_counts = _class_counts(n_regular, num_classes, imbalance)
    val_counts = _class_counts(n_val, num_classes, 1.0)

    if kind == "clusters":
        per_class = 3
        # Centre spread chosen so that a linear model is clearly worse than an MLP
        # (about 77 % vs 94 % validation accuracy at difficulty 1 with 2000
        # samples): the task stays non-trivial.
        centres = rng.normal(0.0, 1.1 / difficulty, size=(num_classes, per_class, num_features))

        def draw(counts: np.ndarray):
            xs, ys = [], []
            for c, count in enumerate(counts):
                which = rng.integers(0, per_class, size=count)
                xs.append(centres[c, which] + rng.normal(0.0, 1.0, size=(count, num_features)))
                ys.append(np.full(count, c))
            return np.concatenate(xs), np.concatenate(ys)

        train_x, train_y = draw(train_counts)
        val_x, val_y = draw(val_counts)
        # Prototypes of the redundant samples: cluster centres, the easiest points there are.
        prototypes = centres.reshape(-1, num_features)
        prototype_y = np.repeat(np.arange(num_classes), per_class)
        label_of = None
    else:
        # A narrow teacher: wide random teachers in 16 dimensions give boundaries
        # that a student cannot learn from a few thousand samples.
        hidden = 8
        w1 = rng.normal(0.0, 1.0 / np.sqrt(num_features), size=(num_features, hidden))
        b1 = rng.normal(0.0, 0.5, size=hidden)
        w2 = rng.normal(0.0, 1.0 / np.sqrt(hidden), size=(hidden, num_classes))

        def logits(x: np.ndarray) -> np.ndarray:
            return np.tanh(2.0 * difficulty * x @ w1 + b1) @ w2

        # Centre the teacher's logits so that no class is vanishingly rare by accident.
        w_bias = -logits(rng.normal(size=(20000, num_features))).mean(axis=0)

        def label_of(x: np.ndarray) -> np.ndarray:
            return np.argmax(logits(x) + w_bias, axis=1)

        def draw(counts: np.ndarray):
            # Rejection sampling per class gives exact class counts (imbalance included).
            xs = [np.empty((0, num_features))] * num_classes
            while any(len(xs[c]) < counts[c] for c in range(num_classes)):
                pool = rng.normal(size=(max(4096, 4 * counts.sum()), num_features))
                pool_y = label_of(pool)
                for c in range(num_classes):
                    if len(xs[c]) < counts[c]:
                        xs[c] = np.concatenate([xs[c], pool[pool_y == c]])[: counts[c]]
            return np.concatenate(xs), np.repeat(np.arange(num_classes), counts)

        train_x, train_y = draw(train_counts)
        val_x, val_y = draw(val_counts)
        # Prototypes: per class, the training point the teacher is most confident about.
        scores = logits(train_x) + w_bias
        top2 = np.sort(scores, axis=1)[:, -2:]
        margin = top2[:, 1] - top2[:, 0]
        prototypes = np.stack(
            [
                train_x[np.flatnonzero(train_y == c)[np.argmax(margin[train_y == c])]]
                for c in range(num_classes)
            ]
        )
        prototype_y = np.arange(num_classes)

    train_y = _flip_labels(train_y, label_noise, num_classes, rng) if label_noise else train_y
    if n_redundant:
        which = rng.integers(0, len(prototypes), size=n_redundant)
        dup_x = prototypes[which] + rng.normal(0.0, 0.05, size=(n_redundant, num_features))
        dup_y = prototype_y[which] if label_of is None else label_of(dup_x)
        train_x = np.concatenate([train_x, dup_x])
        train_y = np.concatenate([train_y, dup_y])
    train_x, train_y = _shuffled(rng, train_x, train_y)
    val_x, val_y = _shuffled(rng, val_x, val_y)
    train_x, val_x = _standardise(train_x, val_x, per_feature=True)
    name = (
        f"synthetic-{kind}(seed={seed}, n_train={n_train}, label_noise={label_noise}, "
        f"imbalance={imbalance}, redundant={redundant_fraction})"
    )
    return Dataset(
        name=name,
        train=_tensors(train_x, train_y, "classification"),
        val=_tensors(val_x, val_y, "classification"),
        task="classification",
        input_shape=(num_features,),
        num_classes=num_classes,
    )


@functools.lru_cache(maxsize=64)
def synthetic_regression(
    seed: int = 0,
    n_train: int = 2000,
    n_val: int = 1000,
    num_features: int = 16,
    output_dim: int = 1,
    noise: float = 0.1,
) -> Dataset:
    """Synthetic regression data: a random sine-MLP teacher plus Gaussian noise.

    Args:
        seed: seeds the teacher, the inputs and the noise.
        n_train: training samples.
        n_val: validation samples (drawn the same way, noise included: the noise
            is part of the task, so the validation loss has a floor of about
            ``noise**2`` relative to the target variance).
        num_features: input dimension.
        output_dim: number of targets.
        noise: noise standard deviation relative to the teacher's output std.

    Targets are standardised with training statistics, so predicting zero gives
    an MSE of about 1.
    """
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise!r}")
    rng = np.random.default_rng(seed)
    hidden = 64
    w1 = rng.normal(0.0, 1.0 / np.sqrt(num_features), size=(num_features, hidden))
    b1 = rng.normal(0.0, 0.5, size=hidden)
    w2 = rng.normal(0.0, 1.0 / np.sqrt(hidden), size=(hidden, output_dim))
    linear = rng.normal(0.0, 0.3 / np.sqrt(num_features), size=(num_features, output_dim))

    def draw(n: int):
        x = rng.normal(size=(n, num_features))
        # Sine units keep the target clearly non-linear (a linear fit explains
        # only about half its variance); the linear part gives a model
        # something easy to learn first.
        clean = np.sin(1.5 * x @ w1 + b1) @ w2 + x @ linear
        return x, clean

    train_x, train_clean = draw(n_train)
    val_x, val_clean = draw(n_val)
    scale = train_clean.std(axis=0, keepdims=True)
    train_y = train_clean + noise * scale * rng.normal(size=train_clean.shape)
    val_y = val_clean + noise * scale * rng.normal(size=val_clean.shape)
    y_mean, y_std = train_y.mean(axis=0, keepdims=True), train_y.std(axis=0, keepdims=True)
    train_y, val_y = (train_y - y_mean) / y_std, (val_y - y_mean) / y_std
    train_x, val_x = _standardise(train_x, val_x, per_feature=True)
    return Dataset(
        name=f"synthetic-regression(seed={seed}, n_train={n_train}, noise={noise})",
        train=_tensors(train_x, train_y, "regression"),
        val=_tensors(val_x, val_y, "regression"),
        task="regression",
        input_shape=(num_features,),
        output_dim=output_dim,
    )


# --------------------------------------------------------------------------- MNIST-1D

# mnist1d's transform parameters; "hard" has more noise and shear, a held-out
# variant of the same task. (Doubling them all makes the task so hard that the
# small budgets here barely move the loss.)
_MNIST1D_VARIANTS = {
    "standard": {},
    "hard": {"corr_noise_scale": 0.3, "iid_noise_scale": 3e-2, "shear_scale": 0.9},
}


@functools.lru_cache(maxsize=8)
def _mnist1d_full(seed: int, variant: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = seed
    for key, value in _MNIST1D_VARIANTS[variant].items():
        setattr(args, key, value)
    # make_dataset reseeds numpy's and Python's global RNGs; restore them so
    # building a dataset does not change what the caller's code draws next.
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return data["x"], data["y"], data["x_test"], data["y_test"]


@functools.lru_cache(maxsize=64)
def mnist1d(
    seed: int = 0,
    n_train: int | None = None,
    label_noise: float = 0.0,
    variant: str = "standard",
) -> Dataset:
    """MNIST-1D: 10-class, length-40 1-D signals from the ``mnist1d`` generator (offline).

    The ten digit templates are padded, shifted, sheared, scaled and noised by
    ``mnist1d.data.make_dataset`` with ``seed``; 4000 training and 1000
    validation samples, inputs of shape ``(40,)``. Generating takes about 0.6 s
    and is cached per (seed, variant).

    Args:
        seed: the generator's seed; also seeds the subsample and label noise.
        n_train: keep a class-stratified subsample of this many training samples.
        label_noise: fraction of training labels moved to another class.
        variant: ``"standard"`` (mnist1d's defaults) or ``"hard"`` (1.2x the
            correlated noise and shear, 1.5x the i.i.d. noise).
    """
    if variant not in _MNIST1D_VARIANTS:
        raise ValueError(f"variant must be one of {sorted(_MNIST1D_VARIANTS)}, got {variant!r}")
    _check_fraction("label_noise", label_noise)
    train_x, train_y, val_x, val_y = _mnist1d_full(seed, variant)
    rng = np.random.default_rng([seed, 1])
    train_x, train_y = _subsample(train_x, train_y, n_train, rng, stratify=True)
    if label_noise:
        train_y = _flip_labels(train_y, label_noise, 10, rng)
    train_x, val_x = _standardise(train_x, val_x, per_feature=False)
    return Dataset(
        name=f"mnist1d-{variant}(seed={seed}, n_train={len(train_y)}, label_noise={label_noise})",
        train=_tensors(train_x, train_y, "classification"),
        val=_tensors(val_x, val_y, "classification"),
        task="classification",
        input_shape=(40,),
        num_classes=10,
    )


# --------------------------------------------------------------------------- digits


@functools.lru_cache(maxsize=64)
def digits(
    seed: int = 0,
    n_train: int | None = None,
    label_noise: float = 0.0,
    flat: bool = False,
    n_val: int = 400,
) -> Dataset:
    """Handwritten digits, 8x8 (scikit-learn's bundled ``load_digits``, 1797 samples).

    Args:
        seed: seeds the train/validation split, the subsample and label noise.
        n_train: keep a class-stratified subsample of this many training samples
            (at most ``1797 - n_val``).
        label_noise: fraction of training labels moved to another class.
        flat: inputs of shape ``(64,)`` for MLPs instead of ``(1, 8, 8)`` images.
        n_val: validation samples held out of the 1797.
    """
    from sklearn.datasets import load_digits

    _check_fraction("label_noise", label_noise)
    bunch = load_digits()
    x, y = bunch.images.astype(np.float64), bunch.target.astype(np.int64)
    rng = np.random.default_rng([seed, 2])
    order = rng.permutation(len(y))
    val_idx, train_idx = order[:n_val], order[n_val:]
    train_x, train_y = _subsample(x[train_idx], y[train_idx], n_train, rng, stratify=True)
    val_x, val_y = x[val_idx], y[val_idx]
    if label_noise:
        train_y = _flip_labels(train_y, label_noise, 10, rng)
    # One scale for all pixels: per-pixel statistics would blow up the border
    # pixels that are almost always blank.
    train_x, val_x = _standardise(train_x, val_x, per_feature=False)
    shape = (64,) if flat else (1, 8, 8)
    return Dataset(
        name=f"digits(seed={seed}, n_train={len(train_y)}, label_noise={label_noise})",
        train=_tensors(train_x.reshape(-1, *shape), train_y, "classification"),
        val=_tensors(val_x.reshape(-1, *shape), val_y, "classification"),
        task="classification",
        input_shape=shape,
        num_classes=10,
    )


# --------------------------------------------------------------------------- registry

DATASETS: dict[str, Callable[..., Dataset]] = {
    "synthetic-classification": synthetic_classification,
    "synthetic-regression": synthetic_regression,
    "mnist1d": mnist1d,
    "digits": digits,
}


def load_dataset(name: str, **kwargs) -> Dataset:
    """Build (or fetch from the cache) the built-in dataset ``name`` with keyword arguments.

    ``name`` is one of ``DATASETS``: ``synthetic-classification``,
    ``synthetic-regression``, ``mnist1d``, ``digits``.
    """
    try:
        factory = DATASETS[name]
    except KeyError:
        raise ValueError(
            f"unknown dataset {name!r}; built-in datasets: {sorted(DATASETS)}"
        ) from None
    return factory(**kwargs)

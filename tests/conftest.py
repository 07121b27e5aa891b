"""Shared fixtures: tiny real training jobs on synthetic data (fast on 2 CPU cores)."""

import pytest
import torch
from torch import nn

from allocator import AllocationSpec, TrainingJob

torch.set_num_threads(1)


def make_classification(n: int = 1200, features: int = 16, classes: int = 4, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=generator)
    teacher = torch.randn(features, classes, generator=generator)
    y = (x @ teacher).argmax(dim=1)
    return x, y


def make_mlp(features: int = 16, classes: int = 4, width: int = 32, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(features, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, classes),
    )


def make_job(budget_steps: int = 60, seed: int = 0, **kwargs) -> TrainingJob:
    """A 4-layer MLP on a 4-class synthetic task: one layer per layer group."""
    x, y = make_classification(seed=seed)
    options = dict(batch_size=32, budget_steps=budget_steps, device="cpu", seed=seed, spec=AllocationSpec())
    options.update(kwargs)
    model = options.pop("model", None) or make_mlp(seed=seed)
    return TrainingJob(model, (x[:1000], y[:1000]), (x[1000:], y[1000:]), **options)


def make_overfitting_job(seed: int = 0, budget_steps: int = 300, **kwargs) -> TrainingJob:
    """``make_job`` on 120 training samples: its validation loss stops improving before the budget."""
    x, y = make_classification(seed=seed)
    options = dict(batch_size=32, budget_steps=budget_steps, device="cpu", seed=seed)
    options.update(kwargs)
    return TrainingJob(make_mlp(seed=seed), (x[:120], y[:120]), (x[1000:], y[1000:]), **options)


@pytest.fixture
def job() -> TrainingJob:
    return make_job()

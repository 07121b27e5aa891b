"""An example of your own training job: a small 2-D CNN on scikit-learn's handwritten digits.

Apply a trained allocator policy to it and compare with standard training::

    compute-allocator apply --policy runs/policy --job examples/my_cnn_job.py:make_job \\
        --compare uniform,freezeout --tensorboard runs/apply-tb --save-model my_cnn.safetensors

``compute-allocator apply`` calls ``make_job(seed=...)`` once per controller,
so every controller trains the same freshly initialised network on the same
data. The function builds the model, loads the data and returns a
``TrainingJob``; anything a ``TrainingJob`` accepts works here (``(X, y)``
tensors or a torch ``Dataset``, ``loss="cross_entropy"``/``"mse"``/a callable,
the optimizer, learning rate, batch size and budget).

Load the saved weights back into the same architecture with::

    from safetensors.torch import load_model
    model = DigitsCNN()
    load_model(model, "my_cnn.safetensors")
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

from allocator import TrainingJob


class DigitsCNN(nn.Module):
    """Two convolutions, a hidden linear layer and a linear head for 8x8 grey images."""

    def __init__(self, channels: int = 16, hidden: int = 64, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(channels, 2 * channels, kernel_size=3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.hidden = nn.Linear(2 * channels * 4 * 4, hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = self.pool(torch.relu(self.conv2(x)))
        x = torch.relu(self.hidden(x.flatten(1)))
        return self.head(x)


def load_data(validation: int = 400, data_seed: int = 0):
    """Digits as ``(N, 1, 8, 8)`` float images scaled to [0, 1], split into train and validation."""
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.from_numpy(np.random.default_rng(data_seed).permutation(len(y)))
    x, y = x[order], y[order]
    return (x[validation:], y[validation:]), (x[:validation], y[:validation])


def make_job(seed: int = 0, budget_steps: int = 150) -> TrainingJob:
    """The digits CNN as a TrainingJob: ``seed`` fixes the initial weights and the minibatch order.

    The budget is small so that the example runs in seconds on a CPU; raise
    ``budget_steps`` (in standard training steps) for a real run.
    """
    torch.manual_seed(seed)  # same seed, same initial weights: controllers start equal
    model = DigitsCNN()
    train, val = load_data()
    return TrainingJob(
        model,
        train=train,
        val=val,
        loss="cross_entropy",
        optimizer="adam",
        lr=3e-3,
        batch_size=32,
        budget_steps=budget_steps,
        seed=seed,
        name="my-digits-cnn",
    )

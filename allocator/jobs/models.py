"""Small, fast models for the built-in training jobs.

Every builder takes ``(input_shape, output_size, width, depth, seed)`` and
returns an ``nn.Module`` whose parameter-owning modules are registered in the
order the forward pass runs them, with the output head (a ``Linear`` named
``head``) last, and at least four of them, so that a job can split the model
into four contiguous layer groups.

Building a model seeds PyTorch inside ``torch.random.fork_rng``: the same seed
gives the same initial weights, and building a model does not change what the
caller's code draws from the global RNG next.

========================  =============================================  ==========================
family                    architecture                                   inputs
========================  =============================================  ==========================
``mlp``                   ``depth`` x (Linear, ReLU), Linear head        anything (flattened)
``resmlp``                Linear, ``depth`` pre-norm residual MLP        anything (flattened)
                          blocks, LayerNorm, Linear head
``cnn1d``                 ``depth`` x (Conv1d, ReLU) with stride 2,      ``(L,)`` or ``(C, L)``
                          pooled to 4 positions, Linear head
``cnn2d``                 ``depth`` x (Conv2d, ReLU), max-pool after     ``(C, H, W)``
                          the second, global average pool, Linear head
``transformer``           token embedding + position embedding,          ``(L,)``: patches of the
                          ``depth`` pre-norm self-attention blocks,      sequence; ``(C, H, W)``:
                          mean pool, LayerNorm, Linear head              one token per image row
========================  =============================================  ==========================
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn


def _check(width: int, depth: int, min_depth: int) -> None:
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be an integer >= 1, got {width!r}")
    if not isinstance(depth, int) or depth < min_depth:
        raise ValueError(f"depth must be an integer >= {min_depth}, got {depth!r}")


class MLP(nn.Module):
    """A plain multi-layer perceptron: ``depth`` hidden ReLU layers, then a linear head."""

    def __init__(
        self, input_shape: Sequence[int], output_size: int, width: int = 128, depth: int = 3
    ) -> None:
        super().__init__()
        # depth >= 3 hidden layers + the head gives the four trainable modules
        # that four layer groups need.
        _check(width, depth, min_depth=3)
        sizes = [math.prod(input_shape)] + [width] * depth
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(sizes))
        self.head = nn.Linear(width, output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for layer in self.hidden:
            x = F.relu(layer(x))
        return self.head(x)


class ResidualBlock(nn.Module):
    """Pre-norm residual MLP block: ``x + W2 gelu(W1 norm(x))``."""

    def __init__(self, width: int, expansion: int = 2) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.expand = nn.Linear(width, expansion * width)
        self.project = nn.Linear(expansion * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.project(F.gelu(self.expand(self.norm(x))))


class ResidualMLP(nn.Module):
    """A residual MLP: input projection, pre-norm residual blocks, final norm, linear head."""

    def __init__(
        self, input_shape: Sequence[int], output_size: int, width: int = 128, depth: int = 2
    ) -> None:
        super().__init__()
        _check(width, depth, min_depth=1)
        self.embed = nn.Linear(math.prod(input_shape), width)
        self.blocks = nn.ModuleList(ResidualBlock(width) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x.flatten(1))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


class CNN1d(nn.Module):
    """A 1-D convolutional network for sequences such as MNIST-1D.

    The first convolution keeps the length; each further one halves it. The
    features are average-pooled to 4 positions (keeping coarse position, which
    MNIST-1D's digits need) and flattened into the linear head.
    """

    def __init__(
        self, input_shape: Sequence[int], output_size: int, width: int = 32, depth: int = 3
    ) -> None:
        super().__init__()
        _check(width, depth, min_depth=3)
        if len(input_shape) not in (1, 2):
            raise ValueError(
                f"cnn1d needs inputs of shape (L,) or (C, L), got {tuple(input_shape)}"
            )
        channels = 1 if len(input_shape) == 1 else input_shape[0]
        layers = [nn.Conv1d(channels, width, kernel_size=5, padding=2)]
        layers += [
            nn.Conv1d(width, width, kernel_size=3, stride=2, padding=1) for _ in range(depth - 1)
        ]
        self.convs = nn.ModuleList(layers)
        self.pool = nn.AdaptiveAvgPool1d(4)
        self.head = nn.Linear(4 * width, output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 2:
            x = x.unsqueeze(1)
        for conv in self.convs:
            x = F.relu(conv(x))
        return self.head(self.pool(x).flatten(1))


class CNN2d(nn.Module):
    """A small 2-D convolutional network for small images such as the 8x8 digits.

    ``depth`` 3x3 convolutions (the width doubles after the max-pool that
    follows the second), global average pooling and a linear head.
    """

    def __init__(
        self, input_shape: Sequence[int], output_size: int, width: int = 16, depth: int = 3
    ) -> None:
        super().__init__()
        _check(width, depth, min_depth=3)
        if len(input_shape) != 3:
            raise ValueError(
                f"cnn2d needs image inputs of shape (C, H, W), got {tuple(input_shape)}"
            )
        channels = [input_shape[0], width, width] + [2 * width] * (depth - 2)
        self.convs = nn.ModuleList(
            nn.Conv2d(a, b, kernel_size=3, padding=1) for a, b in pairwise(channels)
        )
        self.head = nn.Linear(channels[-1], output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, conv in enumerate(self.convs):
            x = F.relu(conv(x))
            if i == 1:
                x = F.max_pool2d(x, 2)
        return self.head(x.mean(dim=(2, 3)))


class TokenEmbedding(nn.Module):
    """Cut an input into tokens and embed them: a linear map plus a learned position embedding.

    A ``(L,)`` sequence becomes ``L / patch`` tokens of ``patch`` values; a
    ``(C, H, W)`` image becomes ``H`` tokens, one per row (``C * W`` values).
    """

    #: Its output is ``(batch, tokens, width)``, positions included: token dropping
    #: (:mod:`allocator.token_dropping`) may keep part of the tokens after it.
    emits_tokens = True

    def __init__(self, input_shape: Sequence[int], width: int, patch: int | None = None) -> None:
        super().__init__()
        shape = tuple(input_shape)
        if len(shape) == 1:
            length = shape[0]
            if patch is None:
                # The smallest patch that gives at most 16 tokens: short
                # sequences keep attention cheap on a CPU.
                patch = next(
                    p for p in range(1, length + 1) if length % p == 0 and length // p <= 16
                )
            if length % patch:
                raise ValueError(f"patch={patch} does not divide the sequence length {length}")
            self.tokens, self.token_size = length // patch, patch
        elif len(shape) == 3:
            channels, height, width_px = shape
            self.tokens, self.token_size = height, channels * width_px
        else:
            raise ValueError(f"transformer needs inputs of shape (L,) or (C, H, W), got {shape}")
        self.image = len(shape) == 3
        self.linear = nn.Linear(self.token_size, width)
        self.position = nn.Parameter(torch.randn(self.tokens, width) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.image:
            x = x.permute(0, 2, 1, 3)  # (N, H, C, W): rows first
        x = x.reshape(x.shape[0], self.tokens, self.token_size)
        return self.linear(x) + self.position


class AttentionBlock(nn.Module):
    """Pre-norm transformer block: multi-head self-attention, then an MLP, both residual."""

    def __init__(self, width: int, heads: int = 4, expansion: int = 2) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width={width} must be divisible by heads={heads}")
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        # Separate q/k/v and output Linears (not nn.MultiheadAttention, which
        # owns raw parameters *and* a sub-Linear): every parameter-owning module
        # is then one step of the forward order that layer groups follow.
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.expand = nn.Linear(width, expansion * width)
        self.project = nn.Linear(expansion * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = (
            self.qkv(self.norm1(x))
            .reshape(n, t, 3, self.heads, d // self.heads)
            .permute(2, 0, 3, 1, 4)
        )
        attended = F.scaled_dot_product_attention(q, k, v)
        x = x + self.out(attended.transpose(1, 2).reshape(n, t, d))
        return x + self.project(F.gelu(self.expand(self.norm2(x))))


class TinyTransformer(nn.Module):
    """A tiny transformer classifier: token embedding, self-attention blocks, mean pool, head."""

    def __init__(
        self,
        input_shape: Sequence[int],
        output_size: int,
        width: int = 32,
        depth: int = 2,
        heads: int = 4,
        patch: int | None = None,
    ) -> None:
        super().__init__()
        _check(width, depth, min_depth=1)
        self.embed = TokenEmbedding(input_shape, width, patch)
        self.blocks = nn.ModuleList(AttentionBlock(width, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x.mean(dim=1)))


MODEL_FAMILIES: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "resmlp": ResidualMLP,
    "cnn1d": CNN1d,
    "cnn2d": CNN2d,
    "transformer": TinyTransformer,
}


def build_model(
    family: str,
    input_shape: Sequence[int],
    output_size: int,
    width: int,
    depth: int,
    seed: int = 0,
) -> nn.Module:
    """Build a freshly initialised model of a built-in family from a seed, leaving the global RNG alone.

    Args:
        family: one of ``MODEL_FAMILIES`` (``mlp``, ``resmlp``, ``cnn1d``,
            ``cnn2d``, ``transformer``).
        input_shape: shape of one input without the batch dimension.
        output_size: classes (classification) or targets (regression).
        width: hidden width (channels for the CNNs, embedding size for the
            transformer).
        depth: hidden layers, residual/attention blocks or convolutions.
        seed: seeds the initial weights.
    """
    try:
        factory = MODEL_FAMILIES[family]
    except KeyError:
        raise ValueError(
            f"unknown model family {family!r}; built-in families: {sorted(MODEL_FAMILIES)}"
        ) from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory(tuple(input_shape), int(output_size), width=int(width), depth=int(depth))

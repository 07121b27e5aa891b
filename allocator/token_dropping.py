"""Token dropping: a transformer trains on a random part of its tokens early in the budget.

A step of a transformer costs about what its tokens cost. Training on a random
``keep`` share of each input's tokens (the same positions for the whole batch,
drawn anew at every step) until ``until`` of the budget is spent, and on all of
them after that, makes the early steps cheaper, so the same budget buys more of
them; the model evaluates on every token throughout. FLIP (Li et al. 2023)
trains vision transformers on a random subset of image patches the same way,
and tunes on all of them at the end.

Measured on the built-in jobs (BENCHMARKS.md section 5, twenty-third and
twenty-fourth rounds): half the tokens until half the budget reaches standard
training's best validation loss within 0.7 of the budget on half the train
split's transformer runs, and on held-out transformers lowers J on 7 of 9
runs. The gain comes from the extra steps: the same dropping charged as a
full step is worse than standard training. Dropping tokens to the end of the
budget is worse than stopping it half way, and a quarter of the tokens,
better on the train split's two transformers, was worse on held-out ones
(a transformer on noisy labels; twenty-fifth round).

Which models it applies to: those with a module that emits tokens, marked by
an attribute ``emits_tokens = True`` and returning ``(batch, tokens,
features)`` (the built-in transformer's ``TokenEmbedding``). A model's own
transformer opts in by setting the attribute on its token embedding; the
model must be indifferent to the number of tokens after it (attention and a
mean or attention pool are; a fixed-size flatten is not). On a model without
such a module token dropping does nothing, so a policy that carries it runs
other jobs as before.

.. warning:: The position embedding must be added before the tokens are
   dropped (``TokenEmbedding`` does), or the kept tokens lose their positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class TokenDropping:
    """Train on ``keep`` of the tokens until ``until`` of the budget is spent.

    Args:
        keep: share of each input's tokens a training step sees, in ``(0, 1)``.
        until: share of the budget after which steps see every token, in
            ``(0, 1]`` (1: to the end).
    """

    keep: float = 0.5
    until: float = 0.5

    def __post_init__(self) -> None:
        if (
            isinstance(self.keep, bool)
            or not isinstance(self.keep, (int, float))
            or not 0.0 < self.keep < 1.0
        ):
            raise ValueError(f"token dropping's keep must be in (0, 1), got {self.keep!r}")
        if (
            isinstance(self.until, bool)
            or not isinstance(self.until, (int, float))
            or not (math.isfinite(self.until) and 0.0 < self.until <= 1.0)
        ):
            raise ValueError(f"token dropping's until must be in (0, 1], got {self.until!r}")

    def to_dict(self) -> dict:
        return {"keep": float(self.keep), "until": float(self.until)}

    @classmethod
    def from_value(cls, value) -> TokenDropping | None:
        """``None``, a :class:`TokenDropping`, ``{"keep": k, "until": u}`` or ``[k, u]`` as a :class:`TokenDropping`."""
        if value is None or isinstance(value, TokenDropping):
            return value
        if isinstance(value, dict):
            unknown = set(value) - {"keep", "until"}
            if unknown:
                raise ValueError(f"unknown token dropping field(s): {sorted(unknown)}")
            return cls(**value)
        if isinstance(value, (list, tuple)) and len(value) == 2:
            return cls(*value)
        raise ValueError(f"token dropping must be {{keep, until}} or [keep, until], got {value!r}")

    @classmethod
    def parse(cls, text: str) -> TokenDropping:
        """``"KEEP,UNTIL"`` (the command line's form) as a :class:`TokenDropping`."""
        parts = text.split(",")
        try:
            keep, until = (float(part) for part in parts)
        except ValueError:
            raise ValueError(f"token dropping must be KEEP,UNTIL such as 0.5,0.5, got {text!r}") from None
        return cls(keep, until)

    def __str__(self) -> str:
        return f"{self.keep:g} of the tokens until {self.until:g} of the budget"


class TokenDropper:
    """Hooks on a model's token-emitting modules that keep some of the tokens while :attr:`active`.

    Args:
        model: the model (or a replica of it, for counting FLOPs).
        keep: share of the tokens a reduced forward pass keeps.
        generator: draws the kept positions (:meth:`draw`); ``None`` keeps the
            first ones, which is all a FLOP count needs.

    Inactive, the hooks change nothing: validation and every other forward
    pass see all tokens.
    """

    def __init__(self, model: nn.Module, keep: float, generator: torch.Generator | None = None) -> None:
        self.active = False
        self.generator = generator
        self.modules = [m for m in model.modules() if getattr(m, "emits_tokens", False)]
        self._keep = keep
        self._index: dict[int, torch.Tensor] = {}  # kept positions by token count, for this step
        self._handles = [m.register_forward_hook(self._keep_tokens) for m in self.modules]

    @property
    def applies(self) -> bool:
        """Whether the model has a module that emits tokens (otherwise the dropper does nothing)."""
        return bool(self.modules)

    def draw(self) -> None:
        """Start a new step: its first reduced pass draws the positions that this step's passes keep.

        Drawn lazily, once the token count is known; kept by count, so modules emitting
        different numbers of tokens each keep their own share.
        """
        self._index = {}

    def _kept(self, tokens: int, device: torch.device) -> torch.Tensor:
        count = max(1, round(self._keep * tokens))
        if self.generator is None:
            return torch.arange(count, device=device)
        if tokens not in self._index:
            # kept in their order: the tokens keep their relative positions
            positions = torch.randperm(tokens, generator=self.generator, device=device)[:count]
            self._index[tokens] = positions.sort().values
        return self._index[tokens]

    def _keep_tokens(self, module, inputs, output):
        if not self.active:
            return None
        return output.index_select(1, self._kept(output.shape[1], output.device))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()

"""Observation ablation: which features does a trained policy rely on?

For each feature group, the policy runs with those features held at their
training mean (what VecNormalize maps to 0, i.e. "no information") on every job
and seed of a split; the table shows how J and the wins over uniform change.
A group whose removal hurts is one the policy uses. Nothing is retrained.

    python benchmarks/ablate_features.py --policy runs/quick --split train --seeds 3

Prints a Markdown table (and writes it with ``--out FILE``).
"""

from __future__ import annotations

import argparse
import sys

import torch

from allocator import AllocatorPolicy
from allocator.evaluation import evaluate

FEATURE_GROUPS = {
    "stopping (val_loss_slope, val_loss_trend, budget_since_best)": [
        "val_loss_slope",
        "val_loss_trend",
        "budget_since_best",
    ],
    "loss level (train/val loss, change, above best, gap)": [
        "log_train_loss",
        "log_val_loss",
        "val_loss_change",
        "val_loss_above_best",
        "generalisation_gap",
    ],
    "budget used": ["budget_used"],
    "selection alignment": ["selection_alignment"],
    "data (unseen, epochs, budget epochs)": ["unseen_fraction", "log_epochs", "log_budget_epochs"],
    # gradient_coherence names the global entry and the per-layer-group ones
    "gradients (coherence, per-layer grad/weight, change)": [
        "gradient_coherence",
        "log_grad_to_weight",
        "change",
    ],
    "sample groups (loss, spread, staleness)": ["log_loss", "log_loss_spread", "staleness"],
    "previous allocation": [
        "previous_keep_fraction",
        "previous_steps",
        "previous_share",
        "previous_gate",
    ],
}
"""Feature groups by name (``ObservationLayout.positions`` finds them in every section)."""


class AblatedPolicy(AllocatorPolicy):
    """The policy, with some observation entries held at their training mean (0 once normalised)."""

    def __init__(self, policy: AllocatorPolicy, indices: list[int], label: str) -> None:
        if not policy.normalizes_observation:
            raise ValueError("the ablation needs a policy trained with VecNormalize statistics")
        self.__dict__.update(policy.__dict__)
        self.indices = indices
        self.name = label

    def normalize(self, observation):
        normalized = super().normalize(observation)
        normalized[..., self.indices] = 0.0
        return normalized


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", required=True, help="the trained policy directory")
    parser.add_argument("--split", default="train", choices=["train", "heldout", "all"])
    parser.add_argument("--seeds", default="3")
    parser.add_argument("--out", default=None, help="also write the Markdown table here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # small jobs; and a training may share the machine

    policy = AllocatorPolicy.load(args.policy)
    layout = policy.layout  # the features it reads, which may be fewer than today's
    lines = [
        f"Ablation of `{args.policy}` on the {args.split} split, seeds {args.seeds}: features held at their training mean.",
        "",
        "| features removed | mean J | change of mean J | wins over uniform |",
        "| --- | ---: | ---: | ---: |",
    ]
    full = None
    groups = [(label, names) for label, names in FEATURE_GROUPS.items() if set(layout.feature_names).issuperset(names)]
    for label, group in [("none (the policy as trained)", [])] + groups:
        controller = AblatedPolicy(policy, layout.positions(group), label)
        report = evaluate(
            controller, split=args.split, seeds=args.seeds, baselines=["uniform"], progress=False
        )
        mean_j = report.mean_objective("policy")
        full = mean_j if full is None else full
        wins, total = report.wins("uniform")
        lines.append(f"| {label} | {mean_j:.4f} | {mean_j - full:+.4f} | {wins}/{total} |")
        print(lines[-1], flush=True)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

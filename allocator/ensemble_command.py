"""Combine trained policies into one ensemble policy: the mean (or median) of their actions.

``compute-allocator ensemble --out DIR POLICY_DIR POLICY_DIR ...`` loads each
trained policy directory (for example the same preset trained with several
``--seed``\\ s) and writes one policy directory that acts with the mean of
their deterministic actions. It is read like any policy: ``evaluate --policy
DIR``, ``apply --policy DIR`` and ``AllocatorPolicy.load(DIR)`` take it as it
is, and it is as safe to load (safetensors + JSON, no pickle).

Seeds of one recipe learn different policies and fail on new jobs in
different places; the ensemble acts only where they agree (BENCHMARKS.md
section 5, seventh round, measures it). Every policy must share the
allocation spec (K, G, interval length, keep floor, dead zone, token
dropping); a mismatch is refused with the fields that differ. With
``--combine unanimous-stop`` a job stops only when every member would.
"""

from __future__ import annotations

import argparse

#: ``--combine`` choices and the ``combine`` rule each writes to policy.json.
COMBINE_CHOICES = {"mean": "mean-action", "median": "median-action", "unanimous-stop": "unanimous-stop"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "policies",
        nargs="+",
        metavar="POLICY_DIR",
        help="two or more trained policy directories (each holds policy.safetensors + policy.json)",
    )
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="the ensemble's policy directory to write (new or empty)"
    )
    parser.add_argument(
        "--combine",
        choices=tuple(COMBINE_CHOICES),
        default="mean",
        help="act with the mean of the members' actions, or their median, entry by entry (with 3 "
        "members, the middle one), or their mean but stop a job only when every member would "
        "(unanimous-stop) [default: mean]",
    )


def run(args: argparse.Namespace) -> int:
    from allocator.ensemble import PolicyEnsemble

    if len(args.policies) < 2:
        raise ValueError(f"an ensemble needs at least 2 policy directories, got {len(args.policies)}")
    ensemble = PolicyEnsemble.from_directories(args.policies, combine=COMBINE_CHOICES[args.combine])
    directory = ensemble.save(args.out)
    print(
        f"wrote {directory} ({len(ensemble.members)} members, {ensemble.combine}, spec {ensemble.spec.to_dict()})"
    )
    return 0

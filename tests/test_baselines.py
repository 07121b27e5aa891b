"""The hand-designed baseline controllers: each does what its paper says, on real tiny jobs."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from allocator import Allocation, AllocationSpec, ObservationLayout, TrainingJob, run_job
from allocator.baselines import (
    BASELINES,
    EarlyStopping,
    FreezeOut,
    LossSampling,
    PatienceRule,
    PercentileSelector,
    RandomAllocation,
    SelectiveBackprop,
    freezeout_schedule,
    make,
)
from allocator.objective import Objective

torch.set_num_threads(1)

SPEC = AllocationSpec(sample_groups=4, layer_groups=4, max_steps=5)


def tiny_job(seed: int = 0, budget_steps: int = 80) -> TrainingJob:
    """A 4-layer MLP on 1,000 synthetic samples of a noisy 4-class teacher; same seed, same job."""
    generator = torch.Generator().manual_seed(1234)
    x = torch.randn(1200, 16, generator=generator)
    teacher = torch.randn(16, 4, generator=generator)
    y = (x @ teacher + 0.5 * torch.randn(1200, 4, generator=generator)).argmax(dim=1)
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(16, 32),
        nn.ReLU(),
        nn.Linear(32, 32),
        nn.ReLU(),
        nn.Linear(32, 32),
        nn.ReLU(),
        nn.Linear(32, 4),
    )
    return TrainingJob(
        model,
        train=(x[:1000], y[:1000]),
        val=(x[1000:], y[1000:]),
        batch_size=64,
        budget_steps=budget_steps,
        device="cpu",
        seed=seed,
        spec=SPEC,
        lr=3e-3,
        name="tiny-mlp",
    )


def allocations(result) -> list[Allocation]:
    return [Allocation(**interval["allocation"]) for interval in result.intervals]


def interval_start_fractions(result) -> list[float]:
    """Share of the budget spent when each interval started (the controller acted)."""
    ends = [interval["compute_used_fraction"] for interval in result.intervals]
    return [0.0, *ends[:-1]]


# ---------------------------------------------------------------------------- every baseline


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_every_baseline_runs_a_job_to_a_finite_objective(name):
    result = run_job(tiny_job(), name)
    assert result.controller_name == name
    assert math.isfinite(result.objective)
    assert not result.diverged
    assert result.steps > 0


def test_a_controller_forgets_its_previous_job_at_reset():
    # one controller run on two jobs in turn acts on the second exactly like a fresh one
    for name in ("selective-backprop", "random", "early-stopping"):
        reused = make(name)
        run_job(tiny_job(seed=1, budget_steps=30), reused)
        again = run_job(tiny_job(seed=2, budget_steps=30), reused)
        fresh = run_job(tiny_job(seed=2, budget_steps=30), make(name))
        assert allocations(again) == allocations(fresh)
        assert again.curve == fresh.curve


def test_make_rejects_unknown_names_and_lists_the_known_ones():
    with pytest.raises(
        ValueError, match=r"unknown controller 'x'; choose one of \[.*'freezeout'.*\]"
    ):
        make("x")
    with pytest.raises(ValueError, match="unknown controller"):
        run_job(tiny_job(budget_steps=10), "no-such-baseline")


def test_make_builds_a_fresh_controller_named_by_its_registry_key():
    for name, cls in BASELINES.items():
        controller = make(name)
        assert isinstance(controller, cls) and controller.name == name
        assert make(name) is not controller


# ---------------------------------------------------------------------------- selective backprop


def test_selective_backprop_gives_a_quarter_of_each_batch_a_backward_pass():
    controller = SelectiveBackprop()
    job = tiny_job(budget_steps=30)
    result = run_job(job, controller)
    assert controller.keep_fraction == pytest.approx(1 / (3 + 1))
    for allocation in allocations(result):
        assert allocation.keep_fraction == pytest.approx(0.25)
        assert allocation.layer_gates == (1.0,) * SPEC.layer_groups
        assert allocation.sample_shares == (0.25,) * SPEC.sample_groups
    assert job.kept_count(0.25) == 16  # of the 64 drawn
    # the selector was installed on the job and saw every drawn batch
    assert job.sample_selector is controller.selector
    assert len(controller.selector) == min(1024, 64 * result.steps)


def test_selective_backprop_fraction_matches_the_papers_expected_keep_rate():
    # the paper keeps each sample with probability p**beta; for continuous losses the
    # expected share kept is E[p**beta] = 1/(beta + 1), the fixed fraction we keep
    selector = PercentileSelector(beta=3.0, history=1024)
    generator = torch.Generator().manual_seed(0)
    for _ in range(16):
        selector.keep_probability(torch.rand(64, generator=generator))
    probability = selector.keep_probability(torch.rand(4096, generator=generator))
    assert probability.mean().item() == pytest.approx(0.25, abs=0.02)


def test_selective_backprop_percentiles_are_taken_against_the_last_1024_losses():
    selector = PercentileSelector(beta=3.0, history=1024)
    generator = torch.Generator().manual_seed(0)
    seen = []
    for _ in range(25):  # 1,600 losses: the ring buffer has wrapped around
        batch = torch.rand(64, generator=generator) * 10
        seen.append(batch)
        percentiles = selector.percentiles(batch)
    history = torch.cat(seen)[-1024:]
    expected = ((history < batch[:, None]).sum(1) + (history <= batch[:, None]).sum(1)) / (2 * 1024)
    torch.testing.assert_close(percentiles, expected.float())
    assert torch.all(percentiles > 0)


def test_selective_backprop_keep_rate_rises_as_the_loss_percentile_to_the_beta():
    beta, batch, kept = 3.0, 64, 16
    selector = PercentileSelector(beta=beta, history=1024, seed=0)
    generator = torch.Generator().manual_seed(1)
    losses, chosen = [], []
    for draw in range(2000):
        batch_losses = torch.rand(batch, generator=generator)  # uniform: percentile ~ loss
        keep = torch.zeros(batch, dtype=torch.bool)
        keep[torch.topk(selector(batch_losses), kept).indices] = True  # as the job does
        if draw >= 16:  # once the history holds 1,024 losses
            losses.append(batch_losses)
            chosen.append(keep)
    percentile = torch.cat(losses).numpy()
    kept_mask = torch.cat(chosen).numpy()

    top_decile = kept_mask[percentile > 0.9].mean()
    bottom_half = kept_mask[percentile < 0.5].mean()
    assert top_decile > 0.6 and bottom_half < 0.07 and top_decile > 10 * bottom_half

    edges = np.linspace(0.0, 1.0, 11)
    centres = (edges[:-1] + edges[1:]) / 2
    decile = np.minimum((percentile * 10).astype(int), 9)
    rates = np.array([kept_mask[decile == d].mean() for d in range(10)])
    assert np.all(np.diff(rates) > 0)
    exponent = np.polyfit(np.log(centres), np.log(rates), 1)[0]
    # drawing a fixed 16 without replacement saturates the highest weights, which
    # flattens the curve a little: about 2.6 rather than the paper's 3
    assert 2.2 < exponent < 3.3


def test_selective_backprop_noise_is_seeded_from_the_job():
    losses = torch.rand(64, generator=torch.Generator().manual_seed(0))
    first, second, other = (PercentileSelector(seed=s) for s in (5, 5, 6))
    assert torch.equal(first(losses), second(losses))
    assert not torch.equal(first(losses), other(losses))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="host synchronisation is a CUDA matter")
def test_selective_backprop_selector_never_waits_for_the_gpu():
    selector = PercentileSelector(device="cuda", seed=0)
    losses = torch.rand(64, device="cuda")
    selector(losses)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(20):  # wraps the ring buffer
            torch.topk(selector(torch.rand(64, device="cuda")), 16)
    finally:
        torch.cuda.set_sync_debug_mode("default")


# ---------------------------------------------------------------------------- freezeout


def test_freezeout_schedule_is_cubic_from_t0_and_never_freezes_the_head():
    points = freezeout_schedule(4, t0=0.8)
    assert points == pytest.approx([0.8**3, (0.8 + 0.2 / 3) ** 3, (0.8 + 0.4 / 3) ** 3, 1.0])
    assert points[0] == pytest.approx(0.512)
    assert freezeout_schedule(1) == (1.0,)
    assert freezeout_schedule(3, t0=0.5, cubic=False) == pytest.approx([0.5, 0.75, 1.0])


def test_freezeout_freezes_each_group_at_its_scheduled_fraction():
    controller = FreezeOut()
    result = run_job(tiny_job(budget_steps=100), controller)
    points = controller.freeze_points
    starts = interval_start_fractions(result)
    for start, allocation in zip(starts, allocations(result)):
        expected = tuple(0.0 if start >= t else 1.0 for t in points)
        assert allocation.layer_gates == expected
        assert allocation.layer_gates[-1] == 1.0  # the head is never frozen
    # each group but the head was frozen from the first interval that started at or after t_i
    for group, t in enumerate(points[:-1]):
        frozen = [
            start for start, a in zip(starts, allocations(result)) if a.layer_gates[group] == 0.0
        ]
        assert frozen and min(frozen) == min(s for s in starts if s >= t)


class RecordingWeights:
    """Wraps a controller and snapshots every layer group's weights each time it acts."""

    def __init__(self, controller) -> None:
        self.controller = controller
        self.name = controller.name
        self.snapshots: list[list[list[torch.Tensor]]] = []

    def reset(self, job) -> None:
        self.job = job
        self.controller.reset(job)

    def act(self, observation) -> Allocation:
        self.snapshots.append(self.group_weights())
        return self.controller.act(observation)

    def group_weights(self) -> list[list[torch.Tensor]]:
        named = dict(self.job.model.named_parameters())
        return [
            [named[n].detach().clone() for n in g.parameter_names] for g in self.job.layer_groups
        ]


def test_frozen_groups_keep_their_weights_bit_for_bit():
    recorder = RecordingWeights(FreezeOut())
    result = run_job(tiny_job(budget_steps=100), recorder)
    final = recorder.group_weights()
    gates = [a.layer_gates for a in allocations(result)]
    for group in range(SPEC.layer_groups - 1):
        freeze_at = next(i for i, g in enumerate(gates) if g[group] == 0.0)
        for before, after in zip(recorder.snapshots[freeze_at][group], final[group]):
            assert torch.equal(before, after)
        # it did train before its freeze point
        assert any(
            not torch.equal(a, b) for a, b in zip(recorder.snapshots[0][group], final[group])
        )
    head = SPEC.layer_groups - 1
    assert any(not torch.equal(a, b) for a, b in zip(recorder.snapshots[-1][head], final[head]))


# ---------------------------------------------------------------------------- loss sampling


def observation_with_group_losses(spec: AllocationSpec, relative_losses) -> np.ndarray:
    layout = ObservationLayout(spec)
    observation = np.zeros(layout.size, dtype=np.float32)
    start = layout.global_size + layout.sample_index("log_loss")
    observation[
        start : start + spec.sample_groups * layout.sample_group_size : layout.sample_group_size
    ] = np.log(relative_losses)
    return observation


def test_loss_sampling_gives_higher_loss_groups_larger_shares():
    controller = LossSampling()
    controller.reset(SimpleNamespace(spec=SPEC))
    allocation = controller.act(observation_with_group_losses(SPEC, [0.01, 0.1, 0.3, 1.2]))
    shares = np.array(allocation.sample_shares)
    assert np.all(np.diff(shares) > 0)
    assert shares.sum() == pytest.approx(1.0)
    assert shares.min() >= controller.floor / SPEC.sample_groups  # no group starves
    # above the floor, shares are proportional to loss
    above_floor = shares - controller.floor / SPEC.sample_groups
    assert above_floor[3] / above_floor[1] == pytest.approx(12.0)
    assert (allocation.keep_fraction, allocation.steps) == (1.0, SPEC.max_steps)
    # equal losses (as before any training) give uniform shares
    assert controller.act(
        observation_with_group_losses(SPEC, [0.5] * 4)
    ).sample_shares == pytest.approx([0.25] * 4)


def test_loss_sampling_draws_more_of_the_hardest_group_on_a_real_job():
    result = run_job(tiny_job(budget_steps=60), "loss-sampling")
    later = allocations(result)[2:]
    assert later and all(a.sample_shares[-1] > a.sample_shares[0] for a in later)


# ---------------------------------------------------------------------------- random


def test_random_allocations_repeat_with_the_seed_and_differ_across_seeds():
    first = allocations(run_job(tiny_job(seed=3, budget_steps=40), "random"))
    again = allocations(run_job(tiny_job(seed=3, budget_steps=40), "random"))
    other = allocations(run_job(tiny_job(seed=4, budget_steps=40), "random"))
    assert first == again
    assert first != other
    assert len({a.keep_fraction for a in first}) > 1  # actually random, not a constant


def test_random_ignores_the_dead_zone_of_the_policy_it_is_compared_with():
    draws = {}
    for dead_zone in (0.0, 0.3):
        job = SimpleNamespace(spec=AllocationSpec(dead_zone=dead_zone), seed=0, compute_fraction=0.5)
        controller = RandomAllocation()
        controller.reset(job)
        draws[dead_zone] = [controller.act(None) for _ in range(20)]
    assert draws[0.0] == draws[0.3]


def test_random_never_stops_before_a_tenth_of_the_budget():
    spec = AllocationSpec(max_steps=1)  # a quarter of all random actions would stop
    job = SimpleNamespace(spec=spec, seed=0, compute_fraction=0.0)
    controller = RandomAllocation()
    controller.reset(job)
    assert not any(controller.act(None).stops for _ in range(200))
    job.compute_fraction = 0.1
    assert any(controller.act(None).stops for _ in range(200))


def test_stop_before_budget_is_standard_training_without_the_interval_that_ends_the_budget():
    # budget 80 steps in intervals of 5: uniform runs 16 intervals, the rule stops after 15
    uniform = run_job(tiny_job(), "uniform")
    ruled = run_job(tiny_job(), "stop-before-budget")
    assert uniform.steps == 80 and ruled.steps == 75
    assert ruled.curve == uniform.curve[: len(ruled.curve)]  # the same run until it stops
    assert ruled.compute_used / ruled.budget == pytest.approx(75 / 80)


# ---------------------------------------------------------------------------- early stopping


def test_patience_rule_stops_on_the_patience_th_validation_in_a_row_without_improvement():
    rule = PatienceRule(patience=2)
    rule.reset(1.0)
    assert [rule.update(loss) for loss in (0.9, 0.95, 0.8, 0.85, 0.81)] == [False, False, False, False, True]
    assert rule.best == 0.8
    # replayed on a curve (initial loss first): the index of the validation it stops after
    assert PatienceRule(2).stop_index([1.0, 0.9, 0.95, 0.8, 0.85, 0.81, 0.7]) == 5
    assert PatienceRule(2).stop_index([1.0, 0.9, 0.8, 0.7]) == 3  # never fires: the last


def test_patience_rule_min_delta_is_a_share_of_the_best_loss_and_nan_never_improves():
    # 0.995 improves on 1.0 by 0.5 %, less than min_delta 1 %: it counts as no improvement
    assert PatienceRule(1, min_delta=0.01).stop_index([1.0, 0.995, 0.5]) == 1
    assert PatienceRule(1, min_delta=0.001).stop_index([1.0, 0.995, 0.5]) == 2
    assert PatienceRule(1).stop_index([1.0, float("nan"), 0.5]) == 1
    assert PatienceRule(1).stop_index([1.0, 1.0, 0.5]) == 1  # equalling the best is not improving


@pytest.mark.parametrize(
    "patience, min_delta", [(0, 0.0), (1.5, 0.0), (True, 0.0), (2, -0.1), (2, 1.0), (2, math.nan)]
)
def test_patience_rule_rejects_bad_settings_in_one_line(patience, min_delta):
    with pytest.raises(ValueError, match="patience|min_delta"):
        EarlyStopping(patience, min_delta)


# "early-stopping" by name is patience 1, the train split's choice (BENCHMARKS.md section 5, forty-third round)
@pytest.mark.parametrize("patience, controller", [(1, "early-stopping"), (2, EarlyStopping(2))])
def test_early_stopping_is_uniforms_run_cut_where_the_patience_rule_stops(patience, controller):
    # what benchmarks/early_stopping_sweep.py relies on: J of a setting from uniform's curve alone
    uniform = run_job(tiny_job(budget_steps=300), "uniform")
    stop = PatienceRule(patience).stop_index([loss for _, loss in uniform.curve])
    assert stop < len(uniform.curve) - 1  # the noisy validation loss fails to improve before the budget
    stopped = run_job(tiny_job(budget_steps=300), controller)
    assert stopped.stopped and stopped.curve == uniform.curve[: stop + 1]
    assert stopped.objective == pytest.approx(Objective().stopped_values(uniform.curve)[stop])
    assert all(allocation == Allocation.uniform(SPEC) for allocation in allocations(stopped)[:-1])


def test_early_stopping_with_a_patience_beyond_the_run_is_uniform():
    assert run_job(tiny_job(), EarlyStopping(patience=100)).curve == run_job(tiny_job(), "uniform").curve


def test_the_loss_share_prior_at_standard_training_samples_as_loss_sampling_does():
    """The zero action of a policy with ``share_prior: loss`` is the loss-sampling baseline."""
    loss_sampling = run_job(tiny_job(), "loss-sampling")
    job = tiny_job()
    job.share_prior = "loss"
    prior = run_job(job, "uniform")
    assert np.array([a.sample_shares for a in allocations(prior)]) == pytest.approx(
        np.array([a.sample_shares for a in allocations(loss_sampling)]), abs=1e-6
    )
    assert np.array(prior.curve) == pytest.approx(np.array(loss_sampling.curve), rel=1e-6)
    assert np.array(prior.curve) != pytest.approx(np.array(run_job(tiny_job(), "uniform").curve), rel=1e-6)


def test_loss_sampling_before_budget_is_loss_sampling_without_the_interval_that_ends_the_budget():
    loss_sampling = run_job(tiny_job(), "loss-sampling")
    ruled = run_job(tiny_job(), "loss-sampling-before-budget")
    assert loss_sampling.steps == 80 and ruled.steps == 75
    assert ruled.curve == loss_sampling.curve[: len(ruled.curve)]


def test_a_policys_rules_stop_before_budget_and_share_prior_do_not_pass_to_the_baselines():
    """evaluate gives every controller's job the policy's spec; the rule is the policy's own."""
    import dataclasses
    from pathlib import Path

    from allocator import AllocatorPolicy

    policy = AllocatorPolicy.load(Path(__file__).resolve().parents[1] / "benchmarks" / "heldout-quick" / "policy")
    policy.spec = dataclasses.replace(policy.spec, stop_before_budget=True, share_prior="loss")
    with_the_policys_spec = tiny_job()
    with_the_policys_spec.use_spec(policy.spec)
    uniform = run_job(with_the_policys_spec, "uniform")
    assert uniform.steps == 80  # standard training, to the end
    assert all(a.sample_shares == (0.25,) * 4 for a in allocations(uniform))  # and without the prior
    job = tiny_job()
    policy.reset(job)
    assert job.stop_before_budget and job.share_prior == "loss"

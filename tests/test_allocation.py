"""Allocations: validation, the uniform allocation and the centred action mapping."""

import dataclasses

import numpy as np
import pytest

from allocator import Allocation, AllocationSpec

SPEC = AllocationSpec(sample_groups=4, layer_groups=3, max_steps=10, min_keep_fraction=0.1)


def test_zero_action_is_uniform_allocation():
    allocation = SPEC.to_allocation(np.zeros(SPEC.action_size))
    assert allocation == Allocation.uniform(SPEC)
    assert allocation.sample_shares == (0.25,) * 4
    assert allocation.keep_fraction == 1.0 and allocation.steps == 10


def test_minus_one_action_stops_with_minimum_keep_and_all_groups_frozen():
    allocation = SPEC.to_allocation(-np.ones(SPEC.action_size))
    assert allocation.steps == 0 and allocation.stops
    assert allocation.keep_fraction == pytest.approx(0.1)
    assert allocation.layer_gates == (0.0, 0.0, 0.0)


def test_keep_entry_selects_only_where_selection_saves_compute():
    from tests.conftest import make_job

    keeps = [
        SPEC.to_allocation(np.r_[np.zeros(4), a, np.zeros(4)]).keep_fraction for a in np.linspace(-1, 1, 201)
    ]
    assert all(k == 1.0 or k <= 2 / 3 + 1e-9 for k in keeps)  # nothing in the costly band (2/3, 1)
    assert SPEC.to_allocation(np.r_[np.zeros(4), -0.01, np.zeros(4)]).keep_fraction == pytest.approx(
        2 / 3, abs=0.01
    )

    job = make_job()  # a scoring pass plus forward and backward on 2/3 costs about one plain step
    trained = [True] * len(job.layer_groups)
    assert job.step_flops(2 / 3, trained) <= 1.05 * job.step_flops(1.0, trained)
    assert job.step_flops(0.8, trained) > 1.1 * job.step_flops(1.0, trained)


def test_action_round_trips_through_allocation():
    rng = np.random.default_rng(0)
    for _ in range(50):
        action = rng.uniform(-1, 1, SPEC.action_size)
        allocation = SPEC.to_allocation(action)
        again = SPEC.to_allocation(SPEC.to_action(allocation))
        assert np.allclose(again.sample_shares, allocation.sample_shares, atol=1e-6)
        assert again.keep_fraction == pytest.approx(allocation.keep_fraction, abs=1e-6)
        assert np.allclose(again.layer_gates, allocation.layer_gates, atol=1e-6)
        assert again.steps == allocation.steps


DEAD = AllocationSpec(sample_groups=4, layer_groups=3, max_steps=10, min_keep_fraction=0.1, dead_zone=0.1)


def test_a_dead_zone_turns_actions_near_zero_into_exactly_standard_training():
    """A policy's mean action is never exactly 0: within the dead zone it still trains like uniform."""
    near_zero = np.array([0.09, -0.05, 0.0, 0.1, -0.1, 0.0, -0.1, -0.08, -0.1])
    assert DEAD.to_allocation(near_zero) == Allocation.uniform(DEAD)
    without = SPEC.to_allocation(near_zero)
    assert without.sample_shares != (0.25,) * 4 and without.layer_gates != (1.0,) * 3
    assert without.keep_fraction < 1.0 and without.steps < 10
    shifted = DEAD.to_allocation(np.r_[[0.5, 0.5, 0.5, 0.55], np.zeros(5)])
    assert shifted.sample_shares == (0.25,) * 4, "only deviations from the entries' mean count"


def test_beyond_the_dead_zone_the_mappings_go_on_continuously_to_the_same_ends():
    just_past = DEAD.to_allocation(np.r_[[0.0, 0.0, 0.0, 0.1001], -0.1001, -0.1001, 0.0, 0.0, -0.1001])
    assert just_past.sample_shares == pytest.approx((0.25,) * 4, abs=1e-3)
    assert just_past.keep_fraction == pytest.approx(2 / 3, abs=1e-3)  # selection starts at break-even
    assert just_past.layer_gates[0] == pytest.approx(1.0, abs=1e-3)
    assert just_past.steps == 10
    assert DEAD.to_allocation(-np.ones(DEAD.action_size)) == SPEC.to_allocation(-np.ones(SPEC.action_size))
    assert DEAD.to_allocation(np.r_[np.zeros(8), -0.5]).steps == 1
    assert DEAD.to_allocation(np.r_[np.zeros(8), -0.51]).steps == 0
    extreme = np.r_[[1.0, -1.0, -1.0, -1.0], np.zeros(5)]
    assert DEAD.to_allocation(extreme).sample_shares[0] < SPEC.to_allocation(extreme).sample_shares[0]


def test_action_round_trips_through_allocation_with_a_dead_zone():
    rng = np.random.default_rng(1)
    for _ in range(200):
        action = rng.uniform(-1, 1, DEAD.action_size)
        allocation = DEAD.to_allocation(action)
        back = DEAD.to_action(allocation)
        assert np.all(np.abs(back) <= 1.0)
        again = DEAD.to_allocation(back)
        assert np.allclose(again.sample_shares, allocation.sample_shares, atol=1e-6)
        assert again.keep_fraction == pytest.approx(allocation.keep_fraction, abs=1e-6)
        assert np.allclose(again.layer_gates, allocation.layer_gates, atol=1e-6)
        assert again.steps == allocation.steps
    assert np.all(DEAD.to_action(Allocation.uniform(DEAD)) == 0.0)


@pytest.mark.parametrize("dead_zone", [-0.1, 0.5, float("nan")])
def test_dead_zone_must_leave_room_before_the_stop_region(dead_zone):
    with pytest.raises(ValueError, match="dead_zone must be in"):
        AllocationSpec(dead_zone=dead_zone)


def test_spec_without_a_dead_zone_field_reads_as_the_original_mapping():
    """policy.json files written before the field existed keep their meaning."""
    old = {"sample_groups": 4, "layer_groups": 3, "max_steps": 10, "min_keep_fraction": 0.1}
    assert AllocationSpec.from_dict(old) == SPEC and SPEC.dead_zone == 0.0
    assert AllocationSpec.from_dict(DEAD.to_dict()) == DEAD


def test_a_min_layer_gate_of_one_takes_the_layer_lever_away():
    no_gates = AllocationSpec(sample_groups=4, layer_groups=3, max_steps=10, min_layer_gate=1.0)
    rng = np.random.default_rng(0)
    for _ in range(20):
        action = rng.uniform(-1, 1, no_gates.action_size)
        allocation = no_gates.to_allocation(action)
        assert allocation.layer_gates == (1.0, 1.0, 1.0)
        # the other levers map as without the floor
        assert allocation == dataclasses.replace(SPEC.to_allocation(action), layer_gates=(1.0, 1.0, 1.0))
    assert np.all(no_gates.to_action(Allocation.uniform(no_gates)) == 0.0)


def test_gates_map_onto_min_layer_gate_to_one_and_back():
    half = AllocationSpec(sample_groups=2, layer_groups=3, max_steps=10, min_layer_gate=0.5, dead_zone=0.1)
    action = np.array([0.0, 0.0, 0.0, -1.0, -0.55, 0.3, 0.0])
    assert half.to_allocation(action).layer_gates == pytest.approx((0.5, 0.75, 1.0))
    for gates in [(0.5, 0.75, 1.0), (0.6, 0.99, 0.5)]:
        allocation = Allocation((0.5, 0.5), 1.0, gates, 10)
        assert half.to_allocation(half.to_action(allocation)).layer_gates == pytest.approx(gates, abs=1e-6)
    # a gate below the floor cannot be asked for: it maps to the floor
    below = Allocation((0.5, 0.5), 1.0, (0.1, 1.0, 1.0), 10)
    assert half.to_allocation(half.to_action(below)).layer_gates == pytest.approx((0.5, 1.0, 1.0))


def test_min_layer_gate_is_written_only_when_set_and_read_back():
    assert "min_layer_gate" not in SPEC.to_dict()  # policies of the original mapping write what they did
    floored = AllocationSpec(min_layer_gate=1.0)
    assert floored.to_dict()["min_layer_gate"] == 1.0
    assert AllocationSpec.from_dict(floored.to_dict()) == floored
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="min_layer_gate must be in"):
            AllocationSpec(min_layer_gate=bad)


def test_stop_before_budget_is_written_only_when_set_and_read_back():
    assert "stop_before_budget" not in SPEC.to_dict()  # policies without the rule write what they did
    ruled = AllocationSpec(stop_before_budget=True)
    assert ruled.to_dict()["stop_before_budget"] is True
    assert AllocationSpec.from_dict(ruled.to_dict()) == ruled
    with pytest.raises(ValueError, match="stop_before_budget must be true or false, got 'yes'"):
        AllocationSpec(stop_before_budget="yes")


@pytest.mark.parametrize(
    ("field", "value", "wrong", "choices"),
    [
        ("share_prior", "loss", "losses", "uniform, loss"),
        ("layer_lever", "convolutional", "cnn", "all, convolutional, cnn-first-group"),
        ("gate_mapping", "binary", "round", "linear, binary"),
        ("gate_decision", "job", "episode", "interval, job"),
    ],
)
def test_a_spec_choice_is_written_only_when_set_read_back_and_checked(field, value, wrong, choices):
    # policies trained before the choice existed write (and read) the policy.json they always did
    assert field not in SPEC.to_dict()
    chosen = AllocationSpec(**{field: value})
    assert chosen.to_dict()[field] == value
    assert AllocationSpec.from_dict(chosen.to_dict()) == chosen
    with pytest.raises(ValueError, match=f"{field} must be one of {choices}, got '{wrong}'"):
        AllocationSpec(**{field: wrong})


def test_loss_proportional_shares_keep_a_floor_and_ignore_a_shift_of_the_log_losses():
    from allocator.allocation import loss_proportional_shares

    log_losses = np.log([0.1, 0.2, 0.3, 0.4])
    shares = loss_proportional_shares(log_losses)
    assert shares.sum() == pytest.approx(1.0)
    assert shares == pytest.approx(0.25 / 4 + 0.75 * np.array([0.1, 0.2, 0.3, 0.4]))
    assert loss_proportional_shares(log_losses - 7.0) == pytest.approx(shares)  # relative or absolute
    assert loss_proportional_shares(np.zeros(4)) == pytest.approx([0.25] * 4)  # equal losses: equal shares


def test_out_of_range_actions_are_clipped_and_non_finite_ones_rejected():
    assert SPEC.to_allocation(np.full(SPEC.action_size, 5.0)) == SPEC.to_allocation(np.ones(SPEC.action_size))
    with pytest.raises(ValueError, match="finite"):
        SPEC.to_allocation(np.full(SPEC.action_size, np.nan))
    with pytest.raises(ValueError, match="entries"):
        SPEC.to_allocation(np.zeros(3))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(sample_shares=(0.5, 0.6), keep_fraction=1.0, layer_gates=(1.0,), steps=1), "sum to 1"),
        (
            dict(sample_shares=(float("nan"), 1.0), keep_fraction=1.0, layer_gates=(1.0,), steps=1),
            "sample_shares",
        ),
        (dict(sample_shares=(1.0,), keep_fraction=0.0, layer_gates=(1.0,), steps=1), "keep_fraction"),
        (dict(sample_shares=(1.0,), keep_fraction=1.0, layer_gates=(1.5,), steps=1), "layer_gates"),
        (dict(sample_shares=(1.0,), keep_fraction=1.0, layer_gates=(1.0,), steps=-1), "steps"),
        (dict(sample_shares=(1.0,), keep_fraction=1.0, layer_gates=(1.0,), steps=1.5), "steps"),
    ],
)
def test_invalid_allocation_raises_value_error_naming_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Allocation(**kwargs)


def test_allocation_is_frozen():
    allocation = Allocation.uniform(SPEC)
    with pytest.raises(AttributeError):
        allocation.steps = 3


def test_spec_rejects_allocations_of_another_shape():
    other = Allocation.uniform(AllocationSpec(sample_groups=2, layer_groups=3))
    with pytest.raises(ValueError, match="sample_shares has 2 groups"):
        SPEC.check(other)
    with pytest.raises(ValueError, match="max_steps"):
        SPEC.check(Allocation((0.25,) * 4, 1.0, (1.0,) * 3, 11))


@pytest.mark.parametrize("field", ["sample_groups", "layer_groups", "max_steps"])
def test_spec_rejects_non_positive_sizes(field):
    with pytest.raises(ValueError, match=field):
        AllocationSpec(**{field: 0})


def test_steps_fall_from_max_to_one_and_a_quarter_of_the_range_stops():
    spec = AllocationSpec(max_steps=10)
    action = np.zeros(spec.action_size)
    for entry, steps in [(0.0, 10), (0.7, 10), (-0.2, 6), (-0.5, 1), (-0.51, 0), (-1.0, 0)]:
        action[-1] = entry
        assert spec.to_allocation(action).steps == steps

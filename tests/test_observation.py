"""The observation: its stopping features (slope and trend of the validation loss per unit of
budget) and finding features by name in the layout."""

import dataclasses
import math

import numpy as np
import pytest

from allocator.allocation import Allocation, AllocationSpec
from allocator.stats import IntervalStatistics, ObservationBuilder, ObservationLayout

SPEC = AllocationSpec(sample_groups=2, layer_groups=2, max_steps=10)
UNIFORM = Allocation(sample_shares=(0.5, 0.5), keep_fraction=1.0, layer_gates=(1.0, 1.0), steps=10)


def interval(budget_used: float, val_loss: float) -> IntervalStatistics:
    return IntervalStatistics(
        budget_used=budget_used,
        train_loss=val_loss,
        val_loss=val_loss,
        samples_drawn=100,
        training_set_size=1000,
        budget_samples=5000,
        unseen_fraction=0.9,
        group_log_loss=np.zeros(2),
        group_log_loss_spread=np.zeros(2),
        group_staleness=np.zeros(2),
        layer_log_grad_to_weight=np.zeros(2),
        layer_coherence=np.ones(2),
    )


def features(builder: ObservationBuilder, observation: np.ndarray, *names: str) -> list[float]:
    layout = builder.layout
    return [float(observation[layout.global_index(name)]) for name in names]


def test_slope_is_the_change_of_log_validation_loss_per_unit_of_budget():
    builder = ObservationBuilder(SPEC, initial_val_loss=2.0)
    builder.initial(budget_samples=5000, training_set_size=1000, allocation=UNIFORM)
    builder.update(interval(0.1, 1.0), UNIFORM)
    observation = builder.update(interval(0.3, 0.9), UNIFORM)  # 0.2 of the budget for a 10 % drop
    (slope,) = features(builder, observation, "val_loss_slope")
    assert slope == pytest.approx(math.log(0.9 / 1.0) / 0.2, rel=1e-5)


def test_trend_averages_slopes_so_one_noisy_interval_does_not_flip_it():
    builder = ObservationBuilder(SPEC, initial_val_loss=1.0)
    builder.initial(budget_samples=5000, training_set_size=1000, allocation=UNIFORM)
    losses = [0.8, 0.7, 0.6, 0.62]  # steady improvement, then one noisy uptick
    observations = [builder.update(interval(0.1 * (i + 1), loss), UNIFORM) for i, loss in enumerate(losses)]
    slope, trend = features(builder, observations[-1], "val_loss_slope", "val_loss_trend")
    assert slope > 0 > trend


def test_budget_since_best_counts_from_the_best_validation_loss():
    builder = ObservationBuilder(SPEC, initial_val_loss=1.0)
    builder.initial(budget_samples=5000, training_set_size=1000, allocation=UNIFORM)
    for budget, loss in [(0.1, 0.8), (0.2, 0.5), (0.3, 0.6), (0.45, 0.7)]:
        observation = builder.update(interval(budget, loss), UNIFORM)
    (since_best,) = features(builder, observation, "budget_since_best")
    assert since_best == pytest.approx(0.25)


def test_an_interval_that_spent_no_budget_keeps_the_last_trend():
    builder = ObservationBuilder(SPEC, initial_val_loss=1.0)
    builder.initial(budget_samples=5000, training_set_size=1000, allocation=UNIFORM)
    builder.update(interval(0.1, 0.8), UNIFORM)
    before = builder.update(interval(0.2, 0.7), UNIFORM)
    after = builder.update(interval(0.2, 0.7), UNIFORM)
    assert np.all(np.isfinite(after))
    assert features(builder, after, "val_loss_trend") == features(builder, before, "val_loss_trend")


def test_selection_alignment_is_the_last_probe_and_starts_at_one():
    builder = ObservationBuilder(SPEC, initial_val_loss=1.0)
    start = builder.initial(budget_samples=5000, training_set_size=1000, allocation=UNIFORM)
    assert features(builder, start, "selection_alignment") == [1.0]
    probed = builder.update(dataclasses.replace(interval(0.2, 0.9), selection_alignment=0.4), UNIFORM)
    assert features(builder, probed, "selection_alignment") == [pytest.approx(0.4)]
    # an interval that ran no step has no probe: the last one stands
    unprobed = builder.update(dataclasses.replace(interval(0.2, 0.9), selection_alignment=float("nan")), UNIFORM)
    assert features(builder, unprobed, "selection_alignment") == [pytest.approx(0.4)]


def test_layout_documents_sixteen_global_features():
    layout = ObservationLayout(SPEC)
    assert layout.global_size == 16
    assert layout.size == 16 + 2 * 4 + 2 * 4
    assert layout.to_dict()["global"][-4:] == [
        "val_loss_slope",
        "val_loss_trend",
        "budget_since_best",
        "selection_alignment",
    ]


def test_a_feature_name_finds_its_entries_in_every_section_it_appears_in():
    layout = ObservationLayout(AllocationSpec(sample_groups=3, layer_groups=2, max_steps=10))
    marked = np.zeros(layout.size)
    marked[layout.positions(["budget_used", "gradient_coherence", "previous_share"])] = 1.0
    assert layout.global_features(marked)[layout.global_index("budget_used")] == 1.0
    assert layout.global_features(marked)[layout.global_index("gradient_coherence")] == 1.0
    assert np.all(layout.layer_group_features(marked)[:, layout.layer_index("gradient_coherence")] == 1.0)
    assert np.all(layout.sample_group_features(marked)[:, layout.sample_index("previous_share")] == 1.0)
    assert marked.sum() == 2 + 2 + 3  # and nothing else


def test_an_unknown_feature_name_is_refused_with_the_known_names():
    with pytest.raises(ValueError, match="unknown observation feature.*'budget_usd'.*budget_used"):
        ObservationLayout(SPEC).positions(["budget_usd"])


def test_an_older_layout_reads_its_own_features_out_of_todays_observation_by_name():
    """A policy trained before selection_alignment existed lists its features in policy.json."""
    today = ObservationLayout(SPEC)
    names = today.to_dict()
    names["global"] = [n for n in names["global"] if n != "selection_alignment"]
    older = ObservationLayout.from_names(SPEC, names)
    assert not older.is_current and today.is_current
    assert older.size == today.size - 1
    observation = np.arange(today.size, dtype=float)
    selected = observation[older.positions_in(today)]
    assert np.array_equal(older.global_features(selected), today.global_features(observation)[:-1])
    assert np.array_equal(older.sample_group_features(selected), today.sample_group_features(observation))
    assert np.array_equal(older.layer_group_features(selected), today.layer_group_features(observation))


def test_a_layout_naming_a_feature_this_version_lacks_is_refused():
    names = ObservationLayout(SPEC).to_dict()
    names["global"] = names["global"] + ["learning_rate"]
    with pytest.raises(ValueError, match="'learning_rate'.* not in this version's observation"):
        ObservationLayout.from_names(SPEC, names)

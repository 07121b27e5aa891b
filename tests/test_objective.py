"""The C/R-scaled objective J."""

import pytest

from allocator import Objective
from allocator.objective import ObjectiveMeter


def test_stopping_at_once_scores_one_minus_s_plus_w():
    meter = ObjectiveMeter(Objective(), initial_val_loss=2.0)
    meter.finish()
    assert meter.value == pytest.approx(0.8 + 1.0)


def test_j_weights_each_interval_loss_by_its_share_of_the_budget():
    objective = Objective(s=0.2, w=1.0)
    meter = ObjectiveMeter(objective, initial_val_loss=2.0)
    meter.add_interval(0.5, 1.0, diverged=False)  # l = 0.5
    meter.add_interval(0.25, 0.5, diverged=False)  # l = 0.25
    meter.finish()  # U = 0.25 at l_T = 0.25
    expected = 0.5 * 0.5 + 0.25 * 0.25 + 0.25 * 0.8 * 0.25 + 1.0 * 0.25
    assert meter.value == pytest.approx(expected)
    assert objective.total([(0.5, 0.5), (0.25, 0.25)], 0.25) == pytest.approx(expected)


def test_credit_s_makes_unused_budget_cheaper():
    results = []
    for s in (0.0, 0.5, 1.0):
        meter = ObjectiveMeter(Objective(s=s), 1.0)
        meter.add_interval(0.5, 0.5, diverged=False)
        meter.finish()
        results.append(meter.value)
    assert results[0] > results[1] > results[2]


def test_divergence_is_charged_worse_than_stopping_at_once():
    meter = ObjectiveMeter(Objective(), 1.0)
    meter.add_interval(0.1, float("nan"), diverged=True)
    meter.finish()
    assert meter.value > 1.8
    assert meter.value == pytest.approx(0.1 * 3.0 + 0.9 * 0.8 * 3.0 + 3.0)


@pytest.mark.parametrize("kwargs", [dict(s=-0.1), dict(s=1.5), dict(w=-1.0), dict(divergence_loss=0.5)])
def test_invalid_parameters_raise(kwargs):
    with pytest.raises(ValueError):
        Objective(**kwargs)


def test_j_of_a_curve_stopped_after_each_interval_ends_at_the_runs_own_j():
    from allocator import run_job
    from tests.conftest import make_job

    result = run_job(make_job(budget_steps=40), "uniform")
    values = Objective().stopped_values(result.curve)
    assert len(values) == len(result.curve)
    assert values[-1] == pytest.approx(result.objective, rel=1e-9)  # stopped after the last interval: the run
    assert values[0] == pytest.approx(1.8)  # stopped at once: (1 - s) + w
    assert min(values) <= result.objective


def test_j_stopped_one_interval_early_is_what_a_run_that_stops_there_scores():
    """Not an extrapolation: a real run that skips the last interval scores the same."""
    from allocator import run_job
    from tests.conftest import make_job

    full = run_job(make_job(budget_steps=40), "uniform")
    assert len(full.curve) - 1 >= 3  # intervals
    stopped = run_job(make_job(budget_steps=40), "stop-before-budget")  # skips the last interval
    values = Objective().stopped_values(full.curve)
    assert stopped.curve == full.curve[:-1]  # the same run, one interval shorter
    assert values[-2] == pytest.approx(stopped.objective, rel=1e-9)
    assert values[-2] != pytest.approx(values[-1], rel=1e-6)

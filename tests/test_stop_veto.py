"""A stop veto travels in policy.json and refuses a policy's stops where its regression says continuing pays."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from agents.stop_veto_fit import labelled_intervals
from allocator import AllocatorPolicy, Objective, run_job
from allocator.cli import main
from allocator.ensemble import PolicyEnsemble
from allocator.evaluation import describe_policy
from allocator.stats import GLOBAL_FEATURES, ObservationLayout
from allocator.stop_veto import StopVeto
from tests.conftest import make_job
from tests.test_ensemble import DEFAULT, QUICK, ROOT, always_stopping, pinned_steps
from tests.test_ensemble import observations as _observations


def veto_until(budget_used: float) -> StopVeto:
    """A veto that says continuing pays while the job has used less than ``budget_used`` of its budget."""
    return StopVeto(features=("budget_used",), mean=(budget_used,), scale=(1.0,), weights=(-1.0,), intercept=0.0)


def trained(result) -> list[dict]:
    return [interval for interval in result.intervals if interval["steps"] > 0]


def test_a_refused_stop_runs_what_the_policy_asked_for_at_full_length_until_the_veto_lets_it_stand():
    stopper = always_stopping(AllocatorPolicy.load(QUICK))
    alone = run_job(make_job(budget_steps=200), stopper)
    assert trained(alone) == []  # it stops every job at once
    never = run_job(make_job(budget_steps=200), stopper.with_stop_veto(veto_until(-1.0)))
    assert trained(never) == [] and never.objective == alone.objective

    vetoed = stopper.with_stop_veto(veto_until(0.5))
    job = make_job(budget_steps=200)
    vetoed.reset(job)
    allocations = []
    while not job.done:
        observation = job.observation()
        asked, allocation = stopper.act(observation), vetoed.act(observation)
        assert asked.steps == 0
        if allocation.steps == 0:
            break
        # the stop refused: the shares, keep fraction and gates it asked for, for the full interval
        assert allocation == dataclasses.replace(asked, steps=stopper.spec.max_steps) and vetoed.stop_vetoed
        allocations.append(allocation)
        job.advance(allocation)
    assert len(allocations) > 1 and not vetoed.stop_vetoed  # the last stop stands
    assert 0.5 <= job.compute_fraction < 0.5 + stopper.spec.max_steps / 200 + 1e-9


def test_a_veto_is_saved_in_policy_json_and_loads_to_act_the_same(tmp_path):
    veto = dataclasses.replace(veto_until(0.5), extra={"fitted_for": "a test"})
    vetoed = always_stopping(AllocatorPolicy.load(QUICK)).with_stop_veto(veto)
    vetoed.save(tmp_path / "vetoed")
    written = json.loads((tmp_path / "vetoed" / "policy.json").read_text())
    assert written["stop_veto"] == {
        "features": ["budget_used"], "mean": [0.5], "scale": [1.0], "weights": [-1.0], "intercept": 0.0,
        "extra": {"fitted_for": "a test"},
    }
    loaded = AllocatorPolicy.load(tmp_path / "vetoed")
    assert loaded.stop_veto == veto
    runs = [run_job(make_job(budget_steps=200), policy) for policy in (loaded, vetoed)]
    assert [i["allocation"] for i in runs[0].intervals] == [i["allocation"] for i in runs[1].intervals]
    assert runs[0].objective == runs[1].objective and len(trained(runs[0])) > 1
    assert "stops vetoed where continuing pays" in describe_policy(loaded)
    # taken off again, the key goes with it
    assert "stop_veto" not in loaded.with_stop_veto(None).metadata and loaded.with_stop_veto(None).stop_veto is None
    assert describe_policy(AllocatorPolicy.load(QUICK)) == []


def test_a_veto_fitted_on_another_observation_or_damaged_is_refused_at_load_saying_why(tmp_path, capsys):
    AllocatorPolicy.load(QUICK).with_stop_veto(veto_until(0.5)).save(tmp_path / "vetoed")
    config = tmp_path / "vetoed" / "policy.json"
    good = json.loads(config.read_text())

    def load_with(**changes):
        config.write_text(json.dumps({**good, "stop_veto": {**good["stop_veto"], **changes}}))
        return AllocatorPolicy.load(tmp_path / "vetoed")

    with pytest.raises(ValueError, match=r"a_feature_of_another_version.*refit it"):
        load_with(features=["a_feature_of_another_version"])
    with pytest.raises(ValueError, match="weights has 2 entries for 1 features"):
        load_with(weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="scale must be positive"):
        load_with(scale=[0.0])
    with pytest.raises(ValueError, match="intercept must be a number"):
        load_with(intercept="high")
    with pytest.raises(ValueError, match=r"unexpected key\(s\) \['threshold'\]"):
        load_with(threshold=0.9)
    assert load_with().stop_veto == veto_until(0.5)
    # at the command line: one line, no traceback
    config.write_text(json.dumps({**good, "stop_veto": {**good["stop_veto"], "features": ["gone"]}}))
    assert main(["evaluate", "--policy", str(tmp_path / "vetoed"), "--seeds", "1", "--out", str(tmp_path / "eval")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "'gone'" in error[0] and "refit it" in error[0]
    assert not (tmp_path / "eval").exists()  # refused before any run


def test_an_ensemble_runs_a_veto_of_its_own_and_refuses_members_that_carry_one(tmp_path):
    quick, default = AllocatorPolicy.load(QUICK), AllocatorPolicy.load(DEFAULT)
    with pytest.raises(ValueError, match="carries a stop veto"):
        PolicyEnsemble([quick.with_stop_veto(veto_until(0.5)), default])
    stoppers = PolicyEnsemble([always_stopping(quick), always_stopping(default)])
    stoppers.with_stop_veto(veto_until(0.5)).save(tmp_path / "ensemble")
    loaded = AllocatorPolicy.load(tmp_path / "ensemble")
    assert isinstance(loaded, PolicyEnsemble) and loaded.stop_veto == veto_until(0.5)
    assert trained(run_job(make_job(budget_steps=200), stoppers)) == []
    result = run_job(make_job(budget_steps=200), loaded)
    assert {interval["steps"] for interval in trained(result)} == {loaded.spec.max_steps}
    assert result.compute_fraction >= 0.5


def test_a_veto_reads_its_features_by_name_from_a_jobs_raw_observation():
    observation = np.zeros(len(GLOBAL_FEATURES) + 3)
    veto = StopVeto(
        features=("log_val_loss", "budget_used"), mean=(1.0, 0.0), scale=(2.0, 1.0), weights=(1.0, -4.0), intercept=0.0
    )
    observation[GLOBAL_FEATURES.index("log_val_loss")] = 3.0  # standardised: +1
    observation[GLOBAL_FEATURES.index("budget_used")] = 0.2  # -0.8: 1 - 0.8 > 0
    assert veto.continue_pays(observation)
    observation[GLOBAL_FEATURES.index("budget_used")] = 0.3  # 1 - 1.2 < 0
    assert not veto.continue_pays(observation)



def test_each_interval_records_whether_the_veto_refused_a_stop_and_tensorboard_charts_it(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    stopper = always_stopping(AllocatorPolicy.load(QUICK))
    result = run_job(make_job(budget_steps=200), stopper.with_stop_veto(veto_until(0.5)), tensorboard_dir=tmp_path / "tb")
    flags = [interval["stop_vetoed"] for interval in result.intervals]
    assert flags[-1] is False and len(flags) > 2 and all(flags[:-1])  # refused until half the budget, then it stands
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [e.value for e in events.Scalars("allocation/stop_vetoed")] == [float(f) for f in flags]
    plain = run_job(make_job(budget_steps=200), "uniform", tensorboard_dir=tmp_path / "plain")
    assert {interval["stop_vetoed"] for interval in plain.intervals} == {None}  # no veto, nothing to say
    events = EventAccumulator(str(tmp_path / "plain"))
    events.Reload()
    assert "allocation/stop_vetoed" not in events.Tags()["scalars"]


def test_the_published_learned_freeze_with_its_veto_is_the_learned_freeze_plus_a_veto_on_every_global_feature():
    vetoed = AllocatorPolicy.load(ROOT / "benchmarks" / "heldout-learned-freeze-vetoed" / "policy")
    plain = AllocatorPolicy.load(ROOT / "benchmarks" / "heldout-learned-freeze" / "policy")
    assert plain.stop_veto is None and vetoed.stop_veto.features == GLOBAL_FEATURES
    assert vetoed.spec == plain.spec
    for observation in [np.asarray(o) for o in _observations(plain)]:
        np.testing.assert_array_equal(vetoed.action(observation), plain.action(observation))


def test_the_fit_labels_each_interval_against_every_later_stop_the_full_run_included():
    rows = labelled_intervals(make_job(budget_steps=60, lr=1e-2))
    curve = run_job(make_job(budget_steps=60, lr=1e-2), "uniform").curve
    stopped = Objective().stopped_values(curve)
    layout = ObservationLayout(make_job().spec)
    # one row after each interval but the last, whose observation no controller sees
    assert len(rows) == len(curve) - 2
    for k, (features, continuing_pays, stake) in enumerate(rows, start=1):
        assert features[layout.global_index("budget_used")] == pytest.approx(curve[k][0], abs=1e-6)
        assert continuing_pays == (min(stopped[k + 1 :]) < stopped[k])
        assert stake == pytest.approx(abs(min(stopped[k + 1 :]) - stopped[k]))
    # the full run is a later stop: on this steadily learning job it is the best one
    assert stopped[-1] == min(stopped[1:]) and all(continuing_pays for _, continuing_pays, _ in rows)
    # with a policy, only the intervals after which it asks to stop
    quick = AllocatorPolicy.load(QUICK)
    assert len(labelled_intervals(job_with_spec(quick.spec), always_stopping(quick))) == len(
        labelled_intervals(job_with_spec(quick.spec))
    )
    assert labelled_intervals(job_with_spec(quick.spec), pinned_steps(quick, +10.0)) == []


def job_with_spec(spec):
    job = make_job(budget_steps=60, lr=1e-2)
    job.use_spec(spec)
    return job



def test_the_stop_veto_command_fits_on_drawn_train_jobs_and_writes_the_vetoed_policy(tmp_path, capsys):
    published = ROOT / "benchmarks" / "heldout-quick" / "policy"
    out = tmp_path / "vetoed"
    argv = ["stop-veto", "--policy", str(published), "--out", str(out), "--jobs", "2", "--workers", "1"]
    assert main([*argv, "--no-progress-bar"]) == 0
    printed = capsys.readouterr().out
    assert "2 jobs" in printed and f"wrote {out}" in printed
    vetoed = AllocatorPolicy.load(out)
    assert vetoed.spec == AllocatorPolicy.load(published).spec and vetoed.stop_veto.features == GLOBAL_FEATURES
    notes = vetoed.stop_veto.extra
    assert len(notes["jobs"]) == 2 and notes["job_seed"] == 0
    assert notes["distribution"] == {"split": "train", "many_epoch_share": 0.5}  # the published veto's mix
    # refused in one line, before anything runs: an --out in use, a bad count, a configuration that is not there
    elsewhere = [*argv[:4], str(tmp_path / "other")]
    for bad, expected in [
        (argv, "is not empty"),
        ([*elsewhere, "--jobs", "0"], "--jobs must be >= 1"),
        ([*elsewhere, "--config", str(tmp_path / "missing.yaml")], "missing.yaml"),
    ]:
        assert main(bad) == 2
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and expected in error[0]
    assert not (tmp_path / "other").exists()


def test_results_csv_counts_the_stops_each_run_had_vetoed(tmp_path):
    import csv

    from allocator.evaluation import evaluate

    always_stopping(AllocatorPolicy.load(QUICK)).with_stop_veto(veto_until(0.5)).save(tmp_path / "vetoed")
    jobs = {"small": lambda seed: make_job(budget_steps=200, seed=seed)}
    report = evaluate(tmp_path / "vetoed", seeds=1, baselines=["uniform"], out_dir=tmp_path / "eval", jobs=jobs, progress=False)
    with open(tmp_path / "eval" / "results.csv", newline="") as handle:
        rows = {row["controller"]: row for row in csv.DictReader(handle)}
    refused = sum(bool(i["stop_vetoed"]) for i in report.run("small", 0, "policy").result.intervals)
    assert refused > 1 and rows["policy"]["stops_vetoed"] == str(refused)
    assert rows["uniform"]["stops_vetoed"] == ""  # no veto: nothing to count


def test_fitting_only_where_the_policy_stops_needs_a_policy_that_stops(tmp_path):
    from agents.stop_veto_fit import fit_stop_veto
    from allocator.jobs import JobDistribution

    recipes = JobDistribution("train").distinct_recipes(1, job_seed=0)
    pinned_steps(AllocatorPolicy.load(QUICK), +10.0).save(tmp_path / "never-stops")
    with pytest.raises(ValueError, match="never asks to stop"):
        fit_stop_veto(tmp_path / "never-stops", recipes, only_its_stops=True)


def test_a_refusal_the_jobs_own_rule_overrides_is_not_counted():
    published = AllocatorPolicy.load(ROOT / "benchmarks" / "heldout-quick" / "policy")
    assert published.spec.stop_before_budget  # the job skips the last interval, whatever the controller asks
    always_refused = always_stopping(published).with_stop_veto(veto_until(2.0))
    result = run_job(make_job(budget_steps=200), always_refused)
    assert always_refused.stop_vetoed  # it refused the last stop too ...
    assert result.intervals[-1]["steps"] == 0 and result.intervals[-1]["stop_vetoed"] is False  # ... which ran nothing
    assert result.stops_vetoed == len(trained(result)) and result.compute_fraction < 1.0

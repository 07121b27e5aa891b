"""The analysis scripts behind BENCHMARKS.md section 5 compute what they claim."""

import csv
import dataclasses
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from allocator import AllocatorPolicy
from allocator.allocation import AllocationSpec
from allocator.runner import run_job
from allocator.stats import ObservationLayout
from tests.conftest import make_job, make_overfitting_job

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_oracle_stop_reaches_uniforms_best_only_when_it_stops_after_it():
    oracle = load_script("stopping_oracle")
    result = run_job(make_job(budget_steps=40), "uniform")
    last = len(result.curve) - 1
    # run to the end: compute to target as evaluate measures it for uniform itself
    assert oracle.oracle_to_target(result.curve, last) == result.compute_to_reach(result.best_val_loss)
    losses = [loss for _, loss in result.curve[1:]]
    first_best = 1 + losses.index(min(losses))
    assert oracle.oracle_to_target(result.curve, first_best) == result.curve[first_best][0]
    assert oracle.oracle_to_target(result.curve, first_best - 1) == float("inf")  # stopped before it


def test_standard_training_on_uniforms_own_grid_is_uniform_and_other_grids_train_the_same_steps():
    from allocator.allocation import AllocationSpec
    from allocator.evaluation import build_job

    noise = load_script("target_noise")

    class Tiny:
        name = "tiny"

        def build(self, seed):
            return make_job(budget_steps=40, seed=seed)

    spec = AllocationSpec(max_steps=20)
    uniform = run_job(build_job(Tiny(), 0, spec), "uniform")
    same = run_job(build_job(Tiny(), 0, spec), noise.StandardTrainingOnGrid("same", 20, 20))
    assert same.curve == uniform.curve and same.objective == uniform.objective
    half, shifted = (run_job(build_job(Tiny(), 0, spec), grid) for grid in noise.grids(20))
    assert len(half.curve) - 1 == 2 * (len(uniform.curve) - 1)  # twice the intervals ...
    assert half.steps == shifted.steps == uniform.steps  # ... over the same standard steps
    assert half.curve[2][0] == uniform.curve[1][0]  # half intervals read uniform's grid points too
    rows = noise.measure([Tiny()], [0], spec, show=lambda line: None)
    assert [r["grid"] for r in rows] == ["half intervals", "shifted grid"]
    assert rows[0]["uniform_best"] == uniform.best_val_loss and rows[0]["best"] == half.best_val_loss
    assert rows[0]["compute_to_target"] == half.compute_to_reach(uniform.best_val_loss)
    assert "| half intervals | all | 1 |" in noise.summary_table(rows)
    with pytest.raises(ValueError, match="at least 1 step"):
        noise.StandardTrainingOnGrid("none", 0, 20)


def test_the_cnn_freeze_probe_compares_the_policy_with_and_without_the_rule_on_convolutional_jobs_only():
    from torch import nn

    from allocator import AllocatorPolicy

    probe = load_script("cnn_freeze_probe")
    policy = AllocatorPolicy.load(BENCHMARKS / "heldout-default" / "policy")  # it carries the rule itself
    alone, rule = probe.with_and_without_the_rule(policy)
    assert (alone.name, rule.name) == ("policy", "policy, first group frozen on CNNs")

    def cnn(seed=0):
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Unflatten(1, (1, 16)), nn.Conv1d(1, 4, 3), nn.ReLU(), nn.Conv1d(4, 4, 3), nn.ReLU(),
            nn.Flatten(), nn.Linear(4 * 12, 16), nn.ReLU(), nn.Linear(16, 4),
        )

    for model, frozen in ((cnn(), True), (None, False)):
        plain_job, job = make_job(budget_steps=60, model=model), make_job(budget_steps=60, model=model)
        alone.reset(plain_job)
        rule.reset(job)
        assert job.freezes_cnn_first_group is frozen and not plain_job.freezes_cnn_first_group
        plain = plain_job.advance(alone.act(plain_job.observation())).allocation
        chosen = job.advance(rule.act(job.observation())).allocation
        assert chosen.layer_gates == ((0.0, *plain.layer_gates[1:]) if frozen else plain.layer_gates)
        assert (chosen.sample_shares, chosen.keep_fraction, chosen.steps) == (
            plain.sample_shares, plain.keep_fraction, plain.steps
        )
    # on a real run the first group never trains: its weights stay as they were built
    job = make_job(budget_steps=60, model=cnn())
    first = [p.detach().clone() for p in job.model[1].parameters()]
    second = [p.detach().clone() for p in job.model[3].parameters()]
    assert run_job(job, rule).steps > 0
    assert all(torch.equal(a, b) for a, b in zip(first, job.model[1].parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(second, job.model[3].parameters()))  # the rest trains
    # the summary says how often each controller trained the first group
    rows = [
        {"contender": name, "regime": "compute-bound", "compute_to_target": reach, "objective": j,
         "uniform_objective": 1.0, "layer_gates": gates}
        for name, reach, j, gates in (
            ("policy", 1.0, 0.99, "1.00 1.00 1.00 1.00"), ("policy", 0.6, 0.95, "0.50 1.00 1.00 1.00"),
            ("frozen", 0.6, 0.9, "0.00 1.00 1.00 1.00"),
        )
    ]
    table = probe.summary(rows).splitlines()
    assert table[2] == "| policy | 2 | 2 | 1 | 2 | 0.9700 | 2 | 0.75 |"
    assert table[3] == "| frozen | 1 | 1 | 1 | 1 | 0.9000 | 1 | 0.00 |"


def test_ablation_holds_the_chosen_features_at_their_training_mean():
    from allocator import AllocatorPolicy

    ablation = load_script("ablate_features")
    policy = AllocatorPolicy.load(BENCHMARKS / "heldout-quick-v1" / "policy")
    layout = policy.layout  # the positions are in the features the policy reads
    indices = layout.positions(ablation.FEATURE_GROUPS["previous allocation"])
    observation = np.random.default_rng(0).normal(size=ObservationLayout(policy.spec).size) * 3
    ablated = ablation.AblatedPolicy(policy, indices, "ablated").normalize(observation)
    full = policy.normalize(observation)
    assert np.all(ablated[indices] == 0.0)  # 0 after normalisation: the training mean
    kept = np.setdiff1d(np.arange(layout.size), indices)
    assert np.array_equal(ablated[kept], full[kept])


@pytest.mark.parametrize("preset", ["quick-v1", "default-v1"])
def test_published_policies_load_and_fit_todays_observation(preset):
    """The policies behind BENCHMARKS.md section 4 still load and act on a job's observation."""
    from allocator import AllocatorPolicy
    from allocator.runner import run_job

    policy = AllocatorPolicy.load(BENCHMARKS / f"heldout-{preset}" / "policy")
    assert policy.kind == "attention"
    # they were trained before selection_alignment existed and read the rest by name
    assert "selection_alignment" not in policy.layout.global_names
    assert policy.observation_size == ObservationLayout(policy.spec).size - 1
    assert policy.job_observation_size == ObservationLayout(policy.spec).size
    result = run_job(make_job(budget_steps=40), policy)
    assert np.isfinite(result.objective)


def test_a_published_policy_reads_its_features_by_name_and_ignores_newer_ones():
    from allocator import AllocatorPolicy

    policy = AllocatorPolicy.load(BENCHMARKS / "heldout-quick-v1" / "policy")
    today = ObservationLayout(policy.spec)
    observation = np.random.default_rng(0).normal(size=today.size)
    newer = today.positions(["selection_alignment"])
    moved = observation.copy()
    moved[newer] += 5.0
    assert np.array_equal(policy.action(observation), policy.action(moved))
    kept = np.setdiff1d(np.arange(today.size), newer)  # today's order, less the new feature
    assert np.array_equal(policy.action(observation), policy.action(observation[kept]))


def test_run_comparison_counts_wins_over_uniform_by_job_regime(tmp_path, capsys):
    compare = load_script("compare_runs")
    # digits-mlp is a compute-bound train job, synth-noisy-mlp a data-bound one
    rows = [
        ("digits-mlp", 0, "policy", 0.50),
        ("digits-mlp", 0, "uniform", 0.40),
        ("digits-mlp", 1, "policy", 0.30),
        ("digits-mlp", 1, "uniform", 0.40),
        ("synth-noisy-mlp", 0, "policy", 0.70),
        ("synth-noisy-mlp", 0, "uniform", 0.90),
    ]
    (tmp_path / "results.csv").write_text(
        "job,seed,controller,objective,compute_fraction\n"
        + "".join(f"{job},{seed},{controller},{j},1.0\n" for job, seed, controller, j in rows)
    )
    result = compare.summary(compare.read_runs(tmp_path))
    assert result["wins"]["all"] == (2, 3)
    assert result["wins"]["compute-bound"] == (1, 2)
    assert result["wins"]["data-bound"] == (1, 1)
    assert result["policy"] == pytest.approx(0.5) and result["uniform"] == pytest.approx(1.7 / 3)
    assert compare.main([str(tmp_path), "--per-job"]) == 0
    assert "digits-mlp" in capsys.readouterr().out
    assert compare.main([str(tmp_path / "missing")]) == 2  # one line, no traceback


@pytest.mark.parametrize("path", sorted((BENCHMARKS / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_research_log_configurations_still_resolve_on_the_quick_v1_preset(path):
    """BENCHMARKS.md section 5 reruns these with `train --preset quick-v1 --config FILE`."""
    from agents.config import load_preset, resolve_config

    assert resolve_config("quick-v1", path) != load_preset("quick-v1")  # each changes something


def test_the_quick_preset_is_the_e27_recipe_and_its_published_policy_was_trained_by_it():
    """`quick` = `quick-v1` + e27.yaml, and benchmarks/heldout-quick/policy is one of its seeds.

    Change the preset and this fails until the published policy (and its held-out tables in
    BENCHMARKS.md section 4) are made again with it.
    """
    from agents.config import config_from_yaml, load_preset, resolve_config
    from allocator import AllocatorPolicy

    quick = load_preset("quick")
    assert quick == resolve_config("quick-v1", BENCHMARKS / "configs" / "e27.yaml")
    published = BENCHMARKS / "heldout-quick" / "policy"
    trained_with = config_from_yaml(published / "config.yaml")
    assert trained_with == quick.updated({"training": {"seed": trained_with.training.seed}}, "seed")
    policy = AllocatorPolicy.load(published)
    assert policy.spec.stop_before_budget and policy.spec.dead_zone == pytest.approx(0.1)
    job = make_job(budget_steps=40)
    assert np.isfinite(run_job(job, policy).objective)
    assert job.stop_before_budget  # applying it brings its rule to the user's job


def test_noise_floor_perturbations_move_the_trajectory_and_nothing_else():
    from allocator.allocation import AllocationSpec
    from allocator.evaluation import build_job

    noise = load_script("noise_floor")

    class Tiny:
        name = "tiny"

        def build(self, seed):
            return make_job(seed=seed, batch_size=100)  # a 0.01 share is one sample of the batch

    spec = AllocationSpec(max_steps=20)
    rows = noise.measure([Tiny()], [0], spec, show=lambda line: None)
    uniform = run_job(build_job(Tiny(), 0, spec), "uniform")
    reference = uniform.objective
    tilted = rows["shares +-0.01"][0]
    assert tilted["uniform"] == reference and tilted["regime"] == "other"
    assert tilted["perturbed"] != reference  # one sample per batch moved to another group changes the run
    result = run_job(build_job(Tiny(), 0, spec), noise.perturbations()[0])
    assert result.compute_used == uniform.compute_used  # same compute
    table = noise.summary_table(rows)
    change = tilted["perturbed"] - reference
    assert f"| shares +-0.01 | all | 1 | {int(change < 0)} | {change:+.4f} |" in table


def test_noise_floor_file_sorts_a_policys_pairs_into_beyond_and_within_the_noise(tmp_path, capsys):
    compare, noise = load_script("compare_runs"), load_script("noise_floor")
    floor_rows = {
        "shares +-0.01": [
            {"job": "digits-mlp", "seed": 0, "regime": "compute-bound", "uniform": 0.40, "perturbed": 0.42},
            {"job": "digits-mlp", "seed": 1, "regime": "compute-bound", "uniform": 0.40, "perturbed": 0.39},
        ],
        "gate 0.99": [
            {"job": "digits-mlp", "seed": 0, "regime": "compute-bound", "uniform": 0.40, "perturbed": 0.37},
            {"job": "digits-mlp", "seed": 1, "regime": "compute-bound", "uniform": 0.40, "perturbed": 0.40},
        ],
    }
    noise.write_csv(floor_rows, tmp_path / "floor.csv")
    floor = compare.read_noise_floor(tmp_path / "floor.csv")
    assert floor == {("digits-mlp", 0): pytest.approx(0.03), ("digits-mlp", 1): pytest.approx(0.01)}  # the largest change
    rows = [
        ("digits-mlp", 0, "policy", 0.38),  # 0.02 better: within seed 0's floor of 0.03
        ("digits-mlp", 0, "uniform", 0.40),
        ("digits-mlp", 1, "policy", 0.45),  # 0.05 worse: beyond seed 1's floor of 0.01
        ("digits-mlp", 1, "uniform", 0.40),
        ("digits-mlp", 2, "policy", 0.10),  # no floor measured for seed 2: left out
        ("digits-mlp", 2, "uniform", 0.40),
    ]
    (tmp_path / "results.csv").write_text(
        "job,seed,controller,objective,compute_fraction\n"
        + "".join(f"{job},{seed},{controller},{j},1.0\n" for job, seed, controller, j in rows)
    )
    counts = compare.against_noise(compare.read_runs(tmp_path), floor)
    assert counts["compute-bound"] == (0, 1, 1, 2)
    assert compare.main([str(tmp_path), "--noise-floor", str(tmp_path / "floor.csv")]) == 0
    assert "| 0 / 1 / 1 (2) | 0 / 1 / 1 (2) | 0 / 0 / 0 (0) |" in capsys.readouterr().out
    assert compare.main([str(tmp_path), "--noise-floor", str(tmp_path / "missing.csv")]) == 2


def test_stop_guard_lets_a_policy_stop_only_after_the_validation_loss_turned_up():
    from allocator.allocation import Allocation

    guard_module = load_script("stop_guard")

    class AlwaysStop:
        def reset(self, job):
            pass

        def act(self, observation):
            return Allocation((0.25, 0.25, 0.25, 0.25), 1.0, (1.0, 1.0, 1.0, 1.0), 0)

    job = make_job()
    guard = guard_module.StopGuard(AlwaysStop())
    guard.reset(job)
    observation = job.observation()
    at_best = observation.copy()
    at_best[guard.above_best] = 0.0
    assert guard.act(at_best).steps == job.spec.max_steps  # still improving: it trains on
    turned_up = observation.copy()
    turned_up[guard.above_best] = 0.05
    assert guard.act(turned_up).stops
    # the milder guard refuses a stop at the best only while the loss still falls fast
    mild = guard_module.StopGuard(AlwaysStop(), falling_faster_than=1.0)
    mild.reset(job)
    at_best[mild.trend] = -0.5
    assert mild.act(at_best).stops
    at_best[mild.trend] = -2.0
    assert mild.act(at_best).steps == job.spec.max_steps


def test_stop_before_the_budget_skips_exactly_the_interval_that_would_end_it():
    from allocator.baselines import Uniform

    guard_module = load_script("stop_guard")
    full = run_job(make_job(budget_steps=40), "uniform")
    guarded = run_job(make_job(budget_steps=40), guard_module.StopBeforeTheBudget(Uniform()))
    assert len(full.curve) >= 4
    assert guarded.curve == full.curve[:-1]
    assert guarded.compute_fraction < 1.0


def test_family_transfer_draws_distinct_jobs_of_the_left_out_family_only():
    transfer = load_script("family_transfer")
    recipes = transfer.transfer_recipes("train", ["cnn1d"], 12)
    assert len(recipes) == 12
    assert {recipe.model for recipe in recipes.values()} == {"cnn1d"}
    assert {recipe.regime for recipe in recipes.values()} == {"compute-bound", "data-bound"}
    assert list(transfer.transfer_recipes("train", ["cnn1d"], 12)) == list(recipes)  # same jobs for every policy


def test_as_model_trains_another_family_on_the_same_data_optimizer_and_budget():
    transfer = load_script("family_transfer")
    recipes = transfer.transfer_recipes("train", ["mlp", "resmlp"], 6)
    swapped = transfer.as_model(recipes, "transformer")
    assert list(swapped) == [f"{name}-as-transformer" for name in recipes]
    for before, after in zip(recipes.values(), swapped.values()):
        assert after.model == "transformer"
        assert (after.dataset, after.dataset_options, after.lr, after.budget_steps, after.regime) == (
            before.dataset,
            before.dataset_options,
            before.lr,
            before.budget_steps,
            before.regime,
        )
        # capped at the largest transformer drawn: width 32, depth 2, batch 64
        assert (after.width, after.depth, after.batch_size) == (
            min(before.width, 32),
            min(before.depth, 2),
            min(before.batch_size, 64),
        )
    assert any(before.width > 32 for before in recipes.values())  # the cap was exercised
    assert next(iter(swapped.values())).build(seed=0, device="cpu").name.endswith("-as-transformer")


def test_as_model_refuses_an_unknown_family(capsys):
    transfer = load_script("family_transfer")
    with pytest.raises(SystemExit):
        transfer.main(["--families", "mlp", "--as-model", "lstm", "--out", "unused", "some-policy"])
    assert "--as-model must be one of" in capsys.readouterr().err


def test_policies_with_the_same_folder_name_get_reports_of_their_own():
    names = load_script("family_transfer").report_names(
        ["runs/e27/seed-3", "runs/e28/seed-3", "runs/e28/seed-0", "benchmarks/heldout-quick/policy", "seed-1"]
    )
    assert names == {
        "runs/e27/seed-3": "e27-seed-3",
        "runs/e28/seed-3": "e28-seed-3",
        "runs/e28/seed-0": "seed-0",
        "benchmarks/heldout-quick/policy": "heldout-quick",
        "seed-1": "seed-1",
    }


def test_family_transfer_refuses_a_family_of_the_other_split(capsys):
    transfer = load_script("family_transfer")
    with pytest.raises(SystemExit):
        transfer.main(["--families", "cnn2d", "--out", "unused", "some-policy"])
    assert "model families ['cnn1d', 'mlp', 'resmlp'], got ['cnn2d']" in capsys.readouterr().err


def test_lever_ablation_sets_one_lever_back_to_standard_training_and_leaves_the_rest():
    from allocator.allocation import Allocation, AllocationSpec

    ablation = load_script("lever_ablation")
    spec = AllocationSpec(sample_groups=2, layer_groups=2, max_steps=10)
    chosen = Allocation((0.8, 0.2), 0.5, (1.0, 0.3), 0)
    assert ablation.standard("sample shares", chosen, spec) == Allocation((0.5, 0.5), 0.5, (1.0, 0.3), 0)
    assert ablation.standard("keep fraction", chosen, spec) == Allocation((0.8, 0.2), 1.0, (1.0, 0.3), 0)
    assert ablation.standard("layer gates", chosen, spec) == Allocation((0.8, 0.2), 0.5, (1.0, 1.0), 0)
    assert ablation.standard("stopping", chosen, spec) == Allocation((0.8, 0.2), 0.5, (1.0, 0.3), 10)
    fewer_steps = Allocation((0.8, 0.2), 0.5, (1.0, 0.3), 4)
    assert ablation.standard("stopping", fewer_steps, spec) == fewer_steps  # only a stop is undone


def test_lever_ablation_on_slow_learners_counts_only_the_pairs_uniform_measures_compute_bound(capsys):
    from allocator import AllocatorPolicy
    from allocator.jobs.distribution import measured_regime
    from allocator.runner import run_job

    ablation = load_script("lever_ablation")
    policy = BENCHMARKS / "heldout-quick-v1" / "policy"
    spec = AllocatorPolicy.load(policy).spec
    regimes = []
    for build in ablation.job_builders(ablation.slow_learner_recipes(3)).values():
        job = build(0)
        job.use_spec(spec)
        regimes.append(measured_regime(run_job(job, "uniform").curve))
    counted = regimes.count("compute-bound")
    assert 0 < counted < 3, regimes  # the three jobs are a mix, so the filter shows

    assert ablation.main(["--slow-learner-jobs", "3", "--seeds", "1", str(policy)]) == 0
    (row,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith(f"| {policy} |")]
    cells = row.strip("| ").split(" | ")[2:]  # policy as trained, then each lever
    assert len(cells) == 5 and all(cell.endswith(f"/{counted})") for cell in cells), row


def test_lever_ablation_refuses_a_negative_number_of_slow_learner_jobs(capsys):
    with pytest.raises(SystemExit):
        load_script("lever_ablation").main(["--slow-learner-jobs", "-1", "some-policy"])
    assert "--slow-learner-jobs must be >= 0, got -1" in capsys.readouterr().err


@pytest.mark.parametrize(
    "script, options",
    [
        ("family_transfer", ["--families", "cnn1d", "--jobs", "1", "--seeds", "1", "--out", "OUT"]),
        ("lever_ablation", ["--families", "cnn1d", "--jobs", "1", "--seeds", "1"]),
        ("stop_guard", ["--split", "train", "--seeds", "1"]),
        ("train_check", ["--cnn-jobs", "1", "--workers", "1"]),
    ],
)
def test_a_bad_policy_directory_stops_the_script_before_any_run(script, options, tmp_path, capsys):
    """Every policy is loaded first: the good one listed before the bad one never runs."""
    module = load_script(script)
    options = [str(tmp_path) if option == "OUT" else option for option in options]
    good, bad = str(BENCHMARKS / "heldout-quick" / "policy"), str(tmp_path / "missing")
    with pytest.raises(SystemExit) as exit_info:
        module.main([*options, good, bad])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert "missing" in captured.err and "does not exist" in captured.err
    assert good not in captured.out  # no result row: nothing ran


def test_train_check_gives_each_policy_the_numbers_evaluate_gives_it_with_uniform_run_once():
    from allocator import AllocatorPolicy
    from allocator.evaluation import evaluate

    check = load_script("train_check")
    paths = [BENCHMARKS / "heldout-quick-v1" / "policy", BENCHMARKS / "heldout-default-v1" / "policy"]
    check.POLICIES.update({path: AllocatorPolicy.load(path) for path in paths})
    check.POLICIES["stop-before-budget"] = check.make_baseline("stop-before-budget")  # what --baseline adds
    check.SETS.update({"named": ([0, 1], {"tiny": lambda seed: make_job(budget_steps=60, seed=seed)})})
    results = dict(map(check._run_pair, [("named", "tiny", 0), ("named", "tiny", 1)]))
    made = check.reports(results, check.POLICIES)
    evaluated = {}
    for path in paths:
        alone = evaluated[path] = evaluate(
            path,
            split=None,
            jobs={"tiny": lambda seed: make_job(budget_steps=60, seed=seed)},
            seeds=[0, 1],
            baselines=["uniform", "stop-before-budget"],
        )
        for seed in (0, 1):
            for controller in ("policy", "uniform"):
                assert (
                    made[path, "named"].run("tiny", seed, controller).result.objective
                    == alone.run("tiny", seed, controller).result.objective
                )
        assert made[path, "named"].wins("uniform") == alone.wins("uniform")
    # the baseline's row: its runs under the (first) policy's spec, as evaluate runs it beside that policy
    for seed in (0, 1):
        assert (
            made["stop-before-budget", "named"].run("tiny", seed, "policy").result.objective
            == evaluated[paths[0]].run("tiny", seed, "stop-before-budget").result.objective
        )


def _tiny_residual_recipe():
    from allocator.jobs.distribution import JobRecipe

    return JobRecipe(
        "tiny-resmlp", "synthetic-classification", {"n_train": 400, "seed": 0},
        "resmlp", 16, 2, "adam", 3e-3, 32, 30, "compute-bound", "train",
    )  # fmt: skip


def test_stochastic_depth_probe_at_rate_zero_is_the_jobs_uniform_run():
    probe = load_script("stochastic_depth_probe")
    recipe = _tiny_residual_recipe()
    uniform = run_job(recipe.build(seed=1, device="cpu"), "uniform")
    result, step_cost = probe.run(recipe, seed=1, rate=0.0)
    assert result.curve == uniform.curve  # same steps, same losses, same compute fractions
    assert result.steps == recipe.budget_steps
    assert step_cost == pytest.approx(1.0)


def test_stochastic_depth_probe_skipping_blocks_buys_more_steps_within_the_same_budget():
    probe = load_script("stochastic_depth_probe")
    recipe = _tiny_residual_recipe()
    result, step_cost = probe.run(recipe, seed=1, rate=0.5)
    assert step_cost < 0.95  # skipped blocks are not counted
    assert result.steps > recipe.budget_steps
    fractions = [fraction for fraction, _ in result.curve]
    assert fractions[-1] <= 1.0 and fractions == sorted(fractions)
    assert result.compute_used <= result.budget


def test_stochastic_depth_probe_refuses_rates_that_do_not_start_at_uniform(capsys):
    probe = load_script("stochastic_depth_probe")
    assert probe.main(["--rates", "0.5,0"]) == 2
    assert "must start with 0" in capsys.readouterr().err


def test_train_check_compares_a_policy_with_its_copy_under_its_rules_only():
    import dataclasses

    from allocator import AllocatorPolicy

    check = load_script("train_check")
    policy = AllocatorPolicy.load(BENCHMARKS / "heldout-quick-v1" / "policy")
    ruled = AllocatorPolicy.load(BENCHMARKS / "heldout-quick-v1" / "policy")
    ruled.spec = dataclasses.replace(policy.spec, stop_before_budget=True)
    check.check_one_spec([policy, ruled])  # the rule is each policy's own: one spec for the jobs
    ruled.spec = dataclasses.replace(policy.spec, share_prior="loss")
    check.check_one_spec([policy, ruled])  # likewise the share prior
    other = AllocatorPolicy.load(BENCHMARKS / "heldout-quick-v1" / "policy")
    other.spec = dataclasses.replace(policy.spec, max_steps=10)
    with pytest.raises(ValueError, match="different specs"):
        check.check_one_spec([policy, other])


def test_train_check_selection_gate_must_be_a_cosine(capsys):
    check = load_script("train_check")
    with pytest.raises(SystemExit) as exit_info:
        check.main(["--selection-gate", "1.5", str(BENCHMARKS / "heldout-quick" / "policy")])
    assert exit_info.value.code == 2
    assert "--selection-gate must be in [-1, 1], got 1.5" in capsys.readouterr().err


def test_train_check_gated_policy_acts_as_the_policy_and_sets_the_jobs_gate():
    from allocator import AllocatorPolicy

    check = load_script("train_check")
    policy = AllocatorPolicy.load(BENCHMARKS / "heldout-quick-v1" / "policy")
    gated = check.GatedPolicy(policy, 0.7)
    job = make_job(budget_steps=60, spec=policy.spec)
    gated.reset(job)
    assert job.selection_gate == 0.7 and gated.spec == policy.spec
    observation = job.observation()
    assert gated.act(observation) == policy.act(observation)


def test_train_check_slow_learners_are_distinct_many_epoch_compute_bound_jobs():
    check = load_script("train_check")
    recipes = check.slow_learner_recipes(5)
    assert len(recipes) == 5
    for name, recipe in recipes.items():
        assert recipe.name == name and "-many-epochs-" in name and recipe.regime == "compute-bound"
        assert recipe.budget_steps >= 150
    # its own job seed: none of the jobs family_transfer.py or regime_mix.py draw
    assert check.SLOW_LEARNER_SEED not in (load_script("regime_mix").JOB_SEED, load_script("family_transfer").JOB_SEED)


def test_train_check_slow_learner_row_counts_only_pairs_uniform_finds_compute_bound():
    """A pair whose uniform run is not compute-bound is left out; a stop at a fifth is counted as early."""
    import dataclasses

    from allocator import Allocation, AllocatorPolicy

    check = load_script("train_check")
    spec = AllocatorPolicy.load(BENCHMARKS / "heldout-quick-v1" / "policy").spec

    class StopAfterTwoIntervals:
        name = "stop-early"

        def __init__(self):
            self.spec = spec

        def reset(self, job):
            self.taken = 0

        def act(self, observation):
            self.taken += 1
            steps = 0 if self.taken > 2 else self.spec.max_steps
            return dataclasses.replace(Allocation.uniform(self.spec), steps=steps)

    check.POLICIES.clear()
    check.POLICIES["early"] = StopAfterTwoIntervals()
    check.SETS.clear()
    check.SETS["slow"] = (
        [0],
        {
            "falling": lambda seed: make_job(budget_steps=200, seed=seed),
            "flat": lambda seed: make_job(budget_steps=80, seed=seed),
        },
    )
    results = dict(map(check._run_pair, [("slow", "falling", 0), ("slow", "flat", 0)]))
    report = check.reports(results, check.POLICIES)["early", "slow"]
    regime = {job: check.measured_regime(report.run(job, 0, "uniform").result.curve) for job in ("falling", "flat")}
    assert regime == {"falling": "compute-bound", "flat": "converged"}  # the premise of the test
    stopped = report.run("falling", 0, "policy").result
    fraction = stopped.compute_used / stopped.budget
    assert fraction < check.EARLY
    row = check.slow_learner_row("early", report)
    assert row.startswith("| early | 1 |") and row.endswith(f"| 0 | {fraction:.3f} | 1 |")


def test_regime_mix_counts_each_uniform_run_in_its_band_of_epochs(tmp_path, capsys):
    regime_mix = load_script("regime_mix")
    out = tmp_path / "mix.csv"
    assert regime_mix.main(["--jobs", "3", "--workers", "1", "--many-epoch-share", "1", "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 3
    printed = capsys.readouterr().out
    for drawn in ("compute-bound", "data-bound"):
        mine = [row for row in rows if row["drawn_regime"] == drawn]
        lines = regime_mix.band_table(
            [dict(row, epochs=float(row["epochs"]), uniform_objective=float(row["uniform_objective"])) for row in mine]
        )
        assert "\n".join(lines) in printed
        # every run falls in exactly one band, and each band's regimes add up to its jobs
        assert sum(int(line.split("|")[2]) for line in lines[2:]) == len(mine)
        for line in lines[2:]:
            cells = [cell.strip() for cell in line.split("|")[2:-2]]
            assert int(cells[0]) == sum(map(int, cells[1:]))


def test_regime_mix_refuses_a_share_outside_0_to_1(capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_script("regime_mix").main(["--many-epoch-share", "2"])
    assert exit_info.value.code == 2
    assert "many_epoch_share must be in [0, 1], got 2.0" in capsys.readouterr().err


def test_allocation_oracle_fixed_allocations_hold_their_entries_and_phase():
    oracle = load_script("allocation_oracle")
    job = make_job(budget_steps=40)
    tilted = oracle.FixedAllocation("tilted", keep=0.5, shares=(1.0, 2.0, 3.0, 4.0), frozen=(0, 3))
    tilted.reset(job)
    allocation = tilted.act(None)
    assert allocation.sample_shares == pytest.approx((0.1, 0.2, 0.3, 0.4))
    assert allocation.keep_fraction == 0.5
    assert allocation.layer_gates == (0.0, 1.0, 1.0, 1.0)  # the head (last group) is never frozen
    early = oracle.FixedAllocation("early", keep=0.2, phase="before", switch=0.5)
    early.reset(job)
    assert early.act(None).keep_fraction == 0.2  # nothing spent yet
    result = run_job(job, early)
    assert result.controller_name == "early"
    assert result.steps > 40  # selection's steps cost less, so the budget buys more of them
    assert result.compute_used <= result.budget
    # from half the budget on the intervals are standard training's
    assert early.act(None) == oracle.Allocation.uniform(job.spec)
    with pytest.raises(ValueError, match="phase"):
        oracle.FixedAllocation("bad", phase="during")


def test_allocation_oracle_reads_each_contender_against_uniforms_best(monkeypatch):
    oracle = load_script("allocation_oracle")
    monkeypatch.setattr(
        oracle, "grid", lambda: [oracle.FixedAllocation("keep 0.3", keep=0.3, frozen=(0,)), "loss-sampling"]
    )
    oracle._PAIRS[:] = [("tiny", 0, lambda seed: make_job(budget_steps=80, seed=seed))]
    rows = oracle.run_pair(0)
    job = make_job(budget_steps=80)
    job.use_spec(AllocationSpec(max_steps=20))  # the presets' interval length, as evaluate reads a policy's runs
    uniform = run_job(job, "uniform")
    assert len(uniform.curve) == 1 + 80 // 20
    assert [r["contender"] for r in rows] == ["uniform", "keep 0.3", "loss-sampling"]
    assert all(r["target"] == uniform.best_val_loss for r in rows)
    assert rows[0]["compute_to_target"] == uniform.compute_to_reach(uniform.best_val_loss) <= 1.0
    assert rows[0]["loss_by_target_share"] == min(loss for f, loss in uniform.curve if f <= 0.7)
    assert rows[0]["objective"] == rows[0]["uniform_objective"] == uniform.objective
    # each layer group's gate as the run ran it, averaged over its steps: what a probe reads of learned gates
    assert [r["layer_gates"] for r in rows] == ["1.00 1.00 1.00 1.00", "0.00 1.00 1.00 1.00", "1.00 1.00 1.00 1.00"]


def test_allocation_oracle_picks_the_fastest_contender_per_compute_bound_pair_in_hindsight():
    oracle = load_script("allocation_oracle")
    inf = float("inf")

    def row(job, contender, reach, loss, regime="compute-bound"):
        return {
            "job": job, "seed": 0, "regime": regime, "job_regime": regime, "contender": contender, "target": 1.0,
            "compute_to_target": reach, "loss_by_target_share": loss, "objective": 1.0, "uniform_objective": 1.0,
        }  # fmt: skip

    rows = [
        row("a", "uniform", 1.0, 1.2), row("a", "x", 0.6, 0.99), row("a", "y", inf, 1.1),
        row("b", "uniform", 1.0, 1.3), row("b", "x", 0.9, 1.05), row("b", "y", 0.8, 1.1),
        row("c", "uniform", 0.3, 1.0, "data-bound"), row("c", "x", 0.1, 0.9, "data-bound"),
    ]  # fmt: skip
    best = {b["job"]: b for b in oracle.hindsight(rows)}
    assert set(best) == {"a", "b"}  # data-bound pairs are not counted
    assert (best["a"]["fastest"], best["a"]["compute_to_target"]) == ("x", 0.6)
    assert (best["b"]["fastest"], best["b"]["lowest"]) == ("y", "x")  # fastest to the target, lowest by 0.7
    assert "1 of 2 compute-bound pairs reach uniform's best within 0.7" in oracle.hindsight_table(list(best.values()))
    table = oracle.contender_table(rows).splitlines()
    assert table[2].startswith("| x | 2 | 1 | 2 | 0.750 |")  # most pairs within 0.7 first; median of 0.6, 0.9
    assert table[3].startswith("| uniform | 2 | 0 | 2 | 1.000 |")
    assert table[4].startswith("| y | 2 | 0 | 1 | never |")  # a median over a pair never reached is "never"


def test_allocation_oracle_heldout_check_reports_the_median_over_every_pair(capsys):
    oracle = load_script("allocation_oracle")
    inf = float("inf")
    rows = [
        {"contender": c, "job_regime": regime, "compute_to_target": reach, "objective": j, "uniform_objective": 1.0}
        for c, regime, reach, j in [
            ("uniform", "compute-bound", 1.0, 1.0), ("uniform", "data-bound", 0.3, 1.0), ("uniform", "data-bound", 0.2, 1.0),
            ("keep 0.2", "compute-bound", 0.6, 0.9), ("keep 0.2", "data-bound", inf, 1.1), ("keep 0.2", "data-bound", 0.5, 0.8),
        ]
    ]  # fmt: skip
    table = oracle.heldout_table(rows).splitlines()
    assert table[2] == "| uniform | 3 | 0.300 | 0/1 | 2/2 | 0 | 1.0000 | 0 |"
    assert table[3] == "| keep 0.2 | 3 | 0.600 | 1/1 | 1/2 | 1 | 0.9333 | 2 |"
    assert oracle.contender_by_label("keep 0.2, even shares, all layers").keep == 0.2
    assert oracle.contender_by_label("freezeout") == "freezeout"
    with pytest.raises(SystemExit) as exit_info:
        oracle.main(["--heldout", "keep 0.25"])
    assert exit_info.value.code == 2
    assert "no contender is called 'keep 0.25'" in capsys.readouterr().err


def test_allocation_oracle_random_subset_costs_what_selection_costs_and_selects_differently():
    oracle = load_script("allocation_oracle")
    by_loss = run_job(make_job(budget_steps=40), oracle.FixedAllocation("by loss", keep=0.35))
    random = oracle.contender_by_label("keep 0.35, even shares, all layers, random subset")
    assert random.selection == "random"
    at_random = run_job(make_job(budget_steps=40), random)
    assert at_random.steps == by_loss.steps and at_random.compute_used == by_loss.compute_used
    assert at_random.curve != by_loss.curve  # other samples got the backward pass
    assert run_job(make_job(budget_steps=40), random).curve == at_random.curve  # its own seeded stream
    with pytest.raises(ValueError, match="selection"):
        oracle.FixedAllocation("bad", selection="hardest")


def test_selection_probe_with_one_candidate_is_that_candidates_run():
    """J and compute to target rebuilt from a curve equal the run's own: the rule's arithmetic is the objective's."""
    probe = load_script("selection_probe")
    result = run_job(make_job(budget_steps=40), "uniform")
    committed = probe.committed_run({"uniform": result.curve}, ("uniform",), 0.1, result.best_val_loss)
    assert committed["choice"] == "uniform" and committed["charged"] == 0.0
    assert committed["objective"] == pytest.approx(result.objective, rel=1e-12)
    assert committed["compute_to_target"] == result.compute_to_reach(result.best_val_loss)


def test_selection_probe_commits_to_the_lower_loss_at_equal_compute_and_charges_the_discarded_probe():
    probe = load_script("selection_probe")
    curves = {
        "uniform": [(0.0, 2.0), (0.2, 1.6), (0.4, 1.2), (0.6, 1.0), (0.8, 0.9), (1.0, 0.8)],
        # selection reads more often (cheaper intervals); at 0.1 of the budget it is at 1.55, uniform at 1.8
        "select": [(0.0, 2.0), (0.05, 1.7), (0.15, 1.4), (0.3, 1.0), (0.5, 0.8), (0.75, 0.7), (1.0, 0.65)],
    }
    assert probe.loss_at(curves["uniform"], 0.1) == pytest.approx(
        1.8
    )  # linear between the readings around it
    assert probe.loss_at(curves["select"], 0.1) == pytest.approx(1.55)
    assert probe.probe_end(curves["uniform"], 0.1) == 1  # uniform's probe ends at its first reading, 0.2
    committed = probe.committed_run(curves, ("uniform", "select"), 0.1, target=0.8)
    assert committed["choice"] == "select"
    assert committed["charged"] == pytest.approx(0.2)  # the discarded uniform copy ran to its reading at 0.2
    # the committed run starts after the discarded probe: selection's 0.8 at 0.5 of its own budget is 0.7 of the job's
    assert committed["compute_to_target"] == pytest.approx(0.7)
    # J: uniform's probe at its loss, then selection's intervals until its reading at 0.75 (0.95 of the budget);
    # the reading at 1.0 would end past the budget and is cut
    relative = [(0.2, 0.8), (0.05, 0.85), (0.1, 0.7), (0.15, 0.5), (0.2, 0.4), (0.25, 0.35)]
    expected = sum(c * r for c, r in relative) + 0.05 * 0.8 * 0.35 + 1.0 * 0.35
    assert committed["objective"] == pytest.approx(expected)
    # ties go to the first candidate, uniform; a target never read is never reached
    tie = probe.committed_run({"a": curves["uniform"], "b": curves["uniform"]}, ("a", "b"), 0.1, target=0.1)
    assert tie["choice"] == "a" and tie["compute_to_target"] == float("inf")


def test_selection_probe_reads_back_its_runs_and_refuses_a_set_it_does_not_know(
    tmp_path, capsys, monkeypatch
):
    oracle = load_script("allocation_oracle")
    probe = load_script("selection_probe")
    oracle._PAIRS[:] = [("tiny", 0, lambda seed: make_job(budget_steps=40, seed=seed))]
    oracle._CONTENDERS[:] = [oracle.contender_by_label(probe.SELECT)]
    oracle._SPEC[0] = AllocationSpec(max_steps=5)
    rows = oracle.run_pair(0)
    oracle.write_csv(rows, tmp_path / "runs.csv")
    read = probe.read_csv(tmp_path / "runs.csv")
    assert [r["curve"] for r in read] == [r["curve"] for r in rows]
    assert [r["objective"] for r in read] == [r["objective"] for r in rows]
    monkeypatch.setattr(probe, "CANDIDATE_SETS", {"selection": probe.CANDIDATE_SETS["selection"]})
    assert probe.main(["--from-csv", str(tmp_path / "runs.csv")]) == 0
    table = capsys.readouterr().out
    assert "| uniform | 1 |" in table and "| selection @ 0.1 | 1 |" in table
    with pytest.raises(SystemExit) as exit_info:
        probe.main(["--heldout", "everything", "0.1"])
    assert exit_info.value.code == 2
    assert "no candidate set 'everything'" in capsys.readouterr().err


def _small_job(family: str):
    from allocator.jobs.models import build_model

    return lambda seed: make_job(budget_steps=40, seed=seed, model=build_model(family, (16,), 4, 16, 3, seed=seed))


@pytest.mark.parametrize("family", ["transformer", "cnn1d"])
def test_input_size_probe_with_the_lever_never_on_is_the_jobs_uniform_run(family):
    """The patched step and its cost change nothing while the lever is off: the probe's runs are the job's."""
    probe = load_script("input_size_probe")
    uniform, _ = probe.run(_small_job(family), 0, None, max_steps=5)
    never, step_cost = probe.run(_small_job(family), 0, probe.Variant(0.5, until=0.0), max_steps=5)
    assert never.curve == uniform.curve and never.steps == uniform.steps == 40
    assert step_cost == 1.0
    reduced, reduced_cost = probe.run(_small_job(family), 0, probe.Variant(0.5, until=1.0), max_steps=5)
    assert reduced_cost < 0.75  # half the input costs about half a step
    assert reduced.steps > 1.3 * uniform.steps  # the same budget buys more, cheaper steps
    assert reduced.compute_used <= reduced.budget == uniform.budget


def test_input_size_probe_trains_on_part_of_the_input_and_validates_on_all_of_it():
    from allocator.jobs.models import build_model

    probe = load_script("input_size_probe")
    x = torch.randn(3, 16)
    transformer = build_model("transformer", (16,), 4, 16, 1)
    tokens = probe.InputReduction(transformer, 0.5, seed=0)
    seen = []
    transformer.blocks[0].register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].shape[1]))
    transformer(x)
    tokens.active = True
    tokens.draw()
    transformer(x)
    assert seen == [transformer.embed.tokens, transformer.embed.tokens // 2]
    cnn = build_model("cnn1d", (16,), 4, 8, 3)
    resolution = probe.InputReduction(cnn, 0.5, seed=0)
    lengths = []
    cnn.convs[0].register_forward_pre_hook(lambda module, inputs: lengths.append(inputs[0].shape[-1]))
    cnn(x)
    resolution.active = True
    cnn(x)
    assert lengths == [16, 8]
    with pytest.raises(ValueError, match="only halve"):
        probe.InputReduction(cnn, 0.75, seed=0)


def test_input_size_probe_heldout_runs_name_the_variant_on_every_job_and_apply_it_on_the_familys():
    probe = load_script("input_size_probe")
    variant = probe.Variant(0.25, 0.5)
    pairs = probe.heldout_job_set(1, variant, "transformer", [("quick", "uniform")])
    runs = {name: runs for name, _, _, runs in pairs}
    assert [label for label, _, _ in runs["digits-cnn"]] == ["uniform", "quick", "quick + input 0.25 until 0.5"]
    assert runs["digits-cnn"][-1][2] is None  # the policy alone where the model has no tokens
    assert runs["digits-transformer"][-1][2] == variant


def test_stop_veto_fit_writes_the_policy_with_its_veto_as_a_new_policy_directory(tmp_path, capsys):
    from allocator.stats import GLOBAL_FEATURES

    veto_module = load_script("stop_veto")
    quick = BENCHMARKS / "heldout-quick" / "policy"
    out = tmp_path / "quick-vetoed"
    assert veto_module.main(["fit", "--policy", str(quick), "--jobs", "2", "--workers", "1", "--out", str(out)]) == 0
    assert "the vetoed policy written to" in capsys.readouterr().out
    vetoed, published = AllocatorPolicy.load(out), AllocatorPolicy.load(quick)
    assert vetoed.spec == published.spec and published.stop_veto is None
    assert vetoed.stop_veto.features == GLOBAL_FEATURES
    fitted_on = vetoed.stop_veto.extra["jobs"]
    checked = {job for _, builders in load_script("train_check").job_sets(slow_learner_jobs=16).values() for job in builders}
    assert len(fitted_on) == 2 and not checked & set(fitted_on)  # drawn jobs, none a check job
    # an --out that already holds a policy is refused before anything is fitted
    with pytest.raises(SystemExit) as exit_info:
        veto_module.main(["fit", "--policy", str(quick), "--out", str(out)])
    assert exit_info.value.code == 2 and "already holds a policy" in capsys.readouterr().err


def test_early_stopping_sweep_refuses_a_bad_setting_before_any_run(capsys):
    module = load_script("early_stopping_sweep")
    for options in (["--patience", "0"], ["--min-delta", "1.5"], ["--patience", "two"]):
        with pytest.raises(SystemExit) as exit_info:
            module.main(options)
        assert exit_info.value.code == 2
        assert "--patience / --min-delta" in capsys.readouterr().err


def test_a_policy_with_the_patience_rule_added_runs_a_prefix_of_the_policys_own_run():
    """What ``early_stopping_sweep.py --under policy`` scores from the policy's curves alone."""
    from allocator.baselines import PatienceRule
    from allocator.objective import Objective

    policy = AllocatorPolicy.load(BENCHMARKS / "heldout-quick" / "policy")

    class PolicyWithPatience:
        def __init__(self) -> None:
            self.rule, self.trained = PatienceRule(1), False

        def reset(self, job) -> None:
            policy.reset(job)
            self.job, self.trained = job, False
            self.rule.reset(job.val_loss)

        def act(self, observation):
            allocation = policy.act(observation)
            if self.trained and self.rule.update(self.job.val_loss):
                return dataclasses.replace(allocation, steps=0)
            self.trained = True
            return allocation

    alone = run_job(make_overfitting_job(seed=1, spec=policy.spec), policy)
    stop = PatienceRule(1).stop_index([loss for _, loss in alone.curve])
    assert 0 < stop < len(alone.curve) - 1
    ruled = run_job(make_overfitting_job(seed=1, spec=policy.spec), PolicyWithPatience())
    assert ruled.curve == alone.curve[: stop + 1]
    assert ruled.objective == pytest.approx(Objective().stopped_values(alone.curve)[stop])

"""The built-in training jobs: datasets, models, named jobs and the train / held-out distribution."""

from __future__ import annotations

import argparse
import functools
import random

import numpy as np
import pytest
import torch

from allocator.allocation import AllocationSpec
from allocator.jobs import (
    JobDistribution,
    JobRecipe,
    command,
    datasets,
    describe,
    make_job,
    measured_regime,
    names,
)
from allocator.jobs.distribution import HELDOUT_FAMILIES, LR_RANGES, NAMED_JOBS, TRAIN_FAMILIES
from allocator.jobs.models import build_model
from allocator.layers import modules_in_forward_order

# --------------------------------------------------------------------------- datasets

ALL_DATASETS = {
    "clusters": lambda: datasets.synthetic_classification(seed=0, n_train=500),
    "teacher": lambda: datasets.synthetic_classification(seed=0, n_train=500, kind="teacher"),
    "regression": lambda: datasets.synthetic_regression(seed=0, n_train=500),
    "mnist1d": lambda: datasets.mnist1d(seed=0),
    "digits": lambda: datasets.digits(seed=0),
    "digits-flat": lambda: datasets.digits(seed=0, flat=True),
}


@pytest.mark.parametrize("make", ALL_DATASETS.values(), ids=ALL_DATASETS.keys())
def test_datasets_are_standardised_cpu_tensors_with_small_validation_sets(make):
    data = make()
    (train_x, train_y), (val_x, _) = data.train, data.val
    assert train_x.dtype == val_x.dtype == torch.float32
    assert train_x.device.type == "cpu"
    assert train_y.dtype == (torch.int64 if data.task == "classification" else torch.float32)
    assert tuple(train_x.shape[1:]) == data.input_shape == tuple(val_x.shape[1:])
    assert len(val_x) <= 1024
    assert abs(float(train_x.mean())) < 0.05 and abs(float(train_x.std()) - 1.0) < 0.05
    if data.task == "classification":
        assert int(train_y.max()) < data.num_classes == data.output_size
    else:
        assert train_y.shape == (len(train_x), data.output_dim)


def test_same_seed_builds_identical_data():
    generate = datasets.synthetic_classification.__wrapped__  # bypass the cache: really regenerate
    first, second = generate(seed=7, label_noise=0.2), generate(seed=7, label_noise=0.2)
    assert first is not second
    for a, b in zip(first.train + first.val, second.train + second.val):
        assert torch.equal(a, b)
    other = generate(seed=8, label_noise=0.2)
    assert not torch.equal(first.train[0], other.train[0])


def test_datasets_are_cached_so_episodes_rebuild_jobs_cheaply():
    assert datasets.digits(seed=3, n_train=200) is datasets.digits(seed=3, n_train=200)


def test_label_noise_flips_exactly_that_fraction_of_training_labels_and_leaves_validation_clean():
    clean = datasets.mnist1d(seed=0, n_train=1000)
    noisy = datasets.mnist1d(seed=0, n_train=1000, label_noise=0.2)
    assert torch.equal(clean.train[0], noisy.train[0])
    assert int((clean.train[1] != noisy.train[1]).sum()) == 200
    assert torch.equal(clean.val[1], noisy.val[1])


def test_imbalance_makes_class_zero_that_many_times_the_last_class_while_validation_stays_balanced():
    data = datasets.synthetic_classification(seed=0, n_train=2200, imbalance=10.0)
    counts = torch.bincount(data.train[1]).tolist()
    assert counts == sorted(counts, reverse=True)
    assert 9.0 < counts[0] / counts[-1] < 11.0
    assert len(set(torch.bincount(data.val[1]).tolist())) == 1


def test_redundant_fraction_adds_near_duplicate_easy_samples():
    def share_with_a_near_twin(data):
        x = data.train[0]
        distances = torch.cdist(x, x) + torch.eye(len(x)) * 1e9
        return float((distances.min(dim=1).values < 0.3).float().mean())

    plain = datasets.synthetic_classification(seed=0, n_train=1000)
    redundant = datasets.synthetic_classification(seed=0, n_train=1000, redundant_fraction=0.3)
    assert share_with_a_near_twin(plain) < 0.01
    assert share_with_a_near_twin(redundant) >= 0.29


def test_subsampling_the_training_set_keeps_every_class():
    data = datasets.digits(seed=0, n_train=100)
    assert len(data.train[1]) == 100
    assert set(data.train[1].tolist()) == set(range(10))


def test_generating_mnist1d_leaves_the_global_random_generators_alone():
    np_state, py_state = np.random.get_state(), random.getstate()
    datasets._mnist1d_full.__wrapped__(11, "standard")  # mnist1d reseeds numpy and random inside
    assert random.getstate() == py_state
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), np_state))


def test_unknown_dataset_and_bad_options_raise_value_error():
    with pytest.raises(ValueError, match="unknown dataset"):
        datasets.load_dataset("imagenet")
    with pytest.raises(ValueError, match="label_noise"):
        datasets.digits(label_noise=1.5)


# --------------------------------------------------------------------------- models

MODEL_INPUTS = [
    ("mlp", (16,)),
    ("resmlp", (40,)),
    ("cnn1d", (40,)),
    ("cnn2d", (1, 8, 8)),
    ("transformer", (40,)),
    ("transformer", (1, 8, 8)),
]


@pytest.mark.parametrize("family,input_shape", MODEL_INPUTS)
def test_every_model_family_has_four_trainable_modules_in_forward_order_with_the_head_last(
    family, input_shape
):
    model = build_model(
        family, input_shape, 10, width=16, depth=3 if family in ("mlp", "cnn1d", "cnn2d") else 1
    )
    x = torch.randn(5, *input_shape)
    assert model(x).shape == (5, 10)
    order = modules_in_forward_order(model, x)
    registered = [
        n for n, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))
    ]
    assert len(order) >= 4
    assert order[-1] == registered[-1] == "head"


def test_same_seed_builds_the_same_weights_without_touching_the_global_rng():
    state = torch.random.get_rng_state()
    first = build_model("transformer", (1, 8, 8), 10, width=32, depth=2, seed=3)
    second = build_model("transformer", (1, 8, 8), 10, width=32, depth=2, seed=3)
    other = build_model("transformer", (1, 8, 8), 10, width=32, depth=2, seed=4)
    assert torch.equal(torch.random.get_rng_state(), state)
    for a, b in zip(first.parameters(), second.parameters()):
        assert torch.equal(a, b)
    assert not all(torch.equal(a, c) for a, c in zip(first.parameters(), other.parameters()))


def test_unknown_model_family_raises_value_error():
    with pytest.raises(ValueError, match="unknown model family"):
        build_model("vit-huge", (40,), 10, width=8, depth=1)


# --------------------------------------------------------------------------- named jobs


def test_unknown_job_name_raises_value_error():
    with pytest.raises(
        ValueError, match="unknown job 'nope'; run `compute-allocator jobs` to list them"
    ):
        make_job("nope")
    with pytest.raises(ValueError):
        describe("nope")


def test_every_named_job_belongs_to_exactly_one_split():
    train, heldout = names("train"), names("heldout")
    assert sorted(train + heldout) == sorted(names()) == sorted(names("all"))
    assert not set(train) & set(heldout)
    assert 8 <= len(names()) <= 16
    with pytest.raises(ValueError, match="split"):
        names("test")


def test_describe_is_one_line_naming_model_optimizer_budget_regime_and_split():
    for name in names():
        line = describe(name)
        recipe = NAMED_JOBS[name]
        assert "\n" not in line
        for part in (
            recipe.dataset,
            recipe.model,
            recipe.optimizer,
            f"{recipe.budget_steps} steps",
            recipe.regime,
            recipe.split,
        ):
            assert part in line


def test_make_job_builds_a_training_job_named_after_the_recipe_with_the_given_spec():
    spec = AllocationSpec(layer_groups=2, max_steps=5)
    job = make_job("digits-mlp", seed=1, spec=spec, device="cpu")
    assert job.name == "digits-mlp"
    assert job.spec == spec
    assert job.budget_steps == NAMED_JOBS["digits-mlp"].budget_steps


def test_same_job_seed_gives_the_same_initial_weights_and_another_seed_different_ones():
    def weights(seed):
        return torch.cat(
            [
                p.detach().flatten()
                for p in make_job("mnist1d-cnn1d", seed=seed, device="cpu").model.parameters()
            ]
        )

    assert torch.equal(weights(0), weights(0))
    assert not torch.equal(weights(0), weights(1))


@functools.cache
def _uniform_run(name: str):
    from allocator.runner import run_job

    return run_job(make_job(name, seed=0, device="cpu"), "uniform")


@pytest.mark.parametrize("name", names())
def test_every_named_job_builds_and_uniform_training_lowers_val_loss(name):
    result = _uniform_run(name)
    assert not result.diverged
    assert result.curve[0] == (0.0, result.initial_val_loss)
    assert result.best_val_loss < 0.9 * result.initial_val_loss


@pytest.mark.parametrize("name", names())
def test_named_jobs_show_their_regime_under_uniform_training(name):
    # compute-bound: still improving when the budget ends; data-bound: the
    # validation loss turned up before it.
    assert measured_regime(_uniform_run(name).curve) == NAMED_JOBS[name].regime


def test_both_regimes_occur_in_both_splits():
    for split in ("train", "heldout"):
        assert {NAMED_JOBS[n].regime for n in names(split)} == {"compute-bound", "data-bound"}


def test_measured_regime_reads_falling_turning_and_flat_curves():
    fractions = np.linspace(0.0, 1.0, 21)
    falling = [(f, 2.0 - f) for f in fractions]
    turning = [(f, 1.0 + (f - 0.3) ** 2) for f in fractions]
    flat = [(f, max(1.0, 2.0 - 4 * f)) for f in fractions]
    assert measured_regime(falling) == "compute-bound"
    assert measured_regime(turning) == "data-bound"
    assert measured_regime(flat) == "converged"


# --------------------------------------------------------------------------- the distribution


def _family_and_variant(recipe: JobRecipe) -> tuple[str, str, str]:
    options = recipe.options
    variant = str(
        options.get("kind") or options.get("variant") or ("flat" if options.get("flat") else "-")
    )
    return recipe.model, recipe.dataset, variant


def test_heldout_split_holds_model_families_the_train_split_lacks():
    train = JobDistribution("train").recipes(np.random.default_rng(0), 300)
    heldout = JobDistribution("heldout").recipes(np.random.default_rng(0), 300)
    train_families = {r.model for r in train} | {NAMED_JOBS[n].model for n in names("train")}
    heldout_families = {r.model for r in heldout} | {NAMED_JOBS[n].model for n in names("heldout")}
    assert train_families == set(TRAIN_FAMILIES)
    assert {"cnn2d", "transformer"} <= heldout_families
    assert not set(HELDOUT_FAMILIES) & train_families
    assert set(JobDistribution("train").model_families) == set(TRAIN_FAMILIES)


def test_train_and_heldout_splits_are_disjoint_in_model_and_dataset_variant():
    train = JobDistribution("train", named_share=0.3).recipes(np.random.default_rng(1), 300)
    heldout = JobDistribution("heldout", named_share=0.3).recipes(np.random.default_rng(1), 300)
    assert not {_family_and_variant(r) for r in train} & {_family_and_variant(r) for r in heldout}
    held_out_variants = {("synthetic-classification", "teacher"), ("mnist1d", "hard")}
    assert not {(r.dataset, _family_and_variant(r)[2]) for r in train} & held_out_variants
    assert {(r.dataset, _family_and_variant(r)[2]) for r in heldout} >= held_out_variants
    assert all(r.split == "train" for r in train) and all(r.split == "heldout" for r in heldout)


def test_distribution_samples_varied_jobs():
    recipes = JobDistribution("train", named_share=0.0).recipes(np.random.default_rng(2), 60)
    assert len({r.dataset for r in recipes}) >= 3
    assert {r.model for r in recipes} == set(TRAIN_FAMILIES)
    assert {r.optimizer for r in recipes} == {"adam", "adamw", "sgd"}
    assert {r.regime for r in recipes} == {"compute-bound", "data-bound"}
    assert (
        len({r.batch_size for r in recipes}) >= 2 and len({r.budget_steps for r in recipes}) >= 10
    )
    assert len({r.lr for r in recipes}) == len(recipes)
    for r in recipes:
        low, high = LR_RANGES[r.optimizer]
        assert low <= r.lr <= high


def test_same_rng_seed_draws_the_same_recipes():
    a = JobDistribution("heldout").recipes(np.random.default_rng(5), 20)
    b = JobDistribution("heldout").recipes(np.random.default_rng(5), 20)
    assert a == b


def test_sample_builds_a_training_job_with_the_given_spec():
    from allocator.job import TrainingJob

    spec = AllocationSpec(sample_groups=3, layer_groups=4, max_steps=8)
    rng = np.random.default_rng(3)
    distribution = JobDistribution("heldout", device="cpu")
    for _ in range(3):
        job = distribution.sample(rng, spec=spec)
        assert isinstance(job, TrainingJob)
        assert job.spec == spec


def test_sampled_data_bound_jobs_get_small_noisy_training_sets():
    recipes = JobDistribution("train", named_share=0.0).recipes(np.random.default_rng(4), 60)
    for r in recipes:
        if r.regime == "data-bound":
            assert r.options["n_train"] < 1000
            assert r.options.get("label_noise", 0.0) >= 0.1 or r.options.get("noise", 0.0) >= 0.3


# --------------------------------------------------------------------------- the command


def test_jobs_command_prints_one_job_a_line_name_first(capsys):
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    assert command.run(parser.parse_args(["--split", "heldout"])) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == names("heldout")
    assert all(describe(line.split()[0]) in line for line in lines)


@pytest.mark.parametrize("share", [0.0, 0.8, 1.0])
def test_data_bound_share_sets_the_regime_mix_of_sampled_jobs(share):
    jobs = JobDistribution("train", named_share=0.0, data_bound_share=share)
    regimes = [recipe.regime for recipe in jobs.recipes(0, 400)]
    assert regimes.count("data-bound") / len(regimes) == pytest.approx(share, abs=0.06)


def test_an_even_regime_mix_draws_the_same_jobs_as_before_the_option():
    # the presets' seeded job pools (and every published result) depend on it;
    # these are the recipes the distribution drew before data_bound_share existed
    drawn = [(r.regime, r.model, r.width, r.batch_size) for r in JobDistribution("train").recipes(7, 6)]
    assert drawn == [
        ("data-bound", "resmlp", 128, 128),
        ("compute-bound", "resmlp", 64, 32),
        ("data-bound", "resmlp", 128, 128),
        ("data-bound", "resmlp", 128, 64),
        ("data-bound", "resmlp", 128, 32),
        ("data-bound", "resmlp", 128, 32),
    ]
    with pytest.raises(ValueError, match="data_bound_share"):
        JobDistribution("train", data_bound_share=1.5)


def test_a_family_filter_draws_only_those_families_named_jobs_included():
    jobs = JobDistribution("train", families=["mlp", "resmlp"])
    recipes = jobs.recipes(0, 300)
    assert {recipe.model for recipe in recipes} == {"mlp", "resmlp"}
    assert "mnist1d-cnn1d" not in {recipe.name for recipe in recipes}
    assert jobs.model_families == ("mlp", "resmlp")
    # the left-out family alone: only the variant that has it (MNIST-1D), and its named job
    left_out = JobDistribution("train", families=["cnn1d"]).recipes(0, 100)
    assert {(recipe.model, recipe.dataset) for recipe in left_out} == {("cnn1d", "mnist1d")}
    assert "mnist1d-cnn1d" in {recipe.name for recipe in left_out}


def test_without_a_family_filter_the_draws_are_unchanged():
    every_family = JobDistribution("train", families=["mlp", "resmlp", "cnn1d"]).recipes(3, 20)
    assert every_family == JobDistribution("train").recipes(3, 20)


@pytest.mark.parametrize("families", [["cnn2d"], [], ["mlp", "lstm"]])
def test_a_family_the_split_does_not_have_is_refused(families):
    with pytest.raises(ValueError, match="families must be a non-empty subset of the train split"):
        JobDistribution("train", families=families)
    with pytest.raises(ValueError, match="families must be a list of model family names, got 'mlp'"):
        JobDistribution("train", families="mlp")


def test_balanced_families_give_each_model_family_an_even_share_of_sampled_jobs():
    def share_of_cnn1d(jobs):
        models = [recipe.model for recipe in jobs.recipes(0, 600)]
        return models.count("cnn1d") / len(models)

    # the variant first: the 1-D CNN comes only with MNIST-1D, one variant of four, one family of three
    assert share_of_cnn1d(JobDistribution("train", named_share=0.0)) == pytest.approx(1 / 12, abs=0.03)
    assert share_of_cnn1d(JobDistribution("train", named_share=0.0, balance_families=True)) == pytest.approx(
        1 / 3, abs=0.05
    )
    balanced = JobDistribution("train", named_share=0.0, balance_families=True).recipes(1, 100)
    assert {recipe.dataset for recipe in balanced if recipe.model == "cnn1d"} == {"mnist1d"}


def test_family_weights_draw_the_model_family_first_with_those_relative_weights():
    def shares(**options):
        models = [recipe.model for recipe in JobDistribution("train", named_share=0.0, **options).recipes(0, 600)]
        return {family: models.count(family) / len(models) for family in ("mlp", "resmlp", "cnn1d")}

    weighted = shares(family_weights={"cnn1d": 6})  # 6 : 1 : 1, the families not named weigh 1
    assert weighted["cnn1d"] == pytest.approx(6 / 8, abs=0.05)
    assert weighted["mlp"] == pytest.approx(1 / 8, abs=0.04) and weighted["resmlp"] == pytest.approx(1 / 8, abs=0.04)
    assert shares(family_weights={"cnn1d": 0})["cnn1d"] == 0.0
    # the weights imply the family-first draw; the 1-D CNN still comes only with MNIST-1D
    weighted_recipes = JobDistribution("train", named_share=0.0, family_weights={"cnn1d": 6}).recipes(1, 100)
    assert {recipe.dataset for recipe in weighted_recipes if recipe.model == "cnn1d"} == {"mnist1d"}


def test_a_zero_family_weight_leaves_the_named_jobs_of_that_family_in():
    jobs = JobDistribution("train", named_share=1.0, family_weights={"cnn1d": 0})
    assert "mnist1d-cnn1d" in {recipe.name for recipe in jobs.recipes(0, 200)}


def test_without_family_weights_the_balanced_draw_is_the_one_seeded_job_pools_were_built_with():
    # drawn by the code before family_weights existed (ceea14f): the same rng calls, the same jobs
    balanced = JobDistribution("train", named_share=0.0, balance_families=True).recipes(3, 6)
    assert [recipe.name for recipe in balanced] == [
        "train-mnist1d-cnn1d-15973",
        "train-mnist1d-cnn1d-95626",
        "train-mnist1d-mlp-13926",
        "train-mnist1d-mlp-37424",
        "train-mnist1d-mlp-72216",
        "train-digits-flat-resmlp-32560",
    ]


@pytest.mark.parametrize(
    "weights, message",
    [
        ({"cnn2d": 1}, r"family_weights names \['cnn2d'\], not among the sampled model families"),
        ({"cnn1d": -1}, r"family_weights\['cnn1d'\] must be a finite number >= 0, got -1"),
        ({"cnn1d": float("inf")}, r"family_weights\['cnn1d'\] must be a finite number >= 0, got inf"),
        ({"cnn1d": True}, r"family_weights\['cnn1d'\] must be a finite number >= 0, got True"),
        ({"mlp": 0, "resmlp": 0, "cnn1d": 0}, "family_weights leave no sampled model family to draw"),
        (["cnn1d"], r"family_weights must map model family names to weights, got \['cnn1d'\]"),
    ],
)
def test_bad_family_weights_are_a_clear_error(weights, message):
    with pytest.raises(ValueError, match=message):
        JobDistribution("train", family_weights=weights)


def test_budget_epochs_are_the_passes_over_the_training_set_the_budget_buys():
    # 250 steps of 64 samples over the 1,397 digits: a slow learner still improving at 11 epochs
    assert NAMED_JOBS["digits-transformer"].budget_epochs == pytest.approx(250 * 64 / 1397)
    assert NAMED_JOBS["synth-noisy-mlp"].budget_epochs == pytest.approx(250 * 64 / 300)


def test_by_default_the_number_of_epochs_tells_the_regime():
    # the shortcut many_epoch_share exists to break: most sampled compute-bound jobs run
    # fewer epochs than most data-bound ones, so a policy can stop on epochs alone
    recipes = JobDistribution("train", named_share=0.0).recipes(np.random.default_rng(2), 120)
    compute = [r.budget_epochs for r in recipes if r.regime == "compute-bound"]
    data = [r.budget_epochs for r in recipes if r.regime == "data-bound"]
    assert np.percentile(compute, 80) < np.percentile(data, 20)
    assert np.median(data) > 4 * np.median(compute)


def test_many_epoch_jobs_are_compute_bound_draws_with_many_epochs_clean_labels_and_a_slower_lr():
    from allocator.jobs.distribution import MANY_EPOCH_LR_SCALE, MANY_EPOCHS

    recipes = JobDistribution("train", named_share=0.0, many_epoch_share=1.0).recipes(
        np.random.default_rng(2), 120
    )
    many = [r for r in recipes if "many-epochs" in r.name]
    assert len(many) == sum(r.regime == "compute-bound" for r in recipes) > 40
    epochs = [r.budget_epochs for r in many]
    # digits has 1,397 training samples: a few of its draws run fewer epochs than asked for
    assert np.median(epochs) > MANY_EPOCHS[0] and max(epochs) <= MANY_EPOCHS[1] * 1.01
    assert sum(e >= MANY_EPOCHS[0] * 0.99 for e in epochs) / len(epochs) > 0.9
    for r in many:
        assert r.options.get("label_noise", 0.0) == 0.0
        low, high = LR_RANGES[r.optimizer]
        assert low * MANY_EPOCH_LR_SCALE[0] <= r.lr <= high * MANY_EPOCH_LR_SCALE[1]
    # data-bound draws are untouched: small noisy sets, as without the option
    for r in recipes:
        if r.regime == "data-bound":
            assert r.options["n_train"] < 1000 and "many-epochs" not in r.name


def test_many_epoch_jobs_make_the_epoch_ranges_of_the_two_regimes_overlap():
    recipes = JobDistribution("train", named_share=0.0, many_epoch_share=0.5).recipes(
        np.random.default_rng(2), 200
    )
    compute = np.array([r.budget_epochs for r in recipes if r.regime == "compute-bound"])
    data = np.array([r.budget_epochs for r in recipes if r.regime == "data-bound"])
    # between 9 and 30 epochs, where the held-out digits CNN and transformer sit, both regimes occur
    in_band = lambda epochs: ((epochs >= 9) & (epochs <= 30)).sum()  # noqa: E731
    assert in_band(compute) >= 0.4 * in_band(data) > 0


def test_no_many_epoch_share_draws_the_same_jobs_as_before_the_option():
    assert JobDistribution("train", many_epoch_share=0.0).recipes(7, 30) == JobDistribution("train").recipes(
        7, 30
    )
    with pytest.raises(ValueError, match="many_epoch_share"):
        JobDistribution("train", many_epoch_share=-0.1)


def test_distinct_recipes_are_the_first_distinct_draws_that_keep_accepts():
    from allocator.jobs import JobDistribution

    distribution = JobDistribution("train", many_epoch_share=0.5)
    slow = lambda recipe: "-many-epochs-" in recipe.name  # noqa: E731
    recipes = distribution.distinct_recipes(4, job_seed=3, keep=slow)
    assert len(recipes) == 4 and all(slow(recipe) and recipe.name == name for name, recipe in recipes.items())
    drawn = [r.name for r in distribution.recipes(3, 16) if slow(r)]
    assert list(recipes) == list(dict.fromkeys(drawn))[:4]  # in the order drawn, repeats once
    assert distribution.distinct_recipes(4, job_seed=3, keep=slow) == recipes  # seeded

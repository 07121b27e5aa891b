"""`compute-allocator evaluate`: every controller on the same jobs and seeds, and report files that match the runs."""

from __future__ import annotations

import csv
import math
import re
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from allocator import TrainingJob
from allocator.cli import main
from allocator.evaluation import (
    CSV_COLUMNS,
    DEFAULT_BASELINES,
    contenders,
    describe_machine,
    evaluate,
    resolve_seeds,
)
from tests.test_apply import POLICY_SPEC, make_policy_dir

BASELINES = ["uniform", "freezeout"]


def tiny_classification(seed: int) -> TrainingJob:
    generator = torch.Generator().manual_seed(100)  # the data is fixed; the seed drives the run
    x = torch.randn(600, 12, generator=generator)
    y = (x @ torch.randn(12, 3, generator=generator)).argmax(dim=1)
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3)
    )
    return TrainingJob(
        model,
        (x[:500], y[:500]),
        (x[500:], y[500:]),
        batch_size=32,
        budget_steps=40,
        lr=3e-3,
        device="cpu",
        seed=seed,
        name="tiny-classification",
    )


def tiny_regression(seed: int) -> TrainingJob:
    generator = torch.Generator().manual_seed(200)
    x = torch.randn(400, 8, generator=generator)
    y = torch.sin(x[:, :2]) + 0.1 * torch.randn(400, 2, generator=generator)
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 2)
    )
    return TrainingJob(
        model,
        (x[:300], y[:300]),
        (x[300:], y[300:]),
        loss="mse",
        batch_size=32,
        budget_steps=40,
        lr=3e-3,
        device="cpu",
        seed=seed,
        name="tiny-regression",
    )


JOBS = {"tiny-classification": tiny_classification, "tiny-regression": tiny_regression}


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory) -> Path:
    return make_policy_dir(tmp_path_factory.mktemp("trained") / "policy")


@pytest.fixture(scope="module")
def evaluated(policy_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluation")
    report = evaluate(
        policy_dir, seeds=2, baselines=BASELINES, out_dir=out, jobs=JOBS, progress=False
    )
    return report, out


def markdown_tables(text: str) -> dict[str, dict[str, dict[str, str]]]:
    """``{section: {controller: {column: cell}}}`` for every '## section' of results.md."""
    tables = {}
    for section in re.split(r"^## ", text, flags=re.MULTILINE)[1:]:
        title, _, body = section.partition("\n")
        rows = [line.strip("|").split(" | ") for line in body.splitlines() if line.startswith("|")]
        headers = [h.strip() for h in rows[0]]
        tables[title.strip()] = {
            row[0].strip(): dict(zip(headers, (cell.strip() for cell in row))) for row in rows[2:]
        }
    return tables


def first_reach(curve, target: float) -> float:
    return next((fraction for fraction, loss in curve if loss <= target), math.inf)


def test_every_controller_runs_every_job_and_seed_fresh_with_the_policys_spec(evaluated):
    report, _ = evaluated
    assert report.controllers == ["policy", *BASELINES]
    assert report.seeds == [0, 1] and report.jobs == list(JOBS)
    assert len(report.runs) == len(JOBS) * 2 * 3
    for run in report.runs:
        result = run.result
        assert result.controller_name == run.controller and result.job_name == run.job
        assert result.curve[0] == (0.0, result.initial_val_loss)
        # every controller of a (job, seed) pair started from the same weights
        assert (
            result.initial_val_loss
            == report.run(run.job, run.seed, "uniform").result.initial_val_loss
        )
        # the policy's spec applies to all: G = 2 layer gates, at most 8 steps an interval
        assert all(
            len(i["allocation"]["layer_gates"]) == POLICY_SPEC.layer_groups
            for i in result.intervals
        )
        assert max(i["steps"] for i in result.intervals) <= POLICY_SPEC.max_steps
    assert (
        report.run("tiny-classification", 0, "uniform").result.objective
        != report.run("tiny-classification", 1, "uniform").result.objective
    )


def test_results_csv_holds_every_number_of_every_run(evaluated):
    report, out = evaluated
    with open(out / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == len(report.runs)
    for row in rows:
        run = report.run(row["job"], int(row["seed"]), row["controller"])
        result = run.result
        for key, value in result.to_dict().items():
            if key in ("job", "controller"):
                continue
            expected = "" if value is None else str(value)
            assert row[key] == expected, (key, row[key], value)
        target = report.run(row["job"], int(row["seed"]), "uniform").result.best_val_loss
        assert float(row["target_val_loss"]) == target
        assert float(row["compute_to_target"]) == first_reach(result.curve, target)
        assert int(row["eval_compute"]) == result.eval_compute
    uniform = [r for r in rows if r["controller"] == "uniform"]
    assert all(float(r["compute_to_target"]) <= 1.0 for r in uniform), (
        "uniform reaches its own best"
    )


def test_results_md_summaries_are_recomputed_from_the_run_results(evaluated):
    report, out = evaluated
    tables = markdown_tables((out / "results.md").read_text())
    assert set(tables) == {"Overall", *JOBS}

    pairs = [(job, seed) for job in JOBS for seed in (0, 1)]
    results = {(r.job, r.seed, r.controller): r.result for r in report.runs}
    target = {(job, seed): results[job, seed, "uniform"].best_val_loss for job, seed in pairs}
    reach = {key: first_reach(result.curve, target[key[:2]]) for key, result in results.items()}

    for controller in report.controllers:
        overall = tables["Overall"][controller]
        mean_j = np.mean([results[job, seed, controller].objective for job, seed in pairs])
        assert overall["mean J"] == f"{mean_j:.4f}"
        median = statistics.median(reach[job, seed, controller] for job, seed in pairs)
        assert overall["median compute to target"] == (
            "never" if math.isinf(median) else f"{median:.3f}"
        )
        if controller != "policy":
            won = sum(
                results[job, seed, "policy"].objective < results[job, seed, controller].objective
                for job, seed in pairs
            )
            assert overall["policy wins (J lower)"].startswith(f"{won}/{len(pairs)} (")
            assert report.win_rate(controller) == won / len(pairs)

        for job in JOBS:
            row = tables[job][controller]
            runs = [results[job, seed, controller] for seed in (0, 1)]
            assert row["J"] == f"{np.mean([r.objective for r in runs]):.4f}"
            assert row["final val loss"] == f"{np.mean([r.final_val_loss for r in runs]):.4f}"
            assert row["best val loss"] == f"{np.mean([r.best_val_loss for r in runs]):.4f}"
            reached = [
                reach[job, seed, controller]
                for seed in (0, 1)
                if math.isfinite(reach[job, seed, controller])
            ]
            cell = row["compute to target"]
            if not reached:
                assert cell == "never"
            elif len(reached) == 2:
                assert cell == f"{np.mean(reached):.3f}"
            else:
                assert cell == f"{np.mean(reached):.3f} (1/2 reached)"
    assert "final val accuracy" in next(iter(tables["tiny-classification"].values()))
    assert "final val accuracy" not in next(iter(tables["tiny-regression"].values()))


def test_curves_png_has_a_panel_per_job(evaluated):
    from matplotlib.image import imread

    _, out = evaluated
    image = imread(out / "curves.png")
    height, width = image.shape[:2]
    assert width > 2 * 300 and height > 300  # two panels side by side
    assert image[..., :3].std() > 0.05  # something is drawn


def test_evaluate_command_without_a_policy_compares_the_baselines(tmp_path, capsys):
    out = tmp_path / "eval"
    code = main(
        [
            "evaluate",
            "--split",
            "train",
            "--jobs",
            "1",
            "--seeds",
            "1",
            "--baselines",
            "random",
            "--out",
            str(out),
            "--device",
            "cpu",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["curves.png", "results.csv", "results.md"]
    with open(out / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["controller"] for r in rows] == ["uniform", "random"]
    assert "| uniform |" in printed and "policy" not in printed
    assert "split `train`" in (out / "results.md").read_text()


def test_results_md_names_the_machine_that_decides_the_last_digits(evaluated):
    """Results agree to the last digit only on the same torch, CPU kernels and GPU: results.md says which."""
    report, out = evaluated
    text = (out / "results.md").read_text()
    assert report.machine == describe_machine("auto")
    assert f"- **Machine**: {report.machine}." in text
    assert f"torch {torch.__version__}" in report.machine and "torch thread" in report.machine
    assert "GPU" not in describe_machine("cpu"), "a CPU evaluation names no GPU"


@pytest.mark.parametrize(
    "seeds, expected",
    [(3, [0, 1, 2]), ("3", [0, 1, 2]), ("0,", [0]), ("5,", [5]), ("3,7,3", [3, 7]), ([4, 1], [4, 1])],
)
def test_seeds_are_a_count_or_a_comma_separated_list(seeds, expected):
    """A bare number counts seeds from 0; a trailing comma makes it a list of one seed."""
    assert resolve_seeds(seeds) == expected


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--baselines", "uniform,bogus"], "unknown baseline"),
        (["--jobs", "no-such-job"], "unknown job 'no-such-job'"),
        (["--seeds", "0"], "for seed 0 alone write --seeds 0,"),
        (["--policy", "/nonexistent/policy"], "does not exist"),
        (["--threads", "-1"], "--threads must be >= 0"),
        (["--workers", "0"], "(--workers) must be an integer >= 1"),
    ],
)
def test_evaluate_bad_input_exits_2_with_one_line(arguments, message, tmp_path, capsys):
    code = main(["evaluate", "--out", str(tmp_path / "eval"), *arguments])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0]
    assert not (tmp_path / "eval").exists()


TINY_JOB_FILE = """
import torch
from torch import nn

from allocator import TrainingJob


def make_job(seed=0):
    generator = torch.Generator().manual_seed(100)
    x = torch.randn(600, 12, generator=generator)
    y = (x @ torch.randn(12, 3, generator=generator)).argmax(dim=1)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3))
    return TrainingJob(model, (x[:500], y[:500]), (x[500:], y[500:]), batch_size=32, budget_steps=40,
                       lr=3e-3, device="cpu", seed=seed, name=f"tiny-on-{torch.get_num_threads()}-threads")
"""


def test_workers_run_the_pairs_in_processes_and_give_the_numbers_of_one_process(policy_dir, tmp_path):
    job_file = tmp_path / "my_job.py"
    job_file.write_text(TINY_JOB_FILE)
    options = dict(seeds=2, baselines=BASELINES, jobs=[f"{job_file}:make_job"], progress=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers take this process's thread count, whatever torch's default
    try:
        alone = evaluate(policy_dir, **options)
        spread = evaluate(policy_dir, workers=2, **options)
    finally:
        torch.set_num_threads(threads)

    def numbers(report):
        return [(r.job, r.seed, r.controller, r.result.job_name, r.result.objective, r.result.curve) for r in report.runs]

    assert numbers(spread) == numbers(alone)
    assert spread.runs[0].result.job_name == "tiny-on-1-threads"
    assert [r.controller for r in spread.runs[:3]] == ["policy", "uniform", "freezeout"]


def test_workers_refuse_jobs_given_as_functions_before_any_run(policy_dir):
    with pytest.raises(ValueError, match="workers > 1 needs jobs by name"):
        evaluate(policy_dir, seeds=1, baselines=BASELINES, jobs=JOBS, workers=2, progress=False)


def test_evaluate_compares_with_early_stopping_unasked():
    """The textbook fix for runs that go on after the validation loss stops improving is a default baseline."""
    labels = [contender.label for contender in contenders(None, DEFAULT_BASELINES)]
    assert labels[0] == "uniform" and "early-stopping" in labels

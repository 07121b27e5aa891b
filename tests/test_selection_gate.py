"""The selection gate: selective backprop runs only while the hardest samples pull the way the batch does."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from allocator import Allocation, AllocationSpec, ObservationLayout, TrainingJob, run_job
from tests.conftest import make_classification, make_job, make_mlp

SPEC = AllocationSpec(max_steps=10)
STANDARD = Allocation.uniform(SPEC)
SELECTING = Allocation((0.25, 0.25, 0.25, 0.25), 0.5, (1.0, 1.0, 1.0, 1.0), 10)
NEVER_OPEN = 1.0  # no hardest third pulls exactly the way its whole batch does: the gate probes, never opens
ALWAYS_OPEN = -1.0  # at or below any cosine: selection runs once there is a measurement


def gated_job(gate: float | None, **kwargs) -> TrainingJob:
    job = make_job(budget_steps=60, spec=SPEC, **kwargs)
    job.selection_gate = gate
    return job


def val_losses(job: TrainingJob, allocation: Allocation) -> list[float]:
    losses = []
    while not job.done:
        job.advance(allocation)
        losses.append(job.val_loss)
    return losses


def test_without_a_gate_nothing_is_probed_and_selection_runs_from_the_first_interval():
    job = gated_job(None)
    report = job.advance(SELECTING)
    assert math.isnan(job.selection_alignment)
    assert report.allocation.keep_fraction == 0.5
    assert report.compute == 10 * job.step_flops(0.5, [True] * 4)


def test_a_closed_gate_runs_the_whole_batch_and_charges_and_reports_standard_training():
    asked, standard = gated_job(NEVER_OPEN), gated_job(NEVER_OPEN)
    report = asked.advance(SELECTING)
    assert report.allocation.keep_fraction == 1.0  # the report says what ran
    assert report.compute == standard.advance(STANDARD).compute
    assert val_losses(asked, SELECTING) == val_losses(standard, STANDARD)
    assert -1.0 <= asked.selection_alignment <= 1.0


def test_an_open_gate_lets_selection_run_from_the_second_interval():
    job = gated_job(ALWAYS_OPEN)
    first, second = job.advance(SELECTING), job.advance(SELECTING)
    assert first.allocation.keep_fraction == 1.0  # no measurement yet: the first interval never selects
    assert second.allocation.keep_fraction == 0.5
    assert second.compute < first.compute


def test_run_job_records_the_allocation_that_ran_not_the_one_asked_for():
    class AlwaysSelect:
        def act(self, observation):
            return SELECTING

    result = run_job(gated_job(NEVER_OPEN), AlwaysSelect())
    assert {i["allocation"]["keep_fraction"] for i in result.intervals} == {1.0}


class DropoutAndBatchNorm(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.Sequential(
            nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)
        )

    def forward(self, x):
        return self.layers(x)


def test_the_probe_leaves_training_unchanged_with_dropout_and_batch_norm():
    # An open gate on a job that never asks for selection only adds the probe: the
    # random state (dropout) is forked and the batch-norm statistics are put back.
    def run(gate):
        torch.manual_seed(123)  # dropout draws from the global generator
        job = make_job(model=DropoutAndBatchNorm(), budget_steps=40, spec=AllocationSpec(layer_groups=2, max_steps=10))
        job.selection_gate = gate
        return val_losses(job, Allocation((0.4, 0.3, 0.2, 0.1), 1.0, (1.0, 0.5), 10))

    assert run(ALWAYS_OPEN) == run(None)


def alignment_late_in_training(labels: torch.Tensor) -> float:
    """Mean selection_alignment over the last 10 of 30 intervals of standard training.

    One batch's probe is noisy (0.2 either way); ten of them, once the easy part is learnt, are not.
    """
    x, _ = make_classification()
    job = TrainingJob(make_mlp(), (x[:1000], labels[:1000]), (x[1000:], labels[1000:]), batch_size=64,
                      budget_steps=300, device="cpu", seed=0, spec=SPEC)
    job.selection_gate = NEVER_OPEN
    alignments = []
    while not job.done:
        job.advance(STANDARD)
        alignments.append(job.selection_alignment)
    assert len(alignments) == 30
    return float(np.mean(alignments[-10:]))


def test_the_alignment_is_low_where_the_hardest_samples_are_label_noise():
    # The same inputs, once with the teacher's labels and once with a third of them
    # replaced by random classes: then the hardest samples are mostly the wrong
    # labels, and their gradient pulls away from the whole batch's.
    _, clean = make_classification()
    noisy = clean.clone()
    flipped = torch.Generator().manual_seed(1)
    chosen = torch.rand(len(noisy), generator=flipped) < 1 / 3
    noisy[chosen] = torch.randint(0, 4, (int(chosen.sum()),), generator=flipped)
    clean_alignment, noisy_alignment = alignment_late_in_training(clean), alignment_late_in_training(noisy)
    assert clean_alignment > 0.8  # the hardest clean samples pull the way the batch does
    assert clean_alignment - noisy_alignment > 0.15


def test_the_gate_is_a_cosine_or_none():
    job = gated_job(None)
    for bad in (1.5, -2.0, float("nan"), "0.7", True):
        with pytest.raises(ValueError, match="selection_gate"):
            job.selection_gate = bad
    job.selection_gate = 0.7
    assert job.selection_gate == 0.7


def test_the_observation_shows_whether_the_gate_is_open_for_the_next_interval():
    # selection_alignment in the observation is the measurement the gate reads, so a
    # policy under gate T can tell whether its next request for selection will run.
    x, labels = make_classification()
    job = TrainingJob(make_mlp(), (x[:1000], labels[:1000]), (x[1000:], labels[1000:]), batch_size=64,
                      budget_steps=300, device="cpu", seed=0, spec=SPEC)
    threshold = 0.5  # early intervals read below it, later ones above
    job.selection_gate = threshold
    layout = ObservationLayout(SPEC)
    feature = layout.global_index("selection_alignment")
    assert layout.global_features(job.observation())[feature] == 1.0  # no measurement yet
    job.advance(SELECTING)  # the first interval never selects, whatever the observation says
    seen_open, ran_selection = [], []
    while not job.done:
        seen = float(layout.global_features(job.observation())[feature])
        report = job.advance(SELECTING)
        if report.steps:
            seen_open.append(seen >= threshold)
            ran_selection.append(report.allocation.keep_fraction < 1.0)
        if not job.done:
            assert float(layout.global_features(job.observation())[feature]) == pytest.approx(
                job.selection_alignment, abs=1e-6
            )
    assert ran_selection == seen_open
    assert 0 < sum(seen_open) < len(seen_open)  # both states occur, so the check means something


def test_without_a_gate_the_alignment_feature_reads_one():
    job = gated_job(None)
    layout = ObservationLayout(SPEC)
    while not job.done:
        job.advance(SELECTING)
        assert layout.global_features(job.observation())[layout.global_index("selection_alignment")] == 1.0

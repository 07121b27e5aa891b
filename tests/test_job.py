"""TrainingJob: every allocation axis changes the compute really executed, measured in FLOPs."""

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset
from torch.utils.flop_counter import FlopCounterMode

from allocator import Allocation, AllocationSpec, TrainingJob, run_job
from allocator.allocation import loss_proportional_shares
from allocator.stats import ObservationLayout
from tests.conftest import make_classification, make_job, make_mlp

ALL = (1.0, 1.0, 1.0, 1.0)
SHARES = (0.25, 0.25, 0.25, 0.25)


def validation_flops(job: TrainingJob, val_x: torch.Tensor) -> int:
    """An independent count of the validation pass that advance() also runs."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        job.model(val_x)
    return counter.get_total_flops()


def measured_interval_flops(job: TrainingJob, allocation: Allocation, val_x: torch.Tensor):
    """(FLOPs the job reports, FLOPs FlopCounterMode sees executed) for one interval."""
    job.observation()  # start-up work (initial validation, counting) is not part of the interval
    gates = allocation.layer_gates
    if all(g in (0.0, 1.0) for g in gates):
        job.step_flops(allocation.keep_fraction, [g == 1.0 for g in gates])  # counted before, not inside
    evaluation = validation_flops(job, val_x)
    with FlopCounterMode(display=False) as counter:
        report = job.advance(allocation)
    return report.compute, counter.get_total_flops() - evaluation


def interval(keep=1.0, gates=ALL, steps=1, shares=SHARES) -> Allocation:
    return Allocation(shares, keep, gates, steps)


def test_uniform_step_flops_match_an_independent_count():
    job = make_job()
    x, _ = make_classification()
    reported, executed = measured_interval_flops(job, interval(), x[1000:])
    assert reported == job.uniform_step_flops
    assert reported == pytest.approx(executed, rel=0.05)


def test_keep_quarter_roughly_halves_step_flops_as_selective_backprop_does():
    job = make_job()
    x, _ = make_classification()
    reported, executed = measured_interval_flops(job, interval(keep=0.25), x[1000:])
    assert reported == pytest.approx(executed, rel=0.05)
    # no-grad scoring forward over B + forward and backward over B/4: (1 + 3/4) / 3 of a step
    assert 0.45 < reported / job.uniform_step_flops < 0.65


def test_frozen_prefix_skips_backward_flops():
    job = make_job()
    x, _ = make_classification()
    reported, executed = measured_interval_flops(job, interval(gates=(0.0, 0.0, 1.0, 1.0)), x[1000:])
    assert reported == pytest.approx(executed, rel=0.05)
    forward = job.step_flops(1.0, (False,) * 4)  # forward only
    full = job.uniform_step_flops
    assert forward < reported < full
    # the first half of the parameters gets neither weight nor input gradients
    first_half = sum(g.parameter_count for g in job.layer_groups[:2])
    second_half = sum(g.parameter_count for g in job.layer_groups[2:])
    batch = job.batch_size
    assert full - reported >= 0.95 * 4 * batch * first_half - 4 * batch * 0.05 * second_half


def test_untrained_group_keeps_its_weights_bit_for_bit():
    job = make_job()
    job.observation()
    frozen = [p.detach().clone() for p in job.model[0].parameters()]
    trained = [p.detach().clone() for p in job.model[6].parameters()]
    job.advance(interval(gates=(0.0, 1.0, 1.0, 1.0), steps=5))
    assert all(torch.equal(a, b) for a, b in zip(frozen, job.model[0].parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(trained, job.model[6].parameters()))


def test_untrained_middle_group_gets_no_weight_update_but_earlier_groups_train():
    job = make_job()
    job.observation()
    middle = [p.detach().clone() for p in job.model[2].parameters()]
    first = [p.detach().clone() for p in job.model[0].parameters()]
    job.advance(interval(gates=(1.0, 0.0, 1.0, 1.0), steps=3))
    assert all(torch.equal(a, b) for a, b in zip(middle, job.model[2].parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(first, job.model[0].parameters()))


def test_gate_is_the_probability_a_group_is_trained_at_a_step():
    job = make_job(budget_steps=400)
    job.observation()
    seen = []
    original = job._set_trained
    job._set_trained = lambda trained: (seen.append(trained), original(trained))[1]
    job.advance(Allocation(SHARES, 1.0, (0.3, 1.0, 1.0, 1.0), 10))
    for _ in range(19):
        job.advance(Allocation(SHARES, 1.0, (0.3, 1.0, 1.0, 1.0), 10))
    rate = np.mean([t[0] for t in seen])
    assert len(seen) == 200 and abs(rate - 0.3) < 0.1


def test_zero_steps_stop_the_job_with_the_budget_unspent():
    job = make_job()
    job.advance(interval(steps=3))
    report = job.advance(interval(steps=0))
    assert report.done and report.stopped and report.compute == 0
    assert job.compute_used == 3 * job.uniform_step_flops < job.budget
    with pytest.raises(RuntimeError, match="finished"):
        job.advance(interval())


def test_uniform_run_spends_exactly_the_budget():
    job = make_job(budget_steps=25)
    result = run_job(job, "uniform")
    assert result.compute_used == result.budget == 25 * job.uniform_step_flops
    assert result.steps == 25
    assert result.curve[0] == (0.0, result.initial_val_loss)
    assert result.curve[-1][0] == pytest.approx(1.0)


def test_stop_before_budget_skips_the_interval_that_would_end_the_budget():
    # 25 steps in intervals of 10: 10, 10, then the 5 left are at most the last interval's 10
    job = make_job(budget_steps=25)
    job.stop_before_budget = True
    reports = [job.advance(interval(steps=10)) for _ in range(3)]
    assert [r.steps for r in reports] == [10, 10, 0]
    assert reports[-1].done and reports[-1].stopped
    assert job.compute_used == 20 * job.uniform_step_flops < job.budget


def test_stop_before_budget_compares_with_what_the_last_interval_spent():
    # 22 steps: after 10, 12 left; after 4 more, 8 left is more than the 4 just spent,
    # so the job trains on and the budget ends inside the next interval
    job = make_job(budget_steps=22)
    job.stop_before_budget = True
    assert [job.advance(interval(steps=s)).steps for s in (10, 4, 10)] == [10, 4, 8]
    assert job.compute_used == job.budget


def test_without_stop_before_budget_the_last_interval_runs():
    job = make_job(budget_steps=25)
    assert not job.stop_before_budget  # off unless a policy or the env sets it
    assert [job.advance(interval(steps=10)).steps for _ in range(3)] == [10, 10, 5]


def test_the_loss_share_prior_tilts_the_allocations_shares_toward_high_loss_groups():
    job = make_job(budget_steps=60)
    job.share_prior = "loss"
    first = job.advance(interval(steps=10))  # no loss seen yet: the allocation's shares as they are
    assert first.allocation.sample_shares == pytest.approx([0.25] * 4)
    layout = ObservationLayout(job.spec)
    log_loss = layout.sample_group_features(job.observation())[:, layout.sample_index("log_loss")]
    second = job.advance(interval(steps=10))
    drawn = np.array(second.allocation.sample_shares)  # reported as drawn, not as asked
    assert drawn == pytest.approx(loss_proportional_shares(log_loss), abs=1e-6)  # the groups' losses seen so far
    assert drawn[-1] > drawn[0]
    tilted = job.advance(interval(steps=10, shares=(0.7, 0.1, 0.1, 0.1))).allocation.sample_shares
    assert tilted[0] > drawn[0]  # the action still moves the shares, from the prior
    with pytest.raises(ValueError, match="share_prior must be one of uniform, loss"):
        job.share_prior = "hard"


def test_batch_composition_follows_sample_shares():
    job = make_job()
    job.advance(interval(steps=10))  # losses seen, groups defined
    groups = job.sample_groups()
    shares = (0.5, 0.3, 0.2, 0.0)
    drawn = torch.cat([job.draw_batch(shares) for _ in range(300)])
    observed = torch.bincount(groups[drawn], minlength=4).double() / len(drawn)
    assert np.allclose(observed.numpy(), shares, atol=0.02)
    # within a group every sample is equally likely: all of group 0 gets drawn
    members = (groups == 0).nonzero().flatten()
    assert torch.isin(members, drawn).float().mean() > 0.95


def test_sample_groups_are_loss_quantiles_with_unseen_samples_highest():
    job = make_job()
    job.advance(interval(keep=1.0, steps=10))  # 320 draws: about 270 of 1000 samples seen
    groups = job.sample_groups()
    last = job._last_loss
    seen = torch.isfinite(last)
    # unseen samples rank above every seen loss: they fill the groups from the top
    assert groups[~seen].min() >= groups[seen].max()
    assert (groups == 3).sum() == 250 and (groups[~seen] >= 1).all()
    for group in range(1):
        lower, higher = last[groups == group], last[groups == group + 1]
        assert lower.numel() == 250 and lower.max() <= higher.min()


def test_kept_samples_are_the_highest_loss_ones():
    job = make_job()
    job.observation()
    calls = []
    loss_fn = job._loss_fn

    def recording(output, target):
        losses = loss_fn(output, target)
        calls.append((torch.is_grad_enabled(), losses.detach().clone()))
        return losses

    job._loss_fn = recording
    job.advance(interval(keep=0.25, steps=1))
    (scoring_grad, scores), (training_grad, trained) = calls[0], calls[1]
    assert not scoring_grad and training_grad
    assert len(trained) == 8 and len(scores) == 32
    expected = torch.sort(torch.topk(scores, 8).values).values
    assert torch.allclose(torch.sort(trained).values, expected, atol=1e-6)


def test_same_seed_gives_the_same_run_bit_for_bit():
    allocations = [
        interval(keep=0.5, gates=(0.5, 1.0, 1.0, 1.0), steps=5, shares=(0.1, 0.2, 0.3, 0.4)),
        interval(steps=7),
    ]
    runs = []
    for _ in range(2):
        job = make_job(seed=3)
        reports = [job.advance(a) for a in allocations]
        runs.append(([r.val_loss for r in reports], [p.detach().clone() for p in job.model.parameters()]))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))
    other = make_job(seed=4)
    assert [other.advance(a).val_loss for a in allocations] != runs[0][0]


def test_diverging_job_ends_cleanly_with_a_finite_objective():
    job = make_job(optimizer="sgd", lr=1e9)
    result = run_job(job, "uniform")
    assert result.diverged
    assert math.isfinite(result.objective) and result.objective > 1.8
    assert result.compute_used < result.budget


def test_linear_learning_rate_decays_with_compute_spent():
    job = make_job(budget_steps=20)
    job.advance(interval(steps=10))
    assert job.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * (1 - 9 / 20))


def test_model_is_left_trainable_and_trained_after_the_run():
    job = make_job(budget_steps=20)
    before = [p.detach().clone() for p in job.model.parameters()]
    job.advance(interval(gates=(0.0, 0.0, 0.0, 1.0), steps=10))
    job.advance(interval(steps=0))
    assert job.done
    assert all(p.requires_grad for p in job.model.parameters())
    assert not all(torch.equal(a, b) for a, b in zip(before, job.model.parameters()))


def test_dataset_input_and_mse_loss_and_callable_loss_work():
    x = torch.randn(300, 8)
    y = x @ torch.randn(8, 2)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16), nn.Linear(16, 2))
    job = TrainingJob(model, TensorDataset(x[:200], y[:200]), TensorDataset(x[200:], y[200:]), loss="mse", budget_steps=30, device="cpu")
    result = run_job(job, "uniform")
    assert result.final_val_loss < result.initial_val_loss
    assert result.final_val_accuracy is None

    def huber(output, target):
        return nn.functional.huber_loss(output, target, reduction="none").mean(dim=1)

    job = TrainingJob(make_mlp(8, 2), (x[:200], y[:200]), (x[200:], y[200:]), loss=huber, budget_steps=30, device="cpu")
    assert run_job(job, "uniform").final_val_loss < job.initial_val_loss


def test_layer_groups_follow_forward_order_with_the_head_last():
    class Reversed(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(32, 4)  # registered first, runs last
            self.body = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32))

        def forward(self, x):
            return self.head(torch.relu(self.body(x)))

    job = make_job(model=Reversed())
    job.observation()
    assert job.layer_groups[-1].module_names == ("head",)
    assert job.layer_groups[0].module_names[0] == "body.0"


@pytest.mark.parametrize(
    "change, argument",
    [
        (dict(train=(torch.randn(10, 16), torch.zeros(9, dtype=torch.long))), "train"),
        (dict(train=(torch.full((10, 16), float("nan")), torch.zeros(10, dtype=torch.long))), "train"),
        (dict(batch_size=0), "batch_size"),
        (dict(budget_steps=0), "budget_steps"),
        (dict(loss="hinge"), "loss"),
        (dict(optimizer="lion"), "optimizer"),
        (dict(lr=float("nan")), "lr"),
        (dict(device="tpu9"), "device"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(change, argument):
    x, y = make_classification()
    options = dict(model=make_mlp(), train=(x[:1000], y[:1000]), val=(x[1000:], y[1000:]), device="cpu")
    options.update(change)
    with pytest.raises(ValueError, match=argument):
        TrainingJob(**options)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_a_cuda_job_without_a_gpu_is_a_clear_error():
    x, y = make_classification()
    with pytest.raises(ValueError, match="device is 'cuda' but torch sees no GPU"):
        TrainingJob(make_mlp(), (x[:1000], y[:1000]), (x[1000:], y[1000:]), device="cuda")


def test_use_spec_changes_the_groups_before_the_first_interval_only():
    job = make_job()
    job.use_spec(AllocationSpec(sample_groups=2, layer_groups=2, max_steps=5))
    assert len(job.observation()) == 16 + 4 * 2 + 4 * 2
    assert len(job.layer_groups) == 2
    job.advance(Allocation((0.5, 0.5), 1.0, (1.0, 1.0), 5))
    with pytest.raises(RuntimeError):
        job.use_spec(AllocationSpec())


def test_more_layer_groups_than_modules_is_a_clear_error():
    job = make_job(spec=AllocationSpec(layer_groups=9))
    with pytest.raises(ValueError, match="layer_groups"):
        job.observation()


# ---------------------------------------------------------------------------- CUDA

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="the GPU path needs CUDA")


@needs_cuda
@pytest.mark.parametrize(
    "allocation",
    [
        interval(steps=10),
        # every lever at once: tilted shares, half kept, a frozen and a half-gated group
        interval(keep=0.5, gates=(0.0, 0.5, 1.0, 1.0), shares=(0.1, 0.2, 0.3, 0.4), steps=10),
    ],
    ids=["uniform", "every-lever"],
)
def test_on_cuda_the_job_keeps_its_data_on_the_gpu_and_the_host_waits_once_per_interval(allocation):
    from allocator.bench import host_synchronisations

    job = make_job(device="cuda")
    job.observation()  # start-up (FLOP counting, the first validation) may wait; it runs once per job
    assert job._train_x.device.type == "cuda" and job._val_x.device.type == "cuda"
    assert all(p.device.type == "cuda" for p in job.model.parameters())
    for _ in range(3):
        with host_synchronisations() as syncs:
            report = job.advance(allocation)
        assert report.steps == 10
        assert len(syncs) == 1, f"expected the one read of the interval's statistics, got {syncs}"


@needs_cuda
def test_on_cuda_a_run_matches_the_cpu_run_in_its_accounting():
    cpu, gpu = make_job(device="cpu"), make_job(device="cuda")
    assert gpu.uniform_step_flops == cpu.uniform_step_flops
    uniform = interval(steps=10)
    for _ in range(3):
        on_cpu, on_gpu = cpu.advance(uniform), gpu.advance(uniform)
        assert on_gpu.compute == on_cpu.compute
        assert on_gpu.val_loss == pytest.approx(on_cpu.val_loss, rel=0.05)

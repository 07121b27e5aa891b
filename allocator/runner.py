"""run_job: run a training job under a controller and report what the compute bought.

A *controller* is a trained :class:`~allocator.policy.AllocatorPolicy`, a
baseline name (``"uniform"``, ``"selective-backprop"``, ...), or any object with
``act(observation) -> Allocation``; it may define ``reset(job)``, called once
before the run. With ``tensorboard_dir`` every interval is logged: the
allocation, compute, losses and the loss-versus-compute curve, so runs of
several controllers overlay in TensorBoard.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from allocator.allocation import Allocation
from allocator.job import IntervalReport, TrainingJob
from allocator.objective import Objective, ObjectiveMeter


@dataclass
class RunResult:
    """The outcome of one run: the objective J, the losses, the compute and the curve.

    ``curve`` is a list of ``(compute fraction, validation loss)`` starting with
    ``(0.0, initial validation loss)``; ``compute_used`` and ``budget`` are FLOPs.
    """

    job_name: str
    controller_name: str
    objective: float
    final_val_loss: float
    best_val_loss: float
    initial_val_loss: float
    compute_used: int
    budget: int
    curve: list[tuple[float, float]]
    diverged: bool
    stopped: bool = False
    final_val_accuracy: float | None = None
    best_val_accuracy: float | None = None
    steps: int = 0
    intervals: list[dict] = field(default_factory=list, repr=False)
    eval_compute: int = 0
    wall_time: float = 0.0

    @property
    def compute_fraction(self) -> float:
        return self.compute_used / self.budget

    @property
    def stops_vetoed(self) -> int | None:
        """How many of the controller's stops its stop veto refused, where the job then ran on (a job's
        own rule, the stop before the budget, can end it all the same); ``None`` without a veto."""
        flags = [interval.get("stop_vetoed") for interval in self.intervals]
        return None if all(flag is None for flag in flags) else sum(bool(flag) for flag in flags)

    def compute_to_reach(self, target_loss: float) -> float:
        """Fraction of the budget spent when the validation loss first reached ``target_loss``.

        ``math.inf`` when it never did (reports print that as "never").
        """
        return compute_to_reach(self.curve, target_loss)

    def to_dict(self) -> dict:
        return {
            "job": self.job_name,
            "controller": self.controller_name,
            "objective": self.objective,
            "final_val_loss": self.final_val_loss,
            "best_val_loss": self.best_val_loss,
            "initial_val_loss": self.initial_val_loss,
            "final_val_accuracy": self.final_val_accuracy,
            "best_val_accuracy": self.best_val_accuracy,
            "compute_used": self.compute_used,
            "budget": self.budget,
            "compute_fraction": self.compute_fraction,
            "diverged": self.diverged,
            "stopped": self.stopped,
            "steps": self.steps,
            "wall_time": self.wall_time,
            "stops_vetoed": self.stops_vetoed,
        }


def compute_to_reach(curve, target_loss: float) -> float:
    """:meth:`RunResult.compute_to_reach` of a ``(compute fraction, validation loss)`` curve, such as
    a run's curve cut where a stop rule would have ended it (``math.inf``: never reached)."""
    for fraction, loss in curve:
        if loss <= target_loss:
            return fraction
    return math.inf


def resolve_controller(controller):
    """A controller object from a baseline name or any object with ``act``."""
    if isinstance(controller, str):
        from allocator import baselines

        return baselines.make(controller)
    if not callable(getattr(controller, "act", None)):
        raise ValueError(
            "controller must be a baseline name, an AllocatorPolicy, or an object with "
            f"act(observation) -> Allocation; got {type(controller).__name__}"
        )
    return controller


def controller_name(controller) -> str:
    name = getattr(controller, "name", None)
    return name if isinstance(name, str) else type(controller).__name__


class TensorBoardRunLogger:
    """Writes one run's intervals as TensorBoard scalars (one directory per run).

    Tags: ``allocation/*`` (shares, keep fraction, gates, steps; ``token_share`` from the
    first interval with token dropping on; ``stop_vetoed``, 1 where a policy's stop veto
    refused its stop and the job ran on, under a policy that carries one), ``compute/*``,
    ``loss/*``, ``objective/J``, and ``curve/val_loss_vs_compute`` whose step
    is the per-mille of the budget spent, so curves of runs overlay.
    """

    def __init__(self, log_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:  # pragma: no cover - tensorboard is a dependency
            raise ValueError("TensorBoard logging needs the 'tensorboard' package: pip install tensorboard") from error
        self.writer = SummaryWriter(log_dir=str(log_dir))
        self._token_dropping_seen = False

    def log_start(self, job: TrainingJob, controller_label: str) -> None:
        self.writer.add_text("run/job", f"{job!r} under controller `{controller_label}`", 0)
        self.writer.add_scalar("loss/val", job.val_loss, 0)
        self.writer.add_scalar("curve/val_loss_vs_compute", job.val_loss, 0)

    def log_interval(self, report: IntervalReport, objective_so_far: float, stop_vetoed: bool | None = None) -> None:
        """``stop_vetoed``: whether the controller's veto refused its stop and the job ran on (``None``:
        it has no veto)."""
        step = report.index
        allocation = report.allocation
        scalars = {
            "allocation/keep_fraction": allocation.keep_fraction,
            "allocation/steps": allocation.steps,
            "compute/used_fraction": report.compute_used / report.budget,
            "compute/interval_fraction": report.compute_fraction,
            "loss/val": report.val_loss,
            "objective/J": objective_so_far,
        }
        for k, share in enumerate(allocation.sample_shares):
            scalars[f"allocation/sample_share_{k}"] = share
        for g, gate in enumerate(allocation.layer_gates):
            scalars[f"allocation/layer_gate_{g}"] = gate
        # token dropping: from its first interval on, so the chart shows where the steps see every token again
        self._token_dropping_seen = self._token_dropping_seen or report.token_share < 1.0
        if self._token_dropping_seen:
            scalars["allocation/token_share"] = report.token_share
        if stop_vetoed is not None:
            scalars["allocation/stop_vetoed"] = float(stop_vetoed)
        if math.isfinite(report.train_loss):
            scalars["loss/train"] = report.train_loss
        if report.val_accuracy is not None:
            scalars["loss/val_accuracy"] = report.val_accuracy
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)
        if report.steps > 0 and math.isfinite(report.val_loss):
            permille = int(round(1000 * report.compute_used / report.budget))
            self.writer.add_scalar("curve/val_loss_vs_compute", report.val_loss, permille)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


def run_job(
    job: TrainingJob,
    controller,
    tensorboard_dir: str | Path | None = None,
    objective: Objective | None = None,
) -> RunResult:
    """Run ``job`` to its end under ``controller`` and return the :class:`RunResult`.

    Args:
        job: a fresh :class:`TrainingJob` (a job runs once).
        controller: an ``AllocatorPolicy``, a baseline name, or an object with
            ``act(observation) -> Allocation`` (and optionally ``reset(job)``).
        tensorboard_dir: if given, the run's intervals are logged there.
        objective: the J parameters; defaults to ``Objective()`` (s=0.2, w=1).

    The trained model stays in ``job.model``.
    """
    if not isinstance(job, TrainingJob):
        raise ValueError(f"run_job expects a TrainingJob, got {type(job).__name__}")
    if job.done:
        raise ValueError("this training job has already run; build a new TrainingJob")
    controller = resolve_controller(controller)
    label = controller_name(controller)
    objective = objective or Objective()
    reset = getattr(controller, "reset", None)
    if callable(reset):
        reset(job)
    started = time.perf_counter()
    observation = job.observation()
    meter = ObjectiveMeter(objective, job.initial_val_loss)
    curve = [(0.0, job.initial_val_loss)]
    intervals: list[dict] = []
    best = job.initial_val_loss
    best_accuracy = job.val_accuracy
    logger = TensorBoardRunLogger(tensorboard_dir) if tensorboard_dir is not None else None
    eval_compute = 0
    steps = 0
    report = None
    has_veto = getattr(controller, "stop_veto", None) is not None
    try:
        if logger:
            logger.log_start(job, label)
        while not job.done:
            allocation = controller.act(observation)
            if not isinstance(allocation, Allocation):
                raise ValueError(f"controller {label!r} returned {type(allocation).__name__}, not an Allocation")
            refused = bool(getattr(controller, "stop_vetoed", False))
            report = job.advance(allocation)
            # a refusal counts where the job ran on: its own rules (the stop before the budget) may end it
            stop_vetoed = (refused and report.steps > 0) if has_veto else None
            observation = report.observation
            steps += report.steps
            eval_compute += report.eval_compute
            if report.steps > 0 or report.diverged:
                meter.add_interval(report.compute_fraction, report.val_loss, report.diverged)
                curve.append((report.compute_used / report.budget, report.val_loss))
                if math.isfinite(report.val_loss):
                    best = min(best, report.val_loss)
                if report.val_accuracy is not None:
                    best_accuracy = max(best_accuracy or 0.0, report.val_accuracy)
            intervals.append(
                {
                    "interval": report.index,
                    # what ran: the job may override the controller's ask (its selection gate)
                    "allocation": report.allocation.to_dict(),
                    "steps": report.steps,
                    "compute_fraction": report.compute_fraction,
                    "compute_used_fraction": report.compute_used / report.budget,
                    "train_loss": report.train_loss,
                    "val_loss": report.val_loss,
                    "val_accuracy": report.val_accuracy,
                    "token_share": report.token_share,
                    "stop_vetoed": stop_vetoed,  # None: the controller has no stop veto
                }
            )
            if logger:
                logger.log_interval(report, meter.value, stop_vetoed)
        meter.finish()
    finally:
        if logger:
            logger.close()
    return RunResult(
        job_name=job.name,
        controller_name=label,
        objective=meter.value,
        final_val_loss=job.val_loss,
        best_val_loss=best,
        initial_val_loss=job.initial_val_loss,
        compute_used=job.compute_used,
        budget=job.budget,
        curve=curve,
        diverged=job.diverged,
        stopped=bool(report and report.stopped),
        final_val_accuracy=job.val_accuracy,
        best_val_accuracy=best_accuracy,
        steps=steps,
        intervals=intervals,
        eval_compute=eval_compute,
        wall_time=time.perf_counter() - started,
    )

"""Measure the allocator's overhead against a plain PyTorch training loop.

Both sides do the same work: the same model (a residual MLP), data, optimizer
(Adam with linear learning-rate decay), minibatch size and number of optimizer
steps, and the same validation pass after every interval of ``max_steps``
steps, as a training script that validates periodically would. The plain loop
draws minibatches with ``torch.randint`` and nothing else; the allocator runs
:class:`~allocator.TrainingJob` at uniform allocation, with its per-sample loss
memory, loss-quantile sampling, gradient statistics and FLOP accounting.
Runs are interleaved (plain, allocator, plain, ...) so that drift of the
machine hits both alike, and the median of the per-pair time ratios is reported
with the FLOPs per second the allocator achieved.
"""

from __future__ import annotations

import contextlib
import statistics
import time
import warnings

import torch
import torch.nn.functional as F


def add_arguments(parser) -> None:
    parser.add_argument(
        "--what",
        choices=("overhead", "env", "sync", "all"),
        default="overhead",
        help=(
            "overhead: allocator vs plain loop; env: environment steps per second, 1 env vs 2 in subprocesses; "
            "sync: where each built-in job's tensors live and how often an interval makes the host wait for "
            "the GPU (CUDA only; 'all' leaves it out)"
        ),
    )
    parser.add_argument("--intervals", type=int, default=5, help="intervals per allocation and job (--what sync)")
    parser.add_argument("--env-steps", type=int, default=600, help="env steps per measurement (--what env)")
    parser.add_argument("--width", type=int, default=256, help="residual MLP width")
    parser.add_argument("--depth", type=int, default=2, help="residual blocks")
    parser.add_argument("--batch-size", type=int, default=128, help="minibatch size")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per run")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved pairs of runs")
    parser.add_argument("--samples", type=int, default=8192, help="training-set size (synthetic)")
    parser.add_argument("--device", default="auto", help="where the training jobs run (overhead, env): 'auto' (CUDA when available), 'cpu' or 'cuda'")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def host_synchronisations():
    """Record every CUDA operation that makes the host wait for the GPU, as "file:line".

    Uses torch's sync debug mode, which flags ``.item()``, ``.cpu()``, copies
    from ordinary host memory, ``nonzero`` and the like. The list is filled
    when the ``with`` block ends::

        with host_synchronisations() as syncs:
            job.advance(allocation)
        assert len(syncs) == 1

    Trap: a synchronisation inside a library's C++ code is reported at the
    Python line that called into it.
    """
    found: list[str] = []
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield found
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    found.extend(f"{w.filename}:{w.lineno}" for w in caught if "called a synchronizing" in str(w.message))


def _data(samples: int, features: int, classes: int, device: torch.device):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(samples + 1024, features, generator=generator)
    y = (x @ torch.randn(features, classes, generator=generator)).argmax(dim=1)
    return (x[:samples].to(device), y[:samples].to(device)), (x[samples:].to(device), y[samples:].to(device))


def _model(width: int, depth: int, device: torch.device, features: int, classes: int):
    from allocator.jobs.models import ResidualMLP

    torch.manual_seed(0)
    return ResidualMLP((features,), classes, width=width, depth=depth).to(device)


def plain_loop(model, train, val, batch_size: int, steps: int, interval: int, lr: float = 1e-3) -> float:
    """Seconds for ``steps`` ordinary training steps, validating every ``interval`` steps."""
    x, y = train
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator(device=x.device).manual_seed(0)
    device = x.device
    _synchronize(device)
    started = time.perf_counter()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr * (1 - step / steps)
        indices = torch.randint(len(x), (batch_size,), generator=generator, device=device)
        loss = F.cross_entropy(model(x[indices]), y[indices])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if (step + 1) % interval == 0:
            model.eval()
            with torch.no_grad():
                val_loss = F.cross_entropy(model(val[0]), val[1])
            model.train()
            val_loss.item()  # a training script reads its validation loss too
    _synchronize(device)
    return time.perf_counter() - started


def allocator_loop(model, train, val, batch_size: int, steps: int) -> tuple[float, int]:
    """Seconds and FLOPs of ``steps`` steps of a TrainingJob at uniform allocation (start-up excluded)."""
    from allocator import Allocation, TrainingJob

    job = TrainingJob(model, train, val, batch_size=batch_size, budget_steps=steps, device=train[0].device, seed=0)
    job.observation()  # start-up (layer groups, FLOP counting, initial validation) is paid once per job
    uniform = Allocation.uniform(job.spec)
    _synchronize(job.device)
    started = time.perf_counter()
    while not job.done:
        job.advance(uniform)
    _synchronize(job.device)
    return time.perf_counter() - started, job.compute_used


def env_throughput(n_envs: int, env_steps: int, device: str = "cpu") -> tuple[float, float]:
    """(env steps/s, training-job optimizer steps/s) of ``n_envs`` envs under uniform actions.

    One env runs in this process (``DummyVecEnv``); more run in subprocesses
    (``SubprocVecEnv``), one torch thread each. ``device`` is where the envs'
    training jobs run.
    """
    import numpy as np
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    def make(rank: int):
        def build():
            import gymnasium as gym

            import envs  # noqa: F401 - registers the env in the subprocess

            env = gym.make(envs.ENV_ID, device=device)
            env.reset(seed=1000 + rank)
            return env

        return build

    vec = (SubprocVecEnv if n_envs > 1 else DummyVecEnv)([make(i) for i in range(n_envs)])
    try:
        vec.seed(0)
        vec.reset()
        actions = np.zeros((n_envs, *vec.action_space.shape), dtype=np.float32)
        for _ in range(10):  # warm-up: data generation and first jobs
            vec.step(actions)
        optimizer_steps = 0
        started = time.perf_counter()
        for _ in range(env_steps // n_envs):
            _, _, _, infos = vec.step(actions)
            optimizer_steps += sum(info.get("steps", 0) for info in infos)
        elapsed = time.perf_counter() - started
    finally:
        vec.close()
    return (env_steps // n_envs) * n_envs / elapsed, optimizer_steps / elapsed


def _run_env_bench(args) -> None:
    from allocator.job import _resolve_device

    device = str(_resolve_device(args.device))
    print(f"training jobs on {device}")
    rates = {}
    for n_envs in (1, 2):
        rates[n_envs] = env_throughput(n_envs, args.env_steps, device)
        print(
            f"{n_envs} env{'s' if n_envs > 1 else ' '} ({'SubprocVecEnv' if n_envs > 1 else 'DummyVecEnv  '})  "
            f"{rates[n_envs][0]:7.1f} env steps/s  {rates[n_envs][1]:8.1f} job optimizer steps/s"
        )
    print(f"scaling 1 -> 2 envs     x{rates[2][0] / rates[1][0]:.2f} env steps/s")


def _mixed_allocation(spec):
    """Every lever away from uniform at once: tilted shares, half kept, a frozen group, a half gate."""
    from allocator import Allocation

    shares = [1.0 + i for i in range(spec.sample_groups)]
    shares = [v / sum(shares) for v in shares]
    gates = [0.0] + [0.5] + [1.0] * (spec.layer_groups - 2)
    return Allocation(tuple(shares), 0.5, tuple(gates[: spec.layer_groups]), spec.max_steps)


def _run_sync_bench(args) -> int:
    from collections import Counter

    from allocator.baselines import BASELINES
    from allocator.baselines import make as make_controller
    from allocator.jobs.distribution import make_job, names

    if not torch.cuda.is_available():
        raise ValueError("--what sync measures CUDA host synchronisations and needs a GPU; torch sees none")
    print(f"device: {torch.cuda.get_device_name()}; torch {torch.__version__}; {args.intervals} intervals per row")
    print(f"{'job':22} {'controller':18} {'data':5} {'model':5} {'syncs/interval':>14} {'ms/interval':>11} {'steps/s':>8}")
    places: Counter[str] = Counter()
    worst = 0.0
    for name in names():
        for label in ("mixed", *BASELINES):
            job = make_job(name, seed=0, device="cuda")
            controller = None if label == "mixed" else make_controller(label)
            fixed = _mixed_allocation(job.spec) if controller is None else None
            if controller is not None:
                controller.reset(job)
            job.observation()  # start-up (FLOP counting, first validation) synchronises; it is paid once
            counts, seconds, steps = [], 0.0, 0
            for _ in range(args.intervals):
                if job.done:
                    break
                # the controller acts on the host, from the observation the last interval's one read produced
                allocation = fixed if controller is None else controller.act(job.observation())
                torch.cuda.synchronize()
                started = time.perf_counter()
                with host_synchronisations() as syncs:
                    report = job.advance(allocation)
                torch.cuda.synchronize()
                seconds += time.perf_counter() - started
                steps += report.steps
                counts.append(len(syncs))
                places.update(syncs)
            parameter_device = next(job.model.parameters()).device
            per_interval = statistics.mean(counts)
            worst = max(worst, per_interval)
            print(
                f"{name:22} {label:18} {job._train_x.device.type:5} {parameter_device.type:5} "
                f"{per_interval:14.2f} {seconds * 1e3 / len(counts):11.1f} {steps / seconds:8.0f}"
            )
    print("where the host waited (count over all rows):")
    for place, count in places.most_common():
        print(f"  {count:6d}  {place}")
    print(f"most synchronisations in one interval, averaged over a row: {worst:.2f}")
    return 0


def run(args) -> int:
    from tqdm import tqdm

    from allocator.job import _resolve_device

    for name in ("width", "depth", "batch_size", "steps", "repeats", "samples", "env_steps", "intervals"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.what == "sync":
        return _run_sync_bench(args)
    if args.what in ("env", "all"):
        _run_env_bench(args)
        if args.what == "env":
            return 0
    device = _resolve_device(args.device)
    features, classes = 64, 10
    train, val = _data(args.samples, features, classes, device)
    interval = 10  # AllocationSpec().max_steps: one validation per interval on both sides

    # one untimed warm-up of each, so allocator start-up and kernel caches are not measured
    plain_loop(_model(args.width, args.depth, device, features, classes), train, val, args.batch_size, interval, interval)
    allocator_loop(_model(args.width, args.depth, device, features, classes), train, val, args.batch_size, interval)

    ratios, plain_times, allocator_times, flops = [], [], [], 0
    for _ in tqdm(range(args.repeats), desc="bench", unit="pair"):
        plain = plain_loop(_model(args.width, args.depth, device, features, classes), train, val, args.batch_size, args.steps, interval)
        ours, flops = allocator_loop(_model(args.width, args.depth, device, features, classes), train, val, args.batch_size, args.steps)
        plain_times.append(plain)
        allocator_times.append(ours)
        ratios.append(ours / plain)
    median_ratio = statistics.median(ratios)
    ours = statistics.median(allocator_times)
    print(f"device                 {device} (torch threads: {torch.get_num_threads()})")
    print(f"model                  residual MLP width {args.width}, {args.depth} blocks, batch {args.batch_size}, {args.steps} steps")
    print(f"plain loop             {statistics.median(plain_times) * 1e3 / args.steps:.3f} ms/step (median of {args.repeats})")
    print(f"allocator (uniform)    {ours * 1e3 / args.steps:.3f} ms/step (median of {args.repeats})")
    print(f"overhead               {100 * (median_ratio - 1):+.1f} % (median of per-pair time ratios {median_ratio:.3f}; range {min(ratios):.3f}-{max(ratios):.3f})")
    print(f"throughput             {flops / ours / 1e9:.2f} GFLOP/s counted ({flops / args.steps / 1e6:.1f} MFLOP per step)")
    return 0

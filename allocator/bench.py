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

import statistics
import time

import torch
import torch.nn.functional as F


def add_arguments(parser) -> None:
    parser.add_argument(
        "--what",
        choices=("overhead", "env", "all"),
        default="overhead",
        help="overhead: allocator vs plain loop; env: environment steps per second, 1 env vs 2 in subprocesses",
    )
    parser.add_argument("--env-steps", type=int, default=600, help="env steps per measurement (--what env)")
    parser.add_argument("--width", type=int, default=256, help="residual MLP width")
    parser.add_argument("--depth", type=int, default=2, help="residual blocks")
    parser.add_argument("--batch-size", type=int, default=128, help="minibatch size")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per run")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved pairs of runs")
    parser.add_argument("--samples", type=int, default=8192, help="training-set size (synthetic)")
    parser.add_argument("--device", default="auto", help="'auto' (CUDA when available), 'cpu' or 'cuda'")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


def env_throughput(n_envs: int, env_steps: int) -> tuple[float, float]:
    """(env steps/s, training-job optimizer steps/s) of ``n_envs`` envs under uniform actions.

    One env runs in this process (``DummyVecEnv``); more run in subprocesses
    (``SubprocVecEnv``), one torch thread each.
    """
    import numpy as np
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    def make(rank: int):
        def build():
            import gymnasium as gym

            import envs  # noqa: F401 - registers the env in the subprocess

            env = gym.make(envs.ENV_ID)
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
    rates = {}
    for n_envs in (1, 2):
        rates[n_envs] = env_throughput(n_envs, args.env_steps)
        print(
            f"{n_envs} env{'s' if n_envs > 1 else ' '} ({'SubprocVecEnv' if n_envs > 1 else 'DummyVecEnv  '})  "
            f"{rates[n_envs][0]:7.1f} env steps/s  {rates[n_envs][1]:8.1f} job optimizer steps/s"
        )
    print(f"scaling 1 -> 2 envs     x{rates[2][0] / rates[1][0]:.2f} env steps/s")


def run(args) -> int:
    from tqdm import tqdm

    from allocator.job import _resolve_device

    for name in ("width", "depth", "batch_size", "steps", "repeats", "samples", "env_steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
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

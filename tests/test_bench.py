"""The bench command runs both sides and prints its figures (timings are not asserted: see BENCHMARKS.md)."""

from allocator.cli import main


def test_bench_prints_overhead_and_throughput(capsys):
    code = main(["bench", "--width", "16", "--depth", "1", "--batch-size", "8", "--steps", "20", "--repeats", "1", "--samples", "256", "--threads", "1"])
    out = capsys.readouterr().out
    assert code == 0
    assert "overhead" in out and "GFLOP/s" in out and "ms/step" in out


def test_bench_rejects_non_positive_sizes(capsys):
    assert main(["bench", "--steps", "0"]) == 2
    assert "--steps must be >= 1" in capsys.readouterr().err


def test_bench_sync_needs_a_gpu_and_says_so(capsys):
    import torch

    if torch.cuda.is_available():
        assert main(["bench", "--what", "sync", "--intervals", "1"]) == 0
        out = capsys.readouterr().out
        assert "syncs/interval" in out and "most synchronisations in one interval" in out
    else:
        assert main(["bench", "--what", "sync"]) == 2
        assert "needs a GPU" in capsys.readouterr().err

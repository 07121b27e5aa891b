"""Every command's --help: each default shown once, none that says nothing."""

import pytest

from allocator.cli import COMMANDS, main


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_shows_useful_defaults_once(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "(default: None)" not in out
    assert "(default: False)" not in out
    assert "(default: True)" not in out  # e.g. a --no-progress-bar flag
    assert "] (default:" not in out  # a "[default: ...]" in the help text, then argparse's own


def test_help_shows_a_default_the_help_text_states_once(capsys):
    with pytest.raises(SystemExit):
        main(["ensemble", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "[default: mean]" in out
    assert out.count("default: mean") == 1


def test_help_shows_a_zero_default(capsys):
    with pytest.raises(SystemExit):
        main(["apply", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: 0)" in out


# A command that SIGTERMs itself mid-work, in a subprocess: without the handler SIGTERM
# kills the process at once (exit -15, no cleanup), which would take pytest with it.
SIGTERM_MID_COMMAND = """
import os, signal, sys, time, types
from allocator import cli

module = types.ModuleType("sleeper")
module.add_arguments = lambda parser: None

def run(args):
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
    finally:
        print("cleaned up")
    return 0

module.run = run
sys.modules["sleeper"] = module
cli.COMMANDS["sleeper"] = ("sleeper", "sleeps")
before = signal.getsignal(signal.SIGTERM)
code = cli.main(["sleeper"])
print("handler restored" if signal.getsignal(signal.SIGTERM) is before else "handler left set")
sys.exit(code)
"""


def test_sigterm_stops_a_command_as_ctrl_c_does_with_one_line():
    """`kill PID` runs the command's cleanup (as Ctrl-C's would) and ends with one line, exit 143."""
    import subprocess
    import sys
    from pathlib import Path

    result = subprocess.run(
        [sys.executable, "-c", SIGTERM_MID_COMMAND],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 143, result.stderr
    assert result.stdout.split("\n")[:2] == ["cleaned up", "handler restored"]
    assert result.stderr.strip().splitlines() == ["compute-allocator sleeper: stopped (SIGTERM)"]

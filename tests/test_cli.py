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

"""The CLI turns usage errors and user errors into one line on stderr and exit code 2."""

import pytest

from hardneg.cli import main


@pytest.mark.parametrize(
    "argv,words",
    [
        (["nosuchcommand"], "No such command"),
        (["bench", "loss", "--bogus"], "No such option"),
        (["bench", "loss", "--sizes", "51"], "--sizes must be even integers"),
        (["bench", "loss", "--sizes", "a,b"], "--sizes must be comma-separated"),
        (["bench", "strategies", "--sizes", "51"], "--sizes must be even integers"),
    ],
)
def test_usage_and_user_errors_exit_2_with_one_line(argv, words, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert words in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "option,words",
    [
        ("beta=abc", "option 'beta' of preset 'hscl' must be a number, got 'abc'"),
        ("tau_plus=[1, 2]", "option 'tau_plus' of preset 'hscl' must be a number, got [1, 2]"),
    ],
)
def test_strategy_option_of_the_wrong_type_is_named(option, words, capsys):
    with pytest.raises(SystemExit) as e:
        main(["strategies", "hscl", "-o", option])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and words in err


def test_strategy_numeric_option_still_builds(capsys):
    with pytest.raises(SystemExit) as e:
        main(["strategies", "mochi", "-o", "n_hard=8", "-o", "beta=1"])
    assert e.value.code == 0 and "built:" in capsys.readouterr().out

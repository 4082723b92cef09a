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
    ],
)
def test_usage_and_user_errors_exit_2_with_one_line(argv, words, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert words in err
    assert "Traceback" not in err

"""``kms`` options that hold for every command, checked without a server."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from kms.cli import main


@pytest.mark.parametrize(
    "argv",
    [
        ["--json", "--profile", "{missing}", "keys", "list"],
        ["--profile", "{missing}", "--json", "keys", "list"],
        ["--profile", "{missing}", "keys", "list", "--json"],
    ],
)
def test_json_before_or_after_the_command_prints_the_problem(
    tmp_path: Path, argv: list[str]
) -> None:
    missing = str(tmp_path / "missing.toml")
    out, err = io.StringIO(), io.StringIO()
    code = main([a.replace("{missing}", missing) for a in argv], stdout=out, stderr=err)
    assert code == 2
    assert json.loads(out.getvalue())["type"].endswith("/invalid-profile")
    assert len(err.getvalue().strip().splitlines()) == 1


def test_without_json_a_failure_prints_one_line_and_nothing_on_stdout(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = main(["--profile", str(tmp_path / "missing.toml"), "keys", "list"],
                stdout=out, stderr=err)  # fmt: skip
    assert code == 2
    assert out.getvalue() == ""
    assert "cannot read profile" in err.getvalue()


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["keys", "create", "--purpose", "bogus"], "invalid choice: 'bogus'"),
        (["encrypt"], "required: --key"),
        ([], "required: command"),
        (["no-such-command"], "invalid choice"),
    ],
)
def test_a_usage_error_is_one_line_and_exit_2(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(argv, stdout=io.StringIO(), stderr=io.StringIO())
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert says in err and "--help" in err

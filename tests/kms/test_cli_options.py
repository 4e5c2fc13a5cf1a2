"""``kms`` options that hold for every command, checked without a server."""

from __future__ import annotations

import io
import json
import subprocess
import sys
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
def test_a_usage_error_is_one_line_and_exit_2(argv: list[str], says: str) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = main(argv, stdout=out, stderr=err)
    assert code == 2
    assert len(err.getvalue().strip().splitlines()) == 1, err.getvalue()
    assert says in err.getvalue() and "--help" in err.getvalue()
    assert out.getvalue() == ""


@pytest.mark.parametrize(
    "argv",
    [
        ["--json", "keys", "create", "--purpose", "bogus"],
        ["keys", "create", "--purpose", "bogus", "--json"],
        ["--json", "encrypt"],
        ["--json", "no-such-command"],
    ],
)
def test_a_usage_error_with_json_prints_the_problem_document(argv: list[str]) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = main(argv, stdout=out, stderr=err)
    assert code == 2
    problem = json.loads(out.getvalue())
    assert problem["type"].endswith("/usage-error")
    assert problem["detail"] in err.getvalue()
    assert len(err.getvalue().strip().splitlines()) == 1


def test_json_after_a_double_dash_is_not_an_option() -> None:
    out, err = io.StringIO(), io.StringIO()
    assert main(["no-such-command", "--", "--json"], stdout=out, stderr=err) == 2
    assert out.getvalue() == ""


def test_help_still_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"], stdout=io.StringIO(), stderr=io.StringIO()) == 0
    assert "usage:" in capsys.readouterr().out


def test_a_reader_that_leaves_early_is_not_an_error(tmp_path: Path) -> None:
    """``kms ... | head``: the closed pipe ends the command quietly, without a traceback."""
    kms = Path(sys.executable).with_name("kms")
    shell = f"'{kms}' principals keygen --out '{tmp_path / 'k'}' | head -c 0"
    done = subprocess.run(["bash", "-o", "pipefail", "-c", shell], check=False,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 0
    assert done.stderr == ""
    assert (tmp_path / "k").exists()

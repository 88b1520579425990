"""`cellduality tasks ...`: listing, and one-line errors for bad input (no traceback, exit 2)."""

from __future__ import annotations

import pytest

from cellduality.cli.main import main


def run(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


def test_tasks_list(capsys):
    code, out, _ = run(["tasks", "list"], capsys)
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()] == ["annotation", "generation", "perturbation", "sensitivity"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "is not a folder"),
        (["--weight", "annotation"], "not of the form name=value"),
        (["--weight", "annotation=heavy"], "must be a number"),
        (["--option", "group_key=cell_type"], "task.key=value"),
    ],
)
def test_build_errors_are_one_line(tmp_path, capsys, extra, message):
    source = tmp_path / "missing" if not extra else tmp_path
    code, _, err = run(["tasks", "build", str(source), str(tmp_path / "out"), "--task", "annotation", *extra], capsys)
    assert code == 2
    assert message in " ".join(err.split()) and "Traceback" not in err
    assert not (tmp_path / "out").exists()

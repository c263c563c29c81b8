"""`python -m loadtest.store_history` runs end to end against its own embedded Redis and prints its table."""

from __future__ import annotations

import pytest

from loadtest.store_history import main

pytestmark = pytest.mark.integration


def test_it_prints_one_row_per_history_length(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--lengths", "20,5", "--calls", "3"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.strip()[:1].isdigit()]
    assert [row[0] for row in rows] == ["5", "20"]
    assert all(float(row[1]) > 0 and float(row[2]) > 0 for row in rows)


@pytest.mark.parametrize("argv", [["--lengths", "ten"], ["--lengths", "0,5"], ["--calls", "0"]])
def test_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "error:" in capsys.readouterr().err

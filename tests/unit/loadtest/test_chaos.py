"""The chaos CLI refuses what it cannot run before it starts a stack, and names the problem."""

from __future__ import annotations

import pytest

from loadtest.chaos import main, table


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--scenarios", "capacity,meteor"], "unknown scenarios ['meteor']"),
        (["--repeat", "0"], "--repeat must be >= 1"),
        (["--url", "http://127.0.0.1:8000", "--api-key", ""], "--url needs --api-key"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_repeated_runs_get_their_own_rows() -> None:
    text = table(
        {
            "replica_kill": [("failed at the first attempt", "0 (0.00 %)", "")],
            "replica_kill #2": [("failed at the first attempt", "3 (0.05 %)", "")],
        }
    )
    lines = text.splitlines()
    assert lines[2].split()[:2] == ["replica_kill", "failed"]
    assert "0 (0.00 %)" in lines[2]
    assert lines[3].split()[:3] == ["replica_kill", "#2", "failed"]
    assert "3 (0.05 %)" in lines[3]

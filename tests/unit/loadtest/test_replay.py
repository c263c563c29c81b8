"""The replay command line: where the report goes and clear refusals of bad input (no server needed)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from loadtest.replay import main, report_path


def test_report_goes_next_to_the_scores() -> None:
    assert report_path(Path("out/scores.csv")) == Path("out/scores.report.json")


def _write(tmp_path: Path, **overrides: object) -> Path:
    frame = pd.DataFrame(
        {
            "transaction_id": ["t1", "t2"],
            "timestamp": ["2026-01-01T10:00:00Z", "2026-01-01T11:00:00Z"],
            "customer_id": ["c1", "c2"],
            "merchant_id": ["m1", "m1"],
            "amount": [10.0, 12.5],
            "is_fraud": [0, 1],
        }
    )
    for column, values in overrides.items():
        frame[column] = values
    path = tmp_path / "tx.csv"
    frame.to_csv(path, index=False)
    return path


def test_a_bad_data_file_is_refused_naming_row_and_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _write(tmp_path, amount=[10.0, -3.0])
    code = main(
        ["--data", str(data), "--url", "http://127.0.0.1:9", "--out", str(tmp_path / "s.csv"), "--quiet"]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "'amount'" in err
    assert "row 2" in err
    assert not (tmp_path / "s.csv").exists()


def test_an_empty_period_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _write(tmp_path)
    args = ["--data", str(data), "--url", "http://127.0.0.1:9", "--out", str(tmp_path / "s.csv"), "--quiet"]
    assert main([*args, "--from", "2027-01-01"]) == 2
    assert "no transactions" in capsys.readouterr().err
    assert main([*args, "--from", "not a date"]) == 2
    assert "bad date" in capsys.readouterr().err


@pytest.mark.parametrize("flag", [["--batch-size", "0"], ["--batch-size", "1001"], ["--concurrency", "0"]])
def test_out_of_range_options_stop_at_argument_parsing(tmp_path: Path, flag: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--data", "x.csv", "--url", "http://127.0.0.1:9", "--out", str(tmp_path / "s.csv"), *flag])
    assert exit_info.value.code == 2

"""``dsm loadtest`` prints a table (not Python dicts) and its --help shows every default."""

from __future__ import annotations

import argparse

import pytest

from dsm.commands import loadtest
from dsm.commands.loadtest import LoadtestReport, percentiles


def test_report_is_a_table() -> None:
    report = LoadtestReport(sessions=2, seconds=1.0, completed=2, tts_sessions=1)
    report.step_latency = percentiles([0.010, 0.020, 0.030])
    report.word_latency = percentiles([0.5, 0.7])
    lines = report.lines()
    text = "\n".join(lines)
    assert "{" not in text and "p50_ms" not in text  # no dicts
    header = next(line for line in lines if line.startswith("latency (ms)"))
    assert header.split()[-4:] == ["p50", "p90", "p99", "max"]
    step = next(line for line in lines if line.startswith("Step latency"))
    assert [float(x) for x in step.split()[-4:]] == list(report.step_latency.values())
    connect = next(line for line in lines if line.startswith("connect -> Ready"))
    assert connect.split()[-4:] == ["-"] * 4  # no values: dashes, aligned
    assert len({len(line) for line in lines if line in (header, step, connect)}) == 1
    assert any(line.startswith("TTS first Text") for line in lines)


def test_help_shows_every_default(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="dsm")
    sub = parser.add_subparsers()
    loadtest.add_parser(sub)
    with pytest.raises(SystemExit):
        parser.parse_args(["loadtest", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())  # unwrapped
    command = sub.choices["loadtest"]
    options = [a for a in command._actions if a.option_strings and a.dest != "help"]
    assert len(options) >= 9
    for action in options:
        assert f"(default: {action.default})" in help_text, action.dest

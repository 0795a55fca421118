"""The timings of the Docker tests, printed after the run."""

from __future__ import annotations

import pytest

from tests.deploy.docker_support import TIMES


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TIMES:
        terminalreporter.section("image build and run times")
        for label, seconds in TIMES.items():
            terminalreporter.write_line(f"{label:<60} {seconds:6.1f} s")

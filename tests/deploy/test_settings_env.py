"""The chart's environment is the code's settings, both ways: every LLMB_* variable a process
reads is set (and reachable from values), and the chart sets no variable the process ignores.

The settings are read from the settings classes, so a setting added to the code fails here
until the chart sets it."""

from __future__ import annotations

import os
import re
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from llm_batcher.mock import cli as mock_cli
from llm_batcher.settings import ApiSettings, CommonSettings, WorkerSettings
from tests.deploy.support import (
    CHART_DIR,
    MOCK_ENV,
    SCENARIOS,
    Rendered,
    env_of,
    render,
    render_scenario,
)

# Settings the chart derives instead of taking them from a `config:` value.
DERIVED = {
    "redis_url": "redis.enabled (the chart's Redis) or externalRedis.url",
    "redis_password": "the Secret of redis.auth or externalRedis.existingSecret",
    "redis_sentinels": "externalRedis.sentinel.hosts",
    "redis_sentinel_master": "externalRedis.sentinel.masterName",
    "redis_sentinel_password": "the Secret of externalRedis.sentinel.existingSecret",
    "tmp_dir": "worker.tmpDir.path, an emptyDir",
    "worker_id": "the pod name",
    "api_keys": "the Secret of api.auth",
    "admin_keys": "the Secret of api.auth",
    "api_keys_file": "never: the keys come from the Secret as LLMB_API_KEYS",
    **dict.fromkeys(
        ("listen_fd", "health_fd", "metrics_fd"),
        "never: a socket a parent process hands down (`up`, the tests); a pod binds its ports",
    ),
}


def _env_names(settings: type[BaseModel]) -> set[str]:
    return {"LLMB_" + name.upper() for name in settings.model_fields}


def _containers(rendered: Rendered) -> dict[str, dict[str, Any]]:
    by_name = {}
    for obj in rendered.of_kind("Deployment"):
        name = obj["metadata"]["name"].rsplit("-", 1)[1]
        by_name[name] = obj["spec"]["template"]["spec"]["containers"][0]
    return by_name


def _chart_set(container: dict[str, Any], extra_env: list[dict[str, Any]]) -> set[str]:
    """Names the chart itself sets (the user's extraEnv aside)."""
    return set(env_of(container)) - {e["name"] for e in extra_env}


def _unset(rendered: Rendered) -> set[str]:
    """Optional settings the chart rightly leaves unset: no password when Redis has none, no
    keys when API keys are off, never a keys file nor an inherited socket, no Sentinel unless
    externalRedis.sentinel names some."""
    values = rendered.values
    has_password = (
        values["redis"]["auth"]["enabled"]
        if values["redis"]["enabled"]
        else bool(values["externalRedis"]["existingSecret"])
    )
    unset = {"LLMB_API_KEYS_FILE", "LLMB_LISTEN_FD", "LLMB_HEALTH_FD", "LLMB_METRICS_FD"}
    sentinel = values["externalRedis"].get("sentinel") or {}
    if values["redis"]["enabled"] or not sentinel.get("hosts"):
        unset |= {"LLMB_REDIS_SENTINELS", "LLMB_REDIS_SENTINEL_MASTER"}
    if values["redis"]["enabled"] or not sentinel.get("existingSecret"):
        unset.add("LLMB_REDIS_SENTINEL_PASSWORD")
    if not values["api"]["auth"]["enabled"]:
        unset |= {"LLMB_API_KEYS", "LLMB_ADMIN_KEYS"}
    return unset if has_password else unset | {"LLMB_REDIS_PASSWORD"}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_api_env_is_exactly_the_api_settings(scenario: str) -> None:
    rendered = render_scenario(scenario)
    api = _containers(rendered)["api"]
    expected = _env_names(ApiSettings) - _unset(rendered)
    assert _chart_set(api, rendered.values["api"]["extraEnv"]) == expected


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_worker_env_is_exactly_the_worker_and_mock_settings(scenario: str) -> None:
    rendered = render_scenario(scenario)
    worker = _containers(rendered)["worker"]
    runs_mock = rendered.values["worker"]["config"]["llmCommand"].split()[0].endswith("llm-mock")
    expected = _env_names(WorkerSettings) - _unset(rendered) | (MOCK_ENV if runs_mock else set())
    assert _chart_set(worker, rendered.values["worker"]["extraEnv"]) == expected
    assert runs_mock == (scenario not in {"custom-llm", "gpu-worker"})


def test_the_mock_reads_its_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """MOCK_ENV is what the mock really reads (from the environment it inherits)."""
    monkeypatch.setenv("LLMB_MOCK_TTFT_MS", "7")
    monkeypatch.setenv("LLMB_MOCK_ITL_MS", "3-4")
    monkeypatch.setenv("LLMB_MOCK_EXTRA_TOKENS", "5")
    _, config = mock_cli.parse_args(["context.b64"])
    assert (config.ttft_ms, config.itl_ms, config.extra_tokens) == ((7, 7), (3, 4), 5)


def _camel(field: str) -> str:
    head, *rest = field.split("_")
    return head + "".join(part.capitalize() for part in rest)


def test_every_setting_is_reachable_from_values() -> None:
    # values.yaml as written: Helm drops keys whose default is null (worker.config.drainS).
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    blocks = {
        CommonSettings: values["config"],
        ApiSettings: values["api"]["config"],
        WorkerSettings: values["worker"]["config"],
    }
    common = set(CommonSettings.model_fields)
    for settings, block in blocks.items():
        own = set(settings.model_fields) - (common if settings is not CommonSettings else set())
        missing = {f for f in own if _camel(f) not in block and f not in DERIVED}
        assert not missing, f"{settings.__name__}: no value for {missing}"
        unknown = {key for key in block if re.sub(r"([A-Z])", r"_\1", key).lower() not in own}
        assert not unknown, f"{settings.__name__}: values that are no setting: {unknown}"


def test_values_comments_name_the_variables() -> None:
    """Each `config:` value's comment names its variable, so that a search for LLMB_X finds it."""
    text = (CHART_DIR / "values.yaml").read_text()
    for settings in (ApiSettings, WorkerSettings):
        for field in settings.model_fields:
            if field not in DERIVED:
                pattern = (
                    rf"# -- \(LLMB_{field.upper()}\)[^\n]*(\n\s*#[^\n]*)*\n\s*{_camel(field)}:"
                )
                assert re.search(pattern, text), field
    for name in MOCK_ENV:
        assert f"({name})" in text


@pytest.mark.parametrize("scenario", ["default", "custom-llm", "external-redis"])
def test_the_rendered_environment_builds_valid_settings(
    scenario: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The processes would start: their settings objects accept what the chart sets, and hold
    the values.yaml values (a million stays 1000000, not 1e+06)."""
    rendered = render_scenario(scenario)
    for name, settings_class in (("api", ApiSettings), ("worker", WorkerSettings)):
        for key in [k for k in os.environ if k.startswith("LLMB_")]:
            monkeypatch.delenv(key)
        for var, entry in env_of(_containers(rendered)[name]).items():
            monkeypatch.setenv(var, entry.get("value", "from-a-secret-or-the-pod"))
        settings = settings_class()
        block = rendered.values[name]["config"] | rendered.values["config"]
        for key, value in block.items():
            field = re.sub(r"([A-Z])", r"_\1", key).lower()
            assert getattr(settings, field) == value, (name, field)


def test_derived_settings_follow_their_values() -> None:
    rendered = render(
        {
            "redis": {"enabled": False},
            "externalRedis": {"url": "redis://cache.prod:6379/3"},
            "worker": {"tmpDir": {"path": "/scratch"}},
        }
    )
    worker = _containers(rendered)["worker"]
    env = env_of(worker)
    assert env["LLMB_REDIS_URL"]["value"] == "redis://cache.prod:6379/3"
    assert "LLMB_REDIS_PASSWORD" not in env  # no existingSecret: no password
    assert env["LLMB_TMP_DIR"]["value"] == "/scratch"
    assert {"name": "tmp", "mountPath": "/scratch"} in worker["volumeMounts"]
    assert env["LLMB_WORKER_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}

"""Checks of compose.yaml and its monitoring files: `docker-compose config`, the variables it
passes are settings the code reads, start order and shutdown times match the settings, and every
file it mounts is where it says; and the shell scripts beside the images. test_docker.py runs
the stack for real."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from llm_batcher.settings import ApiSettings, WorkerSettings
from tests.deploy.images_support import (
    APP_VERSION,
    BUILD_SCRIPT,
    COMPOSE_FILE,
    DOCKERFILE,
    IMAGES_README,
    REPO,
    SETUP_SCRIPT,
    setting_names,
)
from tests.deploy.support import CHART_DIR
from tests.support.tools import find_tool

HERE = Path(__file__).resolve().parent
COMPOSE_TEXT = COMPOSE_FILE.read_text(encoding="utf-8")
APP_SERVICES = {"api": "llm-batcher-api", "worker": "llm-batcher-worker"}


def _compose_variables() -> set[str]:
    return set(re.findall(r"\$\{(\w+)", COMPOSE_TEXT))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE_TEXT)
    return document


def _load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


# === docker-compose itself =====================================================================


PROFILES = {"default": [], "monitoring": ["--profile", "monitoring"]}


@pytest.mark.requires_tool("docker-compose")
@pytest.mark.parametrize("profile", list(PROFILES.values()), ids=list(PROFILES))
def test_docker_compose_config(profile: list[str], tmp_path: Path) -> None:
    tool = find_tool("docker-compose")
    assert tool is not None  # requires_tool
    result = subprocess.run(
        [tool, "--file", str(COMPOSE_FILE), *profile, "config", "--quiet"],
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


# === variables =================================================================================


def test_compose_variables_are_not_settings_and_are_documented() -> None:
    variables = _compose_variables()
    assert {"LLMB_REDIS_IMAGE", "LLMB_IMAGE_TAG", "LLMB_BASE_IMAGE"} <= variables
    assert not variables & setting_names(), "a compose variable shadows a setting's name"
    readme = IMAGES_README.read_text(encoding="utf-8")
    header = COMPOSE_TEXT.split("\nservices:", 1)[0]
    for name in variables:
        assert name in readme, f"{name} is not documented in images/README.md"
        assert name in header, f"{name} is not listed in compose.yaml's header"


def test_every_llmb_name_in_compose_is_a_setting_or_a_variable() -> None:
    names = set(re.findall(r"\bLLMB_[A-Z0-9_]+", COMPOSE_TEXT))
    unknown = names - setting_names() - _compose_variables()
    assert not unknown, f"compose.yaml names variables no process reads: {unknown}"


def test_environment_keys_are_settings(compose: dict[str, Any]) -> None:
    known = setting_names()
    for name in APP_SERVICES:
        environment = compose["services"][name]["environment"]
        assert set(environment) <= known, f"{name}: unknown settings {set(environment) - known}"
        assert environment["LLMB_REDIS_URL"] == "redis://redis:6379/0"


def test_the_variables_of_the_docker_tests_are_documented() -> None:
    readme = IMAGES_README.read_text(encoding="utf-8")
    script = SETUP_SCRIPT.read_text(encoding="utf-8")
    read = set(re.findall(r"\$\{(LLMB_\w+):-", script))
    tests = (HERE / "docker_support.py").read_text(encoding="utf-8")
    read |= set(re.findall(r"os\.environ\.get\(\"(LLMB_\w+)\"", tests))
    read -= setting_names()
    assert {"LLMB_SKIP_IMAGES", "LLMB_BASE_IMAGE", "LLMB_DOCKER"} <= read
    for name in read:
        assert name in readme, f"the Docker tests read {name}; document it in images/README.md"


# === the core stack ============================================================================


def test_redis_keeps_its_queue_on_a_named_volume(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    default_image = r"\$\{LLMB_REDIS_IMAGE:-(redis|valkey/valkey):[0-9][\w.-]*\}"
    assert re.fullmatch(default_image, redis["image"])
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    data_dir = command[command.index("--dir") + 1]
    volume, _, target = redis["volumes"][0].partition(":")
    assert target == data_dir and volume in compose["volumes"]
    assert redis["healthcheck"]["test"][:2] == ["CMD", "redis-cli"]


def test_images_and_builds(compose: dict[str, Any]) -> None:
    dockerfile_base = re.search(r"^ARG BASE_IMAGE=(\S+)", DOCKERFILE.read_text(), re.M)
    assert dockerfile_base
    for name, image in APP_SERVICES.items():
        service = compose["services"][name]
        assert service["image"] == image + ":${LLMB_IMAGE_TAG:-" + APP_VERSION + "}"
        build = service["build"]
        assert build["context"] == "."
        assert (REPO / build["dockerfile"]).resolve() == DOCKERFILE.resolve()
        assert build["target"] == name
        assert build["args"]["BASE_IMAGE"] == "${LLMB_BASE_IMAGE:-" + dockerfile_base[1] + "}"


def test_start_order_is_gated_by_healthchecks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["worker"]["depends_on"] == {"redis": {"condition": "service_healthy"}}
    assert services["api"]["depends_on"] == {
        "redis": {"condition": "service_healthy"},
        "worker": {"condition": "service_healthy"},
    }
    ports = {"api": ApiSettings.model_fields["port"].default,
             "worker": WorkerSettings.model_fields["health_port"].default}  # fmt: skip
    for name, port in ports.items():
        probe = " ".join(services[name]["healthcheck"]["test"])
        assert f"http://127.0.0.1:{port}/readyz" in probe


def test_two_hardened_workers_and_the_api_on_localhost(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["worker"]["deploy"]["replicas"] == 2
    assert services["api"]["ports"] == ["127.0.0.1:${LLMB_API_PORT:-8000}:8000"]
    for name in APP_SERVICES:
        service = services[name]
        assert service["read_only"] is True
        assert "/tmp" in service["tmpfs"]
        assert service["cap_drop"] == ["ALL"]


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)s", duration)
    assert match, f"write stop_grace_period in seconds: {duration!r}"
    return float(match[1])


def test_stop_grace_covers_the_drain_times(compose: dict[str, Any]) -> None:
    services = compose["services"]
    drain_s = WorkerSettings.model_fields["drain_s"].default
    grace_s = ApiSettings.model_fields["shutdown_grace_s"].default
    assert _seconds(services["worker"]["stop_grace_period"]) > drain_s
    # The API: streams may finish within the grace, then uvicorn's own 5 s (api/server.py).
    assert _seconds(services["api"]["stop_grace_period"]) >= grace_s + 5


# === the monitoring profile ====================================================================


def _mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path of the bind mounts (./...) of a service."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            mounts[target] = REPO / source
    return mounts


def test_monitoring_is_an_optional_profile(compose: dict[str, Any]) -> None:
    for name in ("prometheus", "grafana"):
        service = compose["services"][name]
        assert service["profiles"] == ["monitoring"]
        assert re.search(r":v?\d+\.\d+\.\d+$", service["image"]), "pin the version"
        for host_path in _mounts(service).values():
            assert host_path.exists(), f"{name} mounts {host_path}, which does not exist"
    for name in ("redis", "worker", "api"):
        assert "profiles" not in compose["services"][name]


def test_prometheus_scrapes_both_kinds_and_loads_the_alerts(compose: dict[str, Any]) -> None:
    mounts = _mounts(compose["services"]["prometheus"])
    by_host = {path.resolve(): target for target, path in mounts.items()}
    config_path = next(p for t, p in mounts.items() if t == "/etc/prometheus/prometheus.yml")
    config = _load_yaml(config_path)
    alerts_target = by_host[(CHART_DIR / "files" / "alerts.yaml").resolve()]
    assert config["rule_files"] == [alerts_target]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    api_port = ApiSettings.model_fields["port"].default
    worker_port = WorkerSettings.model_fields["health_port"].default
    assert jobs["llm-batcher-api"]["static_configs"] == [{"targets": [f"api:{api_port}"]}]
    [dns] = jobs["llm-batcher-worker"]["dns_sd_configs"]
    assert dns["names"] == ["worker"] and dns["port"] == worker_port


def test_grafana_provisions_the_dashboard_and_its_data_source(compose: dict[str, Any]) -> None:
    mounts = _mounts(compose["services"]["grafana"])
    provisioning = mounts["/etc/grafana/provisioning"]
    [source] = _load_yaml(provisioning / "datasources" / "prometheus.yaml")["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    assert source["isDefault"] is True
    [provider] = _load_yaml(provisioning / "dashboards" / "llm-batcher.yaml")["providers"]
    dashboards_dir = provider["options"]["path"]
    [(target, dashboard_path)] = [
        (t, p) for t, p in mounts.items() if t.startswith(dashboards_dir + "/")
    ]
    expected = CHART_DIR / "files" / "llm-batcher-dashboard.json"
    assert dashboard_path.resolve() == expected.resolve()
    assert target.endswith(".json")
    # The dashboard picks a Prometheus data source through a variable, or names the provisioned
    # one: either way the provisioned default serves it.
    dashboard = json.loads(dashboard_path.read_text(encoding="utf-8"))
    variables = {
        v["name"]: v for v in dashboard.get("templating", {}).get("list", [])
        if v.get("type") == "datasource"
    }  # fmt: skip
    for uid in set(re.findall(r'"uid": "([^"]*)"', json.dumps(dashboard))) - {"-- Grafana --"}:
        if uid.startswith("${"):
            assert variables[uid[2:-1]]["query"] == "prometheus"
        elif uid != dashboard.get("uid"):
            assert uid == source["uid"], f"the dashboard names data source {uid!r}"


# === the shell scripts =========================================================================

SCRIPTS = [
    SETUP_SCRIPT,
    BUILD_SCRIPT,
    REPO / "requirements" / "refresh.sh",
    REPO / "k8s-tests" / "run.sh",
]


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_the_script_parses(script: Path) -> None:
    assert script.stat().st_mode & 0o111, f"{script.name} is not executable"
    result = subprocess.run(
        ["bash", "-n", str(script)], capture_output=True, text=True, check=False, timeout=30
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.requires_tool("shellcheck")
@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_shellcheck(script: Path) -> None:
    shellcheck = find_tool("shellcheck")
    assert shellcheck is not None  # requires_tool
    result = subprocess.run(
        [shellcheck, str(script)], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stdout

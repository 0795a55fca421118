"""The `helm test` hook: the pod runs `llm-batcher check` in the API image against the API
Service. Rendered, and its exact command run against a real API and worker, as the pod runs it in
the cluster (the command's own tests: tests/system/test_check_command.py)."""

from __future__ import annotations

import asyncio
import subprocess

import pytest

from llm_batcher.cli import build_parser
from tests.deploy.support import render_scenario
from tests.support.processes import BIN, Stack

SERVICE_URL = "http://llm-batcher-api:8000"
METRICS_URL = "http://llm-batcher-api:9090/metrics"  # the Service's port `metrics`


def hook_command(scenario: str = "default", name: str = "llm-batcher-test") -> list[str]:
    hook = render_scenario(scenario).get("Pod", name)
    (container,) = hook["spec"]["containers"]
    return list(container["command"])


def test_the_hook_runs_the_check_command_on_the_api_service() -> None:
    command = hook_command()
    assert command == [
        "llm-batcher",
        "check",
        SERVICE_URL,
        "--timeout-s",
        "60",
        "--expect-mock",
        "--metrics-url",
        METRICS_URL,
    ]
    args = build_parser().parse_args(command[1:])
    assert (args.url, args.timeout_s, args.expect_mock) == (SERVICE_URL, 60, True)
    assert args.metrics_url == METRICS_URL and args.expect_metric is None  # the queue depth
    hook = render_scenario("default").get("Pod", "llm-batcher-test")
    assert hook["spec"]["restartPolicy"] == "Never"
    assert hook["spec"]["activeDeadlineSeconds"] == 90  # the check's timeout, plus start-up


def test_the_hook_expects_the_mock_answer_only_with_the_mock() -> None:
    command = hook_command("custom-llm", "llmb-test")  # a real LLM command
    assert command == [
        "llm-batcher",
        "check",
        "http://llmb-api:8000",
        "--timeout-s",
        "60",
        "--metrics-url",
        "http://llmb-api:9090/metrics",
    ]


def test_the_network_policy_lets_the_hook_reach_the_metrics_port() -> None:
    """The API's metrics port admits the monitoring namespace and the `helm test` pod only."""
    rendered = render_scenario("default")
    policy = rendered.get("NetworkPolicy", "llm-batcher-api")["spec"]
    (metrics_rule,) = [r for r in policy["ingress"] if r["ports"][0]["port"] == "metrics"]
    hook_labels = rendered.get("Pod", "llm-batcher-test")["metadata"]["labels"]
    selectors = [
        peer["podSelector"]["matchLabels"] for peer in metrics_rule["from"] if "podSelector" in peer
    ]
    assert len(selectors) == 1 and selectors[0].items() <= hook_labels.items()
    assert selectors[0]["app.kubernetes.io/component"] == "test"


@pytest.mark.system
async def test_the_hook_command_passes_against_the_real_api_and_worker(stack: Stack) -> None:
    """The rendered command, the Service URL swapped for a local API's: what the pod does."""
    api = await stack.api()
    await stack.worker()
    await stack.wait_ready(api)  # Redis answers, a worker is live
    local = {SERVICE_URL: api.url, METRICS_URL: f"{api.url}/metrics"}  # metrics on its port
    command = [local.get(arg, arg) for arg in hook_command()]
    result = await asyncio.to_thread(
        subprocess.run,
        [str(BIN / command[0]), *command[1:]],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr + api.proc.log()
    assert result.stdout.startswith("OK: ") and "llm-batcher check" in result.stdout
    assert result.stdout.rstrip().endswith("exports llm_batcher_queue_depth"), result.stdout

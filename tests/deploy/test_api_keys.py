"""API keys in the chart: from a Secret (generated once and kept, or existingSecret), read by the
API and the `helm test` pod through secretKeyRef; no manifest holds a key."""

from __future__ import annotations

import base64

from tests.deploy.support import CHART_DIR, env_of, render, render_scenario


def test_off_by_default_with_a_warning_when_exposed() -> None:
    rendered = render_scenario("default")
    api = rendered.container("Deployment", "llm-batcher-api")
    assert "LLMB_API_KEYS" not in env_of(api)
    assert not [s for s in rendered.of_kind("Secret") if "api-keys" in s["metadata"]["name"]]
    assert "WARNING" not in rendered.notes
    exposed = render({"api": {"ingress": {"enabled": True}}})
    assert "without API keys" in exposed.notes


def test_generated_keys_are_kept_and_reach_the_api_and_the_test_pod_by_reference() -> None:
    rendered = render_scenario("api-keys")
    secret = rendered.get("Secret", "llm-batcher-api-keys")
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    keys = {name: base64.b64decode(v).decode() for name, v in secret["data"].items()}
    assert set(keys) == {"api-keys", "admin-keys"}
    assert all(len(k) == 40 and k.isalnum() for k in keys.values())
    assert keys["api-keys"] != keys["admin-keys"]
    env = env_of(rendered.container("Deployment", "llm-batcher-api"))
    assert env["LLMB_API_KEYS"]["valueFrom"]["secretKeyRef"] == {
        "name": "llm-batcher-api-keys",
        "key": "api-keys",
    }
    assert env["LLMB_ADMIN_KEYS"]["valueFrom"]["secretKeyRef"]["key"] == "admin-keys"
    assert env["LLMB_STATS_REQUIRE_KEY"]["value"] == "true"
    test_env = env_of(rendered.container("Pod", "llm-batcher-test"))
    assert set(test_env) == {"LLMB_API_KEYS"}  # the test pod gets no admin key
    for path, text in rendered.sources.items():
        if not path.endswith("api/secret.yaml"):
            assert all(k not in text for k in keys.values()), path
    assert "Authorization: Bearer" in rendered.notes
    template = (CHART_DIR / "templates" / "api" / "secret.yaml").read_text()
    assert '(lookup "v1" "Secret" .Release.Namespace $name).data' in template


def test_an_existing_secret_is_used_as_it_is() -> None:
    rendered = render_scenario("api-keys-existing-secret")
    assert not [s for s in rendered.of_kind("Secret") if "api-keys" in s["metadata"]["name"]]
    env = env_of(rendered.container("Deployment", "llm-batcher-api"))
    assert env["LLMB_API_KEYS"]["valueFrom"]["secretKeyRef"] == {
        "name": "llmb-api-keys",
        "key": "keys",
    }
    admin = env["LLMB_ADMIN_KEYS"]["valueFrom"]["secretKeyRef"]
    assert admin == {"name": "llmb-api-keys", "key": "admin-keys", "optional": True}

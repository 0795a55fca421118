"""The README's table of error codes is the ErrorCode enum, with the API's statuses."""

from __future__ import annotations

import re
from pathlib import Path

from llm_batcher.api.errors import HTTP_STATUS, OPENAI_STATUS
from llm_batcher.protocol.acl import user_rules
from llm_batcher.protocol.outcomes import ErrorCode

README = Path(__file__).resolve().parents[1] / "README.md"


def error_table() -> dict[str, tuple[str, str]]:
    """code -> (refusal status, stream error) of the README's error table."""
    text = README.read_text()
    table = text[text.index("| code | refusal status | stream error | when |") :]
    rows: dict[str, tuple[str, str]] = {}
    for line in table.splitlines()[2:]:
        if not line.startswith("|"):
            break
        code, status, stream = (cell.strip() for cell in line.strip("|").split("|")[:3])
        rows[code.strip("`")] = (status, stream)
    return rows


def test_the_readme_lists_every_error_code_once() -> None:
    rows = error_table()
    assert set(rows) == {code.value for code in ErrorCode}


def test_the_readme_gives_each_refusal_its_status() -> None:
    rows = error_table()
    statuses = {
        code: re.fullmatch(r"(\d+)(?: \((\d+) on `/v1/\*`\))?", status)
        for code, (status, _) in rows.items()
        if status
    }
    assert all(statuses.values()), statuses
    documented = {code: int(m.group(1)) for code, m in statuses.items() if m}
    assert documented == {code.value: status for code, status in HTTP_STATUS.items()}
    openai = {code: int(m.group(2)) for code, m in statuses.items() if m and m.group(2)}
    assert openai == {code.value: status for code, status in OPENAI_STATUS.items()}
    for code, (status, stream) in rows.items():
        assert status or stream, f"{code} is neither a refusal nor a stream error"
        assert re.fullmatch(r"(yes)?", stream), code


def test_security_md_shows_the_acl_rules_of_the_code() -> None:
    text = (README.parent / "SECURITY.md").read_text()
    for user, password in (("llmb-api", "API_PASSWORD"), ("llmb-worker", "WORKER_PASSWORD")):
        line = f"ACL SETUSER {user} {' '.join(user_rules('llmb', password))}"
        assert line in text, line

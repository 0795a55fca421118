"""The chart README's values table, made from values.yaml: one row per key with a `# --` comment
(its default, then the comment). `python -m tests.deploy.values_table` rewrites the table;
test_values_schema.py checks that it is up to date."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

CHART_DIR = Path(__file__).resolve().parents[2] / "charts" / "llm-batcher"
README = CHART_DIR / "README.md"
HEADER = "| key | default | description |\n| --- | --- | --- |\n"


def rows(values_text: str) -> list[str]:
    """The table rows, in the order of values.yaml."""
    data = yaml.safe_load(values_text)
    return [
        f"| `{'.'.join(path)}` | {_default(data, path)} | {doc} |"
        for path, doc in documented(values_text)
    ]


def documented(values_text: str) -> list[tuple[list[str], str]]:
    """(path, comment) of every key of values.yaml that carries its own `# --` comment."""
    lines = values_text.splitlines()
    found, ancestors = [], []  # ancestors: (indent, key) of the enclosing keys
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "- ")):
            continue
        indent = len(line) - len(line.lstrip())
        while ancestors and ancestors[-1][0] >= indent:
            ancestors.pop()
        key = stripped.split(":", 1)[0]
        path = [k for _, k in ancestors] + [key]
        ancestors.append((indent, key))
        doc = _doc_comment(lines, i)
        if doc is not None:
            found.append((path, doc))
    return found


def _doc_comment(lines: list[str], i: int) -> str | None:
    """The `# --` comment of the comment block just above line i, joined into one line."""
    block, j = [], i - 1
    while j >= 0 and lines[j].strip().startswith("#"):
        block.insert(0, lines[j].strip())
        j -= 1
    for k, comment in enumerate(block):
        if comment.startswith("# --"):
            rest = [c.removeprefix("#").strip() for c in block[k + 1 :]]
            return " ".join([comment.removeprefix("# --").strip(), *rest])
    return None


def _default(data: Any, path: list[str]) -> str:
    value = data
    for key in path:
        value = value[key]
    text = json.dumps(value)
    return (
        f"`{text}`"
        if not isinstance(value, list | dict) or len(text) <= 30
        else "`(see values.yaml)`"
    )


def table(values_text: str) -> str:
    return HEADER + "\n".join(rows(values_text))


def readme_table(readme: str) -> tuple[int, int]:
    """Where the table is in the README text: (start, end)."""
    start = readme.index(HEADER)
    return start, readme.index("\n\n", start)


def main() -> None:
    readme = README.read_text()
    start, end = readme_table(readme)
    README.write_text(
        readme[:start] + table((CHART_DIR / "values.yaml").read_text()) + readme[end:]
    )


if __name__ == "__main__":
    main()

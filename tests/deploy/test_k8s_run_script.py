"""k8s-tests/run.sh runs the chart README's walkthrough "From zero on kind": every command line
of its blocks, in order, is a line of the script (whitespace aside, and a `timeout N` before it
that bounds it). So the walkthrough is tested whenever the live-cluster suite runs."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.deploy.images_support import REPO
from tests.deploy.support import CHART_DIR

RUN_SCRIPT = REPO / "k8s-tests" / "run.sh"
SECTION = "## From zero on kind"
BOUNDED = re.compile(r"^timeout \S+ ")


def normalized(line: str) -> str:
    return " ".join(line.split())


def walkthrough_commands() -> list[str]:
    """The command lines of the walkthrough's shell blocks, comments and blank lines left out."""
    readme = (CHART_DIR / "README.md").read_text(encoding="utf-8")
    start = readme.index(SECTION) + len(SECTION)
    section = readme[start : readme.index("\n## ", start)]
    section = section.split("\n### ", 1)[0]  # its subsections name other tools (Skaffold)
    blocks = re.findall(r"```sh\n(.*?)```", section, re.DOTALL)
    return [
        normalized(line)
        for block in blocks
        for line in block.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def script_lines() -> list[str]:
    lines = [normalized(line) for line in RUN_SCRIPT.read_text(encoding="utf-8").splitlines()]
    return [BOUNDED.sub("", line) for line in lines if line and not line.startswith("#")]


def test_the_walkthrough_has_its_four_steps() -> None:
    readme = (CHART_DIR / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index(SECTION) : readme.index("### Iterate with Skaffold")]
    steps = re.findall(r"^# (\d)\. ", section, re.MULTILINE)
    assert steps == ["1", "2", "3", "4"], steps
    assert len(walkthrough_commands()) >= 12, walkthrough_commands()


def test_run_sh_runs_every_walkthrough_command_in_order() -> None:
    lines, at = script_lines(), -1
    for command in walkthrough_commands():
        later = [i for i, line in enumerate(lines) if line == command and i > at]
        assert later, (
            f"k8s-tests/run.sh does not run, after line {at + 1} of its commands: {command}"
        )
        at = later[0]


def test_run_sh_says_what_it_needs_without_its_tools(tmp_path: Path) -> None:
    """With no kind, kubectl or helm on PATH it stops at once, naming the missing tools."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "dirname", "timeout", "curl", "sed"):
        found = subprocess.run(["which", tool], capture_output=True, text=True, check=False)
        if found.returncode == 0:
            (bin_dir / tool).symlink_to(found.stdout.strip())
    result = subprocess.run(
        [str(bin_dir / "bash"), str(RUN_SCRIPT)],
        capture_output=True, text=True, timeout=30, check=False,
        env={"PATH": str(bin_dir)},
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "missing: docker kind kubectl helm" in result.stderr, result.stderr


def test_run_sh_refuses_an_unknown_argument() -> None:
    result = subprocess.run(
        ["bash", str(RUN_SCRIPT), "--nope"], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 2, result.stderr
    assert "unknown argument --nope" in result.stderr
    assert "--keep" in result.stderr  # the usage follows

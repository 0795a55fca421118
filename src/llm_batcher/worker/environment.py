"""The environment an LLM child gets: an allowlist, never the worker's secrets.

The worker's own environment holds the Redis URL and password (and whatever else a deployment
puts there); a child that printed its environment once put the Redis password into a
client-visible error. The child gets only what a program needs to run (PATH, HOME, the locale,
the temp folder, Python's own variables, the mock's defaults) plus the variables that
LLMB_LLM_ENV names, e.g. a model path or a device list.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

ALLOWED_NAMES = frozenset({"PATH", "HOME", "LANG", "LANGUAGE", "TMPDIR", "TZ", "VIRTUAL_ENV"})
ALLOWED_PREFIXES = ("LC_", "PYTHON", "LLMB_MOCK_")


def child_environment(environ: Mapping[str, str], extra_names: Iterable[str]) -> dict[str, str]:
    """The allowlisted part of ``environ``, plus the variables ``extra_names`` names."""
    extra = set(extra_names)
    return {
        name: value
        for name, value in environ.items()
        if name in ALLOWED_NAMES or name in extra or name.startswith(ALLOWED_PREFIXES)
    }

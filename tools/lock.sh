#!/usr/bin/env bash
# Refresh the pinned, hashed dependency sets from pyproject.toml:
#   requirements.lock      the application (what the image and a production install use)
#   requirements-dev.lock  the application, the dev extras and the build's tools (what CI uses)
#   requirements-build.lock  the build's tools alone, at the dev lock's versions (the Dockerfile's build venv)
# Usage: bash tools/lock.sh [--upgrade]   (run from anywhere; needs `uv`: pip install uv)
# Both files resolve for Python 3.11 on any platform (--universal), so they serve x86_64 and aarch64 alike.
# tests/test_lock.py fails when pyproject.toml and the locks disagree.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
UV=${UV:-uv}
command -v "$UV" >/dev/null 2>&1 || UV=.venv/bin/uv
common=(--universal --python-version 3.11 --generate-hashes --quiet "$@")
"$UV" pip compile pyproject.toml "${common[@]}" -o requirements.lock
"$UV" pip compile pyproject.toml --extra dev "${common[@]}" -o requirements-dev.lock
printf 'setuptools\nwheel\nmypy\n' | "$UV" pip compile - "${common[@]}" -c requirements-dev.lock -o requirements-build.lock
echo "wrote requirements-build.lock ($(grep -c "==" requirements-build.lock) pins),  requirements.lock ($(grep -c '==' requirements.lock) pins), requirements-dev.lock ($(grep -c '==' requirements-dev.lock) pins)"

# Sourced by scripts/run and scripts/test: find or install uv, then install the locked
# dependencies into .venv. Works on a machine with only Python 3.11 and pip.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

UV_VERSION=0.13.9
if command -v uv >/dev/null 2>&1; then
  UV=uv
elif [ -x .tools/bin/uv ]; then
  UV=.tools/bin/uv
elif python3 -m venv .tools >/dev/null 2>&1; then
  .tools/bin/python -m pip install --quiet "uv==${UV_VERSION}"
  UV=.tools/bin/uv
else
  PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --quiet --user "uv==${UV_VERSION}"
  UV="$(python3 -m site --user-base)/bin/uv"
fi
"$UV" sync --frozen --quiet

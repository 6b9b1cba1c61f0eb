#!/usr/bin/env bash
# Makes sure a virtualenv with the pinned Python Celery client exists and prints its python
# (last line of stdout; everything else goes to stderr):  PY=$(scripts/ensure-python.sh)
set -euo pipefail
cd "$(dirname "$0")"

venv="${CELERYD_VENV:-$HOME/.cache/celeryd/venv}"
req="$PWD/requirements-interop.txt"
want="$(grep -E '^celery==' "$req" | cut -d= -f3)"
stamp="$venv/.celeryd-requirements"

if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && cmp -s "$stamp" "$req" \
   && "$venv/bin/python" -c "import celery, sys; sys.exit(celery.__version__ != '$want')" 2>/dev/null; then
  echo "$venv/bin/python"
  exit 0
fi

echo "ensure-python: creating $venv with celery==$want" >&2
rm -rf "$venv"
mkdir -p "$(dirname "$venv")"
python3 -m venv "$venv" >&2
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req" >&2
cp "$req" "$stamp"
echo "$venv/bin/python"

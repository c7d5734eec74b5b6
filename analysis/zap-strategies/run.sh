#!/usr/bin/env bash
# The zap-strategies study in one command: bash analysis/zap-strategies/run.sh
# Writes analysis/zap-strategies/out/ (figures, CSV, table.md). Needs the virtualenv of scripts/bootstrap.sh.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
py=.venv/bin/python
[ -x "$py" ] || { echo "run.sh: $py missing; run scripts/bootstrap.sh first" >&2; exit 1; }
exec "$py" analysis/zap-strategies/study.py "$@"

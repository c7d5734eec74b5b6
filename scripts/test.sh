#!/usr/bin/env bash
# Set up (scripts/bootstrap.sh) and run the whole test suite, lab tests included.
# pytest's exit 5 ("no tests collected") is a failure here: a suite that runs nothing proves nothing.
set -uo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
bash scripts/bootstrap.sh || exit 1
# Test-only packages: Chromium renders the HTML report headless (tests/oncall/test_report.py).
if ! command -v chromium >/dev/null 2>&1; then
  echo "test.sh: installing chromium (the report rendering test)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null; } \
    || { echo "test.sh: apt-get install chromium failed" >&2; exit 1; }
fi
.venv/bin/python -m pytest -ra -p no:cacheprovider "$@"
rc=$?
if [ "$rc" = 5 ]; then
  echo "test.sh: pytest collected no tests; treating as failure" >&2
  exit 1
fi
exit "$rc"

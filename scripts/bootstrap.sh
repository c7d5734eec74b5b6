#!/usr/bin/env bash
# Set up everything tdptrace needs on a Debian/Ubuntu host, as root, idempotently:
# distribution packages (bcc comes from python3-bpfcc, never from PyPI), kernel headers that BCC can find,
# tracefs, and a virtualenv that sees the system's bcc (--system-site-packages) with tdptrace installed.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"

log() { printf 'bootstrap: %s\n' "$*" >&2; }

if [ "$(id -u)" != 0 ]; then
  log "must run as root (it installs packages and mounts tracefs); try: sudo bash scripts/bootstrap.sh"
  exit 1
fi

# prometheus: promtool and the server the exporter integration test starts on 127.0.0.1 (tests/live/test_prometheus.py).
pkgs=(python3 python3-venv python3-pip python3-bpfcc bpfcc-tools xz-utils zstd trace-cmd linux-perf prometheus)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
krel=$(uname -r)
# Kernel headers: the running kernel's own package if the distribution has one, else the generic
# meta-package (BCC tracepoint programs only need a consistent header tree, see README "Kernel headers").
if [ ! -e "/lib/modules/$krel/build/include" ]; then
  if apt-cache policy "linux-headers-$krel" 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    missing+=("linux-headers-$krel")
  else
    dpkg-query -W -f='${Status}' linux-headers-amd64 2>/dev/null | grep -q "install ok installed" \
      || missing+=(linux-headers-amd64)
  fi
fi
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  # Resolve the headers name again now that the lists are fresh.
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null || {
    log "apt-get install ${missing[*]} failed"; exit 1; }
fi

# BCC looks for headers at /lib/modules/$(uname -r)/build (generated headers) and .../source (the rest).
# Custom kernels (Firecracker, cloud images) often ship none: point both at the newest installed
# Debian/Ubuntu header tree. Debian splits it in two: linux-headers-X-amd64 (build) and -X-common (source).
# Links we made before are refreshed; a real header tree (a regular directory) is never touched.
managed() { [ ! -e "$1" ] || { [ -L "$1" ] && readlink "$1" | grep -q '^/usr/src/linux-headers-'; }; }
if [ ! -d "/usr/src/linux-headers-$krel" ] && managed "/lib/modules/$krel/build" && managed "/lib/modules/$krel/source"; then
  hdr=$(ls -d /usr/src/linux-headers-*-amd64 /usr/src/linux-headers-*-generic 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -n "$hdr" ]; then
    src=$hdr
    case "$hdr" in
      *-amd64) [ -d "${hdr%-amd64}-common" ] && src="${hdr%-amd64}-common" ;;
    esac
    if [ "$(readlink "/lib/modules/$krel/build")" != "$hdr" ] || [ "$(readlink "/lib/modules/$krel/source")" != "$src" ]; then
      log "linking /lib/modules/$krel/build to $hdr and /source to $src"
      mkdir -p "/lib/modules/$krel"
      ln -sfn "$hdr" "/lib/modules/$krel/build"
      ln -sfn "$src" "/lib/modules/$krel/source"
    fi
  else
    log "no kernel header tree found under /usr/src; BCC will not compile (tdptrace record --backend ftrace still works)"
  fi
fi

if [ -d /sys/kernel/tracing ] && ! mountpoint -q /sys/kernel/tracing; then
  mount -t tracefs nodev /sys/kernel/tracing || log "could not mount tracefs at /sys/kernel/tracing"
fi

py=/usr/bin/python3
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import sys; sys.exit(0 if sys.base_prefix == "/usr" else 1)' 2>/dev/null; then
  log "creating .venv (system site packages visible, for bcc)"
  rm -rf .venv
  "$py" -m venv --system-site-packages .venv
fi
stamp=.venv/.tdptrace-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  log "installing tdptrace into .venv"
  piplog=$(mktemp)
  if ! { .venv/bin/python -m pip install -q --upgrade pip && .venv/bin/python -m pip install -q -e ".[test,serve]"; } \
      >"$piplog" 2>&1; then
    cat "$piplog" >&2; rm -f "$piplog"
    log "pip install failed (output above)"; exit 1
  fi
  rm -f "$piplog"
  touch "$stamp"
fi
.venv/bin/python -c 'import bcc' 2>/dev/null || log "warning: bcc is not importable from .venv (python3-bpfcc missing?)"
log "ready: $(.venv/bin/tdptrace --version 2>/dev/null || echo 'tdptrace not runnable')"

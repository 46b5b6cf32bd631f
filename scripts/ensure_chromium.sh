#!/usr/bin/env bash
# Makes sure Debian's headless-capable Chromium is installed at /usr/bin/chromium (the browser
# demo test drives it through Playwright). Installs it with apt when missing; needs root.
set -euo pipefail

CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
if [ -x "$CHROMIUM" ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  printf 'error: %s is missing and installing it needs root (apt-get install chromium)\n' \
    "$CHROMIUM" >&2
  exit 1
fi
printf '[%s] installing chromium with apt-get\n' "$(date +%H:%M:%S)" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq --no-install-recommends chromium >&2
[ -x "$CHROMIUM" ] || { printf 'error: %s still missing after install\n' "$CHROMIUM" >&2; exit 1; }

#!/usr/bin/env bash
# Headless Chromium for the browser test (tests/test_report_browser.py), from Debian's `chromium`
# package. Idempotent: does nothing when /usr/bin/chromium is there. Playwright (the `dev` extra)
# drives it through executable_path; `playwright install` is never run (no browser downloads).
set -euo pipefail
CHROMIUM="${VAELENS_CHROMIUM:-/usr/bin/chromium}"
if [ -x "$CHROMIUM" ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_browser.sh: $CHROMIUM is missing and apt-get is not available; install Chromium yourself" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
test -x "$CHROMIUM"
echo "install_browser.sh: installed $("$CHROMIUM" --version 2>/dev/null || echo chromium)"

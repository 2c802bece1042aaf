#!/usr/bin/env bash
# The UI test drives Debian's Chromium headless (never a downloaded browser build).
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq -o Acquire::Languages=en >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
else
  echo "The browser test needs Debian's chromium: sudo apt-get install -y chromium" >&2
  exit 1
fi

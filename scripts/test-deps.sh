#!/usr/bin/env bash
# Installs what the test suite needs beyond Rust: Debian's Chromium and Node.js for the web UI
# browser tests, playwright-core and ethers (pinned in e2e/package-lock.json: the one drives
# Chromium, the other signs as the test wallet), and qemu-user
# for the test that runs the binary on a CPU without AVX.
# Idempotent: does nothing when everything is already in place.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
[ -x /usr/bin/chromium ] || missing+=(chromium)
# qemu-user runs the blyan binary on an emulated CPU without AVX (the portability test).
command -v qemu-x86_64 >/dev/null 2>&1 || missing+=(qemu-user)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null ||
    { $sudo apt-get update >/dev/null && $sudo apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; }
fi

if [ ! -d e2e/node_modules/playwright-core ] || [ ! -d e2e/node_modules/ethers ]; then
  npm ci --prefix e2e --no-audit --no-fund --loglevel=error >/dev/null
fi

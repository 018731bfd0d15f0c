#!/usr/bin/env bash
# Headless Chromium and its WebDriver (Debian's chromium and chromium-driver) for the web
# console's browser tests (tests/test_console*.py) and `shmpiped console-screenshot`.
# selenium itself comes from PyPI through the `test` extra.  Idempotent: nothing is
# installed when both programs already answer --version.
set -euo pipefail
if ! chromium --version >/dev/null 2>&1 || ! chromedriver --version >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-dejavu-core
fi
chromium --version
chromedriver --version

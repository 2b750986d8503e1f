#!/usr/bin/env bash
# System packages for tests/integration/test_labelling_browser.py and test_report_html_browser.py:
# headless Chromium + chromedriver
# (Debian/Ubuntu). Tolerant of failure: without them the browser test is
# skipped (the HTTP API test still runs), so a CI image without apt access does not break the build.
set -u
SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; fi
if command -v apt-get >/dev/null 2>&1; then
  $SUDO apt-get update -q || echo "ci-system-deps-labelling: apt-get update failed (browser test will skip)"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends chromium chromium-driver \
    || echo "ci-system-deps-labelling: chromium not installed (browser test will skip)"
else
  echo "ci-system-deps-labelling: no apt-get here; install Chromium and chromedriver by hand"
fi
# the selenium client comes with the project's dev extra (pyproject.toml)
exit 0

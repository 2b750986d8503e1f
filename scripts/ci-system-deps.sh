#!/usr/bin/env bash
# System packages the ops tests use: promtool + prometheus (monitoring files, scrape test),
# the shellcheck linter (install scripts), systemd-analyze (unit verification).
# Idempotent and tolerant: a package that cannot be installed prints a warning and the tests that
# need it skip with the reason. Called by .ci/run (as root) before pytest.
set -uo pipefail

packages=(prometheus shellcheck systemd)
missing=()
command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)

if [ "${#missing[@]}" -eq 0 ]; then
    echo "ci-system-deps: ${packages[*]} already installed"
fi
install_apt() {
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ci-system-deps: WARNING: no apt-get; missing ${missing[*]} (their tests will skip)" >&2
    return 0
fi
sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then sudo_cmd=(sudo -n); else
        echo "ci-system-deps: WARNING: not root and no sudo; missing ${missing[*]} (tests will skip)" >&2
        return 0
    fi
fi
export DEBIAN_FRONTEND=noninteractive
# policy-rc.d keeps the prometheus package from starting a server on :9090 (the tests start their own)
if [ ! -e /usr/sbin/policy-rc.d ] && [ "${#sudo_cmd[@]}" -eq 0 ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && created_policy=1
fi
if ! "${sudo_cmd[@]}" apt-get update -qq; then
    echo "ci-system-deps: WARNING: apt-get update failed; trying the cached package lists" >&2
fi
for pkg in "${missing[@]}"; do
    if ! "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null; then
        echo "ci-system-deps: WARNING: could not install $pkg (its tests will skip)" >&2
    fi
done
if [ "${created_policy:-0}" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
}
if [ "${#missing[@]}" -gt 0 ]; then install_apt; fi
# Ansible (fleet playbook syntax check) in a throw-away venv, not in the project's environment.
ansible_venv=/opt/lineguard-ci/ansible
if ! command -v ansible-playbook >/dev/null 2>&1 && [ ! -x "$ansible_venv/bin/ansible-playbook" ]; then
    if python3 -m venv "$ansible_venv" >/dev/null 2>&1 \
        && "$ansible_venv/bin/pip" install -q ansible-core >/dev/null 2>&1; then
        echo "ci-system-deps: ansible-core installed in $ansible_venv"
    else
        echo "ci-system-deps: WARNING: could not install ansible-core (fleet tests will skip)" >&2
    fi
fi
for tool in promtool prometheus shellcheck systemd-analyze; do
    if command -v "$tool" >/dev/null 2>&1; then echo "ci-system-deps: $tool: $(command -v "$tool")"; else
        echo "ci-system-deps: WARNING: $tool missing" >&2; fi
done
exit 0

#!/usr/bin/env bash
# Upgrade or roll back LineGuard by switching /opt/lineguard/venv to another installed release,
# then restart and check that the service reaches READY. Rolls back by itself when it does not.
# Reference: docs/operations.md "Upgrade and rollback".
#
#   sudo deploy/switch-release.sh --list
#   sudo deploy/switch-release.sh 0.5.0            # upgrade (release installed by install-*.sh --version 0.5.0)
#   sudo deploy/switch-release.sh --previous       # roll back to the release that was active before
set -euo pipefail

BASE="${LINEGUARD_BASE:-/opt/lineguard}"
UNIT="${LINEGUARD_UNIT:-lineguard.service}"
CONFIG="${LINEGUARD_CONFIG:-/etc/lineguard/line.yaml}"
WAIT_S="${LINEGUARD_READY_WAIT_S:-900}"   # first TensorRT engine build can take minutes

log() { printf 'switch-release: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

current() { readlink "$BASE/venv" | sed -E 's|^releases/([^/]+)/venv$|\1|'; }

point_to() {
    ln -sfn "releases/$1/venv" "$BASE/venv.new"
    mv -T "$BASE/venv.new" "$BASE/venv"
    echo "$2" > "$BASE/previous-release"
}

wait_active() {
    # Type=notify: "active" means READY=1 arrived (bundle verified, self-tested, camera open).
    local deadline=$((SECONDS + WAIT_S))
    while [ $SECONDS -lt $deadline ]; do
        case "$(systemctl is-active "$UNIT" || true)" in
            active) return 0 ;;
            failed) return 1 ;;
        esac
        sleep 2
    done
    return 1
}

case "${1:-}" in
    --list)
        for d in "$BASE"/releases/*/; do
            name="$(basename "$d")"
            if [ "$name" = "$(current)" ]; then echo "* $name"; else echo "  $name"; fi
        done
        exit 0 ;;
    --previous)
        [ -s "$BASE/previous-release" ] || die "no previous release recorded"
        target="$(cat "$BASE/previous-release")" ;;
    ""|-h|--help)
        sed -n '2,10p' "$0"; exit 0 ;;
    *)
        target="$1" ;;
esac

[ "$(id -u)" -eq 0 ] || die "run as root"
[ -x "$BASE/releases/$target/venv/bin/lineguard" ] || die "release $target is not installed under $BASE/releases"
old="$(current)"
[ "$old" != "$target" ] || die "release $target is already active"

# The new code must accept the current config before the line is touched.
"$BASE/releases/$target/venv/bin/lineguard" check-config "$CONFIG" || die "release $target rejects $CONFIG"

log "switching $old -> $target"
point_to "$target" "$old"
systemctl reset-failed "$UNIT" || true
systemctl restart "$UNIT"
if wait_active; then
    log "release $target is active ($UNIT ready); roll back with: $0 --previous"
    exit 0
fi
log "release $target did not become ready; rolling back to $old"
journalctl -u "$UNIT" -n 50 --no-pager >&2 || true
point_to "$old" "$target"
systemctl reset-failed "$UNIT" || true
systemctl restart "$UNIT"
wait_active || die "rollback to $old did not become ready either: look at journalctl -u $UNIT"
die "upgrade to $target failed, $old restored"

#!/usr/bin/env bash
# Shared steps of install-jetson.sh and install-ipc.sh (sourced, not run).
# Layout it creates (docs/operations.md "Files on the box"):
#   /opt/lineguard/releases/<version>/venv   one venv per release (upgrade = new release, rollback = old link)
#   /opt/lineguard/venv -> releases/<version>/venv   the link the systemd units run
#   /etc/lineguard/line.yaml                  config (never overwritten), keys/ for secrets
#   /var/lib/lineguard/{bundles,trt-cache}    bundles and data (the only writable paths of the service)
# With --root DIR everything goes below DIR and nothing is started (staging, image builds, tests).

ROOT=""
SOURCE=""
CAMERA="gige"
WITH_SINK=0
SKIP_VENV=0
DRY_RUN=0
VERSION=""

log() { printf 'lineguard-install: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

run() {
    # Print and run a command; with --dry-run only print it.
    log "+ $*"
    if [ "$DRY_RUN" -eq 0 ]; then "$@"; fi
}

usage_common() {
    cat <<'USAGE'
  --source PATH     LineGuard wheel (.whl) or source folder to install (required unless --skip-venv)
  --version V       release name (default: the wheel's version, or "dev-<date>" for a folder)
  --camera gige|usb3  camera interface: usb3 installs the USB device drop-in (default gige)
  --with-sink       also install the collection sink unit (lineguard-sink.service) and upload timer
  --root DIR        install below DIR, start nothing (staging, tests)
  --skip-venv       lay out files and units only (venv made elsewhere, or tests)
  --dry-run         print the commands, change nothing
USAGE
}

parse_common() {
    # Parses one common option; returns the number of arguments consumed (0 = not ours).
    case "$1" in
        --source) SOURCE="$2"; return 2 ;;
        --version) VERSION="$2"; return 2 ;;
        --camera) CAMERA="$2"; return 2 ;;
        --with-sink) WITH_SINK=1; return 1 ;;
        --root) ROOT="$2"; return 2 ;;
        --skip-venv) SKIP_VENV=1; return 1 ;;
        --dry-run) DRY_RUN=1; return 1 ;;
    esac
    return 0
}

repo_dir() { cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd; }

check_common() {
    case "$CAMERA" in gige|usb3) ;; *) die "--camera must be gige or usb3" ;; esac
    if [ "$SKIP_VENV" -eq 0 ] && [ -z "$SOURCE" ]; then die "--source is required (wheel or folder)"; fi
    if [ -z "$ROOT" ] && [ "$DRY_RUN" -eq 0 ] && [ "$(id -u)" -ne 0 ]; then die "run as root (or use --root DIR)"; fi
    if [ -z "$VERSION" ]; then
        case "$SOURCE" in
            *.whl) VERSION="$(basename "$SOURCE" | cut -d- -f2)" ;;
            *) VERSION="dev-$(date +%Y%m%d%H%M%S)" ;;
        esac
    fi
}

make_venv() {
    # $1: python interpreter, $2: extra venv flags (e.g. --system-site-packages), rest: pip extras/packages
    local python="$1" venv_flags="$2"; shift 2
    local rel="$ROOT/opt/lineguard/releases/$VERSION"
    if [ "$SKIP_VENV" -eq 1 ]; then
        run mkdir -p "$rel"
        return 0
    fi
    [ -e "$rel/venv" ] && die "release $VERSION exists already ($rel); pick another --version"
    run mkdir -p "$rel"
    # shellcheck disable=SC2086  # venv_flags is empty or one flag
    run "$python" -m venv $venv_flags "$rel/venv"
    run "$rel/venv/bin/pip" install --upgrade pip
    run "$rel/venv/bin/pip" install "$SOURCE" "$@"
    run "$rel/venv/bin/lineguard" --version
}

link_release() {
    # First install: point /opt/lineguard/venv at this release. Later installs only add the release;
    # deploy/switch-release.sh switches (check-config, restart, wait for READY, auto-rollback).
    local base="$ROOT/opt/lineguard"
    if [ -L "$base/venv" ]; then
        log "release $VERSION installed beside $(readlink "$base/venv"); switch with: deploy/switch-release.sh $VERSION"
        return 0
    fi
    run ln -sfn "releases/$VERSION/venv" "$base/venv.new"
    run mv -T "$base/venv.new" "$base/venv"
    log "active release: $VERSION"
}

install_files() {
    local repo etc sysd
    repo="$(repo_dir)"
    etc="$ROOT/etc"
    sysd="$etc/systemd/system"
    run mkdir -p "$sysd/lineguard.service.d" "$ROOT/usr/lib/sysusers.d" "$ROOT/usr/lib/tmpfiles.d" \
        "$etc/logrotate.d" "$ROOT/opt/lineguard/docs"
    run install -m 0644 "$repo/systemd/lineguard.service" "$sysd/"
    run install -m 0644 "$repo/systemd/sysusers.d/lineguard.conf" "$ROOT/usr/lib/sysusers.d/lineguard.conf"
    run install -m 0644 "$repo/systemd/tmpfiles.d/lineguard.conf" "$ROOT/usr/lib/tmpfiles.d/lineguard.conf"
    run install -m 0644 "$repo/deploy/logrotate/lineguard" "$etc/logrotate.d/lineguard"
    run cp -r "$repo/docs/." "$ROOT/opt/lineguard/docs/"
    if [ "$CAMERA" = usb3 ]; then
        run install -m 0644 "$repo/systemd/lineguard.service.d/usb3-camera.conf" "$sysd/lineguard.service.d/"
        run mkdir -p "$etc/udev/rules.d"
        run install -m 0644 "$repo/deploy/udev/99-lineguard-usb3vision.rules" "$etc/udev/rules.d/"
    fi
    if [ "$WITH_SINK" -eq 1 ]; then
        run install -m 0644 "$repo/systemd/lineguard-sink.service" "$repo/systemd/lineguard-sink-upload.service" \
            "$repo/systemd/lineguard-sink-upload.timer" "$sysd/"
    fi
    run install -d -m 0750 "$etc/lineguard" "$etc/lineguard/keys"
    # The config is the plant's: never overwrite it, only add the annotated example beside it.
    run install -m 0640 "$repo/deploy/line.example.yaml" "$etc/lineguard/line.example.yaml"
    if [ ! -e "$etc/lineguard/line.yaml" ]; then
        run install -m 0640 "$repo/deploy/line.example.yaml" "$etc/lineguard/line.yaml"
        log "wrote $etc/lineguard/line.yaml from the example: edit it before starting"
    fi
    if [ "$WITH_SINK" -eq 1 ]; then
        for f in sink.env sink-upload.env; do
            if [ ! -e "$etc/lineguard/$f" ]; then run install -m 0640 "$repo/deploy/$f.example" "$etc/lineguard/$f"; fi
        done
    fi
    run install -d -m 0750 "$ROOT/var/lib/lineguard" "$ROOT/var/lib/lineguard/bundles" "$ROOT/var/lib/lineguard/trt-cache"
}

activate_system() {
    # Create the user, folders and enable the units; only on the real root.
    if [ -n "$ROOT" ]; then
        log "--root given: not creating users or starting units"
        return 0
    fi
    run systemd-sysusers /usr/lib/sysusers.d/lineguard.conf
    run systemd-tmpfiles --create /usr/lib/tmpfiles.d/lineguard.conf
    run chown -R root:lineguard /etc/lineguard
    run udevadm control --reload-rules
    run systemctl daemon-reload
    run systemctl enable lineguard.service
    if [ "$WITH_SINK" -eq 1 ]; then run systemctl enable lineguard-sink.service lineguard-sink-upload.timer; fi
    log "next: edit /etc/lineguard/line.yaml, install a bundle (docs/operations.md), then"
    log "      lineguard check-config /etc/lineguard/line.yaml && systemctl start lineguard"
}

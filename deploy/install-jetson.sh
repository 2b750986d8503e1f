#!/usr/bin/env bash
# Install LineGuard on an NVIDIA Jetson (JetPack 6: Ubuntu 22.04, CUDA 12, TensorRT 10 as system
# packages). Reference: docs/operations.md "Installing on a Jetson".
#
#   sudo deploy/install-jetson.sh --source dist/lineguard-0.4.0-py3-none-any.whl [--camera usb3]
#
# TensorRT and CUDA come from JetPack (apt: nvidia-jetpack), not from PyPI: the venv is made with
# --system-site-packages so it sees JetPack's `tensorrt` Python module. onnxruntime-gpu for Jetson
# is not on PyPI; pass NVIDIA's Jetson wheel with --ort-wheel, or run the native TensorRT engine only.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

ORT_WHEEL=""
PYTHON="${PYTHON:-/usr/bin/python3}"

usage() {
    echo "usage: $0 [--ort-wheel FILE] [options]"
    usage_common
    echo "  --ort-wheel FILE  onnxruntime-gpu wheel built for this JetPack (optional)"
}

while [ $# -gt 0 ]; do
    case "$1" in
        --ort-wheel) ORT_WHEEL="$2"; shift 2; continue ;;
        -h|--help) usage; exit 0 ;;
    esac
    n=0
    parse_common "$@" || n=$?
    [ "$n" -gt 0 ] || { usage >&2; die "unknown option $1"; }
    shift "$n"
done
check_common

if [ -z "$ROOT" ] && [ "$DRY_RUN" -eq 0 ]; then
    [ "$(uname -m)" = aarch64 ] || die "this is $(uname -m), not a Jetson; use install-ipc.sh"
    [ -e /etc/nv_tegra_release ] || die "/etc/nv_tegra_release missing: is JetPack installed?"
    "$PYTHON" -c 'import tensorrt' 2>/dev/null \
        || die "JetPack's TensorRT Python module is missing: apt-get install nvidia-jetpack (or python3-libnvinfer)"
    # Maximum clocks keep inference latency flat; the plant decides the power mode (nvpmodel).
    log "power mode: $(nvpmodel -q 2>/dev/null | head -n1 || echo unknown); consider 'jetson_clocks' in a unit"
fi

extra=()
if [ -n "$ORT_WHEEL" ]; then extra+=("$ORT_WHEEL"); fi
# --system-site-packages: tensorrt, numpy and OpenCV built for the Jetson's CUDA come from JetPack.
make_venv "$PYTHON" "--system-site-packages" "${extra[@]}"
install_files
run install -m 0644 "$(repo_dir)/systemd/lineguard.service.d/jetson-gpu.conf" \
    "$ROOT/etc/systemd/system/lineguard.service.d/"
link_release
activate_system

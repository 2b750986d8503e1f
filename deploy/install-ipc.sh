#!/usr/bin/env bash
# Install LineGuard on an x86-64 industrial PC (Debian 12 / Ubuntu 22.04+), CPU only or with an
# NVIDIA GPU. Reference: docs/operations.md "Installing on an industrial PC".
#
#   sudo deploy/install-ipc.sh --source dist/lineguard-0.4.0-py3-none-any.whl [--gpu] [--camera usb3]
#
# --gpu installs onnxruntime-gpu and the TensorRT wheels (the NVIDIA driver must already be
# installed: `nvidia-smi` works) and the GPU device drop-in. Without it: onnxruntime on the CPU.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

GPU=0
PYTHON="${PYTHON:-python3}"

usage() {
    echo "usage: $0 [--gpu] [options]"
    usage_common
    echo "  --gpu             NVIDIA GPU: onnxruntime-gpu + tensorrt wheels, GPU device drop-in"
}

while [ $# -gt 0 ]; do
    case "$1" in
        --gpu) GPU=1; shift; continue ;;
        -h|--help) usage; exit 0 ;;
    esac
    n=0
    parse_common "$@" || n=$?
    [ "$n" -gt 0 ] || { usage >&2; die "unknown option $1"; }
    shift "$n"
done
check_common

if [ -z "$ROOT" ] && [ "$DRY_RUN" -eq 0 ]; then
    [ "$(uname -m)" = x86_64 ] || die "this is $(uname -m); use install-jetson.sh on a Jetson"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || die "$PYTHON must be >= 3.10"
    if [ "$GPU" -eq 1 ]; then
        command -v nvidia-smi >/dev/null || die "--gpu: NVIDIA driver missing (nvidia-smi not found)"
    fi
fi

if [ "$GPU" -eq 1 ]; then
    # onnxruntime-gpu replaces onnxruntime (both provide the same module: never install both);
    # tensorrt-cu12 brings the TensorRT libraries for the native engine and ORT's TensorRT EP.
    make_venv "$PYTHON" "" "onnxruntime-gpu>=1.18" "tensorrt-cu12>=10.0" "cuda-python>=12.0"
    if [ "$SKIP_VENV" -eq 0 ]; then
        run "$ROOT/opt/lineguard/releases/$VERSION/venv/bin/pip" uninstall -y onnxruntime || true
    fi
else
    make_venv "$PYTHON" ""
fi
install_files
if [ "$GPU" -eq 1 ]; then
    run install -m 0644 "$(repo_dir)/systemd/lineguard.service.d/nvidia-gpu.conf" \
        "$ROOT/etc/systemd/system/lineguard.service.d/"
fi
link_release
activate_system

"""What ``lineguard check-config`` checks on the box before the line starts (beyond the schema).

Where it sits: after :func:`lineguard.config.load_config` (schema, YAML lines), before ``run``. It
answers "would this config start and judge parts correctly here?": the bundle is present and
verified by :func:`lineguard.changeover.signing.verify_bundle` (signature per the line's policy,
every hash) and expects what the source delivers (size, channels, bit depth); replay paths and key
files exist; the decision-log, store and cache directories are writable with free space;
endpoints are well formed and ports do not collide.

Each :class:`Problem` names the config field (a YAML path; the CLI adds its line) and says how to
fix it. Side-effect free: nothing is connected to, nothing is created except a probe file that is
removed at once, and nothing a service would read is changed.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from lineguard.bundle import Bundle
from lineguard.changeover.signing import VerifiedBundle, line_verifier, verify_bundle
from lineguard.config import LineConfig
from lineguard.errors import ImageError, LineGuardError
from lineguard.preprocess import InputSpec, check_image
from lineguard.sources.config import GenICamSourceConfig, ReplaySourceConfig, SyntheticSourceConfig
from lineguard.sources.pixels import layout, max_value
from lineguard.sources.replay import decode_image, list_images

# Free space a writable directory needs: more than one rotated decision-log segment (50 MB), so the
# first part of a shift cannot meet a full disk.
MIN_FREE_BYTES = 64 * 1024 * 1024
Loc = tuple[str | int, ...]
_TCP = re.compile(r"^tcp://(?P<host>\[[^\]]+\]|[^:/\[\]]+):(?P<port>[^:/]+)$")


@dataclass(frozen=True, slots=True)
class Problem:
    """One refusal: the config field it concerns and a message that ends with the fix."""

    loc: Loc
    message: str

    @property
    def dotted(self) -> str:
        return ".".join(str(p) for p in self.loc)


@dataclass
class Preflight:
    """Problems found, plus what was verified (the CLI prints both)."""

    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    verified: VerifiedBundle | None = None

    def refuse(self, loc: Loc, message: str) -> None:
        self.problems.append(Problem(loc, message))


def preflight(cfg: LineConfig, *, min_free_bytes: int = MIN_FREE_BYTES) -> Preflight:
    """Every on-box check of a schema-valid config; see the module docstring."""
    out = Preflight()
    out.verified = check_bundle(cfg, out)
    bundle = out.verified.bundle if out.verified is not None else None
    if bundle is not None:
        for loc, message in source_format_problems(cfg, bundle.manifest.input):
            out.refuse(loc, message)
    check_replay_paths(cfg, out)
    check_directories(cfg, out, bundle=bundle, min_free_bytes=min_free_bytes)
    check_files(cfg, out)
    for loc, message in endpoint_problems(cfg):
        out.refuse(loc, message)
    return out


# ------------------------------------------------------------------------------------ bundle
def check_bundle(cfg: LineConfig, out: Preflight) -> VerifiedBundle | None:
    """Present, signed per the line's policy, every hash: the same check ``run`` makes at start."""
    keys_field = cfg.signature_policy()[2]
    try:
        verified = verify_bundle(cfg.bundle.path, line_verifier(cfg))
    except LineGuardError as exc:
        out.refuse(("bundle", "path"), f"{exc}. Fix: point bundle.path at an installed, signed bundle, or sign "
                                       f"this one with a key listed in {keys_field}")
        return None
    b = verified.bundle
    out.notes.append(f"bundle {b.bundle_id}: {len(b.manifest.files)} files verified, "
                     f"{verified.signature.describe()}")
    return verified


def _spec_size(spec: InputSpec) -> str:
    return f"{spec.image_width}x{spec.image_height}"


def _format_problems(
    spec: InputSpec, *, channels: int, dtype: str, full_scale: int | None, loc: Loc, what: str
) -> list[tuple[Loc, str]]:
    want = f"{'mono' if spec.channels == 1 else 'RGB'} {spec.dtype} (max {spec.max_value})"
    got = f"{'mono' if channels == 1 else 'RGB'} {dtype}" + (f" (max {full_scale})" if full_scale else "")
    if channels != spec.channels or dtype != spec.dtype or (full_scale is not None and full_scale != spec.max_value):
        return [(loc, f"{what} delivers {got} but the bundle was trained on {want}: every part would get a "
                      f"fail-safe verdict. Fix: set {'.'.join(map(str, loc))} to match the bundle, or use a "
                      "bundle trained for this camera")]
    return []


def _size_problems(spec: InputSpec, width: int | None, height: int | None, what: str) -> list[tuple[Loc, str]]:
    if spec.image_width is None or width is None or height is None:
        return []
    if (width, height) == (spec.image_width, spec.image_height):
        return []
    return [(("source", "width"), f"{what} delivers {width}x{height} px but the bundle expects "
                                  f"{_spec_size(spec)} px: every part would get a fail-safe verdict. Fix: set "
                                  f"source.width/height to {spec.image_width}/{spec.image_height}, or use a bundle "
                                  f"trained on {width}x{height} frames")]


def source_format_problems(cfg: LineConfig, spec: InputSpec) -> list[tuple[Loc, str]]:
    """Size and pixel format the source is configured to deliver vs the bundle's input spec.

    GenICam: ROI (``width``/``height``) and ``pixel_format`` when set (unset = the camera's current
    setting, which only the camera knows); synthetic: its size, channels and bit depth; replay: the
    first image file, decoded as the source would.
    """
    src = cfg.source
    if isinstance(src, GenICamSourceConfig):
        problems = _size_problems(spec, src.width, src.height, f"camera ROI {src.width}x{src.height}")
        if src.pixel_format is not None:
            lay = layout(src.pixel_format)
            problems += _format_problems(
                spec, channels=lay.channels_out, dtype=lay.dtype.__name__, full_scale=max_value(src.pixel_format),
                loc=("source", "pixel_format"), what=f"pixel format {src.pixel_format}")
        return problems
    if isinstance(src, SyntheticSourceConfig):
        dtype = "uint8" if src.bit_depth == 8 else "uint16"
        loc: Loc = ("source", "channels") if src.channels != spec.channels else ("source", "bit_depth")
        return _size_problems(spec, src.width, src.height, "the synthetic source") + _format_problems(
            spec, channels=src.channels, dtype=dtype, full_scale=(1 << src.bit_depth) - 1, loc=loc,
            what="the synthetic source")
    return _replay_format_problems(src, spec)


def _replay_format_problems(src: ReplaySourceConfig, spec: InputSpec) -> list[tuple[Loc, str]]:
    try:
        files = list_images(src.paths, recursive=src.recursive, extensions=src.extensions)
    except LineGuardError:
        return []  # reported by check_replay_paths
    if not files:
        return []
    try:
        check_image(decode_image(files[0]), spec)
    except ImageError as exc:
        return [(("source", "paths"), f"first replay image {files[0]}: {exc}. Fix: replay images made for this "
                                      "bundle, or a bundle trained on such images")]
    return []


# ------------------------------------------------------------------------------------ paths and files
def check_replay_paths(cfg: LineConfig, out: Preflight) -> None:
    src = cfg.source
    if not isinstance(src, ReplaySourceConfig):
        return
    for i, entry in enumerate(src.paths):
        p = Path(entry)
        if not p.exists():
            out.refuse(("source", "paths", i), f"replay path {entry} does not exist. Fix: correct the path or "
                                               "remove it from source.paths")
        elif p.is_dir() and not list_images([p], recursive=src.recursive, extensions=src.extensions):
            out.refuse(("source", "paths", i), f"replay folder {entry} holds no image with an extension in "
                                               f"source.extensions {list(src.extensions)}. Fix: add images or "
                                               "correct the path")


def _need_file(out: Preflight, loc: Loc, path: Path | str, what: str) -> None:
    p = Path(path)
    if not p.exists():
        out.refuse(loc, f"{what} {p} does not exist. Fix: create it or correct the path")
    elif not os.access(p, os.R_OK):
        out.refuse(loc, f"{what} {p} is not readable by this user. Fix: adjust its owner or permissions")


def check_files(cfg: LineConfig, out: Preflight) -> None:
    """Files the service opens at start (keys, certificates, token, serial device): present and readable."""
    if cfg.plc is not None:
        t = cfg.plc.transport
        if t.type == "tls":
            for name in ("ca_file", "cert_file", "key_file"):
                _need_file(out, ("plc", "transport", name), getattr(t, name), f"plc.transport.{name}")
        elif t.type == "rtu":
            _need_file(out, ("plc", "transport", "device"), t.device, "serial device")
    curve = cfg.publisher.curve if cfg.publisher.enabled else None
    if curve is not None:
        for name in ("server_public_key_file", "client_secret_key_file"):
            _need_file(out, ("publisher", "curve", name), getattr(curve, name), f"publisher.curve.{name}")
    co = cfg.changeover
    if co is not None and co.control is not None:
        _need_file(out, ("changeover", "control", "token_file"), co.control.token_file, "control token file")


# ------------------------------------------------------------------------------------ directories
def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def writable_problem(directory: Path, *, need_bytes: int) -> str | None:
    """Why ``directory`` cannot take files (probe created and removed at once), or None.

    A directory that does not exist yet is judged by its nearest existing parent: the service
    creates the missing levels at start.
    """
    base = _nearest_existing(directory)
    if not base.is_dir():
        return (f"{base} is not a directory, so {directory} cannot be created. Fix: choose a "
                "path under a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".lineguard-check-", dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return (f"cannot write in {base} ({exc.strerror}). Fix: make it writable for the service "
                "user, or choose another path")
    free = shutil.disk_usage(base).free
    if free < need_bytes:
        return (f"only {free / 2**20:.0f} MiB free on the filesystem of {base}, "
                f"{need_bytes / 2**20:.0f} MiB needed. Fix: free space or choose another filesystem")
    return None


def _bundle_bytes(bundle: Bundle | None) -> int:
    if bundle is None:
        return 0
    return sum((bundle.root / rel).stat().st_size for rel in bundle.manifest.files)


def check_directories(cfg: LineConfig, out: Preflight, *, bundle: Bundle | None, min_free_bytes: int) -> None:
    """Decision log, changeover store / drop folder, engine caches: writable, with free space."""
    dirs: list[tuple[Loc, Path, int]] = []
    if cfg.service.decision_log_path is not None:
        dirs.append((("service", "decision_log_path"), cfg.service.decision_log_path.parent, min_free_bytes))
    co = cfg.changeover
    if co is not None:
        # an install copies one bundle into the store: room for one more of this size
        dirs.append((("changeover", "store_dir"), co.store_dir, min_free_bytes + _bundle_bytes(bundle)))
        if co.drop_dir is not None:  # outcome markers (.done / .failed) are written there
            dirs.append((("changeover", "drop_dir"), co.drop_dir, 0))
    eng = cfg.engine
    if eng.backend == "tensorrt":
        dirs.append((("engine", "cache_dir"), eng.cache_dir, min_free_bytes))
    else:
        for i, prov in enumerate(eng.providers):
            cache = getattr(prov, "trt_engine_cache_path", None)
            if cache is not None and getattr(prov, "trt_engine_cache_enable", False):
                dirs.append((("engine", "providers", i, "trt_engine_cache_path"), cache, min_free_bytes))
    for loc, directory, need in dirs:
        why = writable_problem(directory, need_bytes=need)
        if why is not None:
            out.refuse(loc, why)


# ------------------------------------------------------------------------------------ endpoints
def zmq_endpoint_problem(endpoint: str) -> str | None:
    """Why a ZeroMQ connect endpoint is malformed (``tcp://host:port`` or ``ipc://path``), or None."""
    if endpoint.startswith("ipc://"):
        return None if len(endpoint) > len("ipc://") else "ipc:// needs a socket path"
    m = _TCP.match(endpoint)
    if m is None:
        return (f"{endpoint!r} is not tcp://HOST:PORT or ipc://PATH "
                "(e.g. tcp://10.0.0.5:5560)")
    port = m.group("port")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        return f"port {port!r} of {endpoint!r} is not a TCP port (1-65535)"
    host = m.group("host").strip("[]")
    if host == "*":
        return f"{endpoint!r}: '*' is for binding; the publisher connects to the sink's address"
    return None


def _same_interface(a: str, b: str) -> bool:
    wild = {"0.0.0.0", "::", ""}
    if a in wild or b in wild:
        return True
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return a == b


def endpoint_problems(cfg: LineConfig) -> list[tuple[Loc, str]]:
    """Malformed endpoints and listening ports that two services of this config would both bind."""
    problems: list[tuple[Loc, str]] = []
    pub = cfg.publisher
    if pub.enabled:
        why = zmq_endpoint_problem(pub.endpoint)
        if why is not None:
            problems.append((("publisher", "endpoint"), f"{why}. Fix: set publisher.endpoint to the sink's "
                                                        "tcp://HOST:PORT (lineguard sink --bind shows it)"))
    listeners: list[tuple[Loc, str, int]] = []
    if cfg.metrics.enabled and cfg.metrics.port:
        listeners.append((("metrics", "port"), cfg.metrics.host, cfg.metrics.port))
    co = cfg.changeover
    if co is not None and co.control is not None and co.control.unix_socket is None and co.control.port:
        listeners.append((("changeover", "control", "port"), co.control.host, co.control.port))
    for i, (loc_a, host_a, port_a) in enumerate(listeners):
        for loc_b, host_b, port_b in listeners[i + 1:]:
            if port_a == port_b and _same_interface(host_a, host_b):
                problems.append((loc_b, f"port {port_b} is also {'.'.join(map(str, loc_a))}: the second bind "
                                        "would fail at start. Fix: give each listener its own port"))
    return problems

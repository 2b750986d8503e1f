"""Transports other than plain TCP, against the simulator on this machine:

* Modbus/TCP Security: TLS with certificates made here (cryptography); the PLC certificate
  must verify against the configured CA and name the host, else nothing is written.
* Modbus RTU: over two pseudo-terminal pairs bridged by a thread (what ``socat`` would do).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import select
import ssl
import threading
import tty
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client import CollectorRegistry

from lineguard.errors import ConfigError
from lineguard.plc import PlcConfig, PlcLink
from lineguard.plc.config import RtuTransportConfig, TlsTransportConfig
from lineguard.plc.sim import PlcSimulator
from lineguard.plc.testing import audit, feed, sample, settle

pytestmark = pytest.mark.timeout(60)


def _cert(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    sans: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, issuer_key = issuer or (subject, key)
    now = dt.datetime.now(dt.timezone.utc)
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None = None) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        path.with_suffix(".key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    """CA, PLC server cert for localhost/127.0.0.1, LineGuard client cert, and a foreign CA."""
    ca_key, other_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _cert("line-ca", ca_key, None, ca=True)
    _write(tmp_path / "ca.pem", ca, ca_key)
    _write(tmp_path / "other-ca.pem", _cert("other-ca", other_key, None, ca=True))
    srv_key, cli_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    _write(tmp_path / "plc.pem", _cert("plc", srv_key, (ca.subject, ca_key), sans=sans), srv_key)
    _write(tmp_path / "client.pem", _cert("lineguard", cli_key, (ca.subject, ca_key)), cli_key)
    return tmp_path


def _server_ctx(pki: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki / "ca.pem"))
    ctx.load_cert_chain(str(pki / "plc.pem"), str(pki / "plc.key"))
    ctx.verify_mode = ssl.CERT_REQUIRED  # Modbus/TCP Security: the PLC checks the client too
    return ctx


def _tls_cfg(pki: Path, port: int, *, ca: str = "ca.pem", host: str = "localhost") -> PlcConfig:
    t = TlsTransportConfig(
        host=host, port=port, ca_file=pki / ca, cert_file=pki / "client.pem", key_file=pki / "client.key"
    )
    return PlcConfig(transport=t, heartbeat_period_ms=50, timeout_ms=500, reconnect_backoff_max_ms=100)


def test_tls_with_verified_certificates(pki: Path) -> None:
    with PlcSimulator(tls=_server_ctx(pki)) as sim:
        reg = CollectorRegistry()
        link = PlcLink.from_config(_tls_cfg(pki, sim.port), metrics_registry=reg)
        link.start()
        try:
            # parts flow once the link is up, as in the service: the TLS handshake alone took 30+ ms on a
            # loaded 2-core CI box, and 8 parts fed before it overflowed the PLC's result buffer by design
            assert sim.wait_until(lambda: link.health().connected, 5.0)
            feed(link, range(1, 11), period_s=0.005)
            assert settle(link, 5.0)
        finally:
            link.stop()
        a = audit(sim, reg, range(1, 11))
    assert a.ok and a.written == 10, a


@pytest.mark.parametrize(("ca", "host"), [("other-ca.pem", "localhost"), ("ca.pem", "plc.example")])
def test_tls_refuses_unverified_plc(pki: Path, ca: str, host: str) -> None:
    """Wrong CA, or a certificate that does not name the host: no connection, nothing written."""
    with PlcSimulator(tls=_server_ctx(pki), host="127.0.0.1") as sim:
        reg = CollectorRegistry()
        cfg = _tls_cfg(pki, sim.port, ca=ca, host=host)
        if host != "localhost":  # resolve the foreign name to loopback while checking that name
            cfg = cfg.model_copy(
                update={"transport": cfg.transport.model_copy(update={"host": "127.0.0.1", "server_hostname": host})}
            )
        link = PlcLink.from_config(cfg, metrics_registry=reg)
        link.start()
        try:
            feed(link, range(1, 4))
            assert sim.wait_until(lambda: sample(reg, "lineguard_plc_errors_total", kind="connection") >= 2, 5.0)
            assert not link.health().connected
        finally:
            link.stop()
        assert sim.results() == [] and sim.heartbeats() == []


def test_tls_missing_files_is_a_config_error(tmp_path: Path) -> None:
    t = TlsTransportConfig(
        host="localhost", ca_file=tmp_path / "nope.pem", cert_file=tmp_path / "c.pem", key_file=tmp_path / "c.key"
    )
    with pytest.raises(ConfigError, match="cannot load CA"):
        PlcLink.from_config(PlcConfig(transport=t))


@pytest.fixture
def pty_pair() -> Iterator[tuple[str, str]]:
    """Two serial device paths wired back to back (null modem) through a copying thread."""
    m1, s1 = os.openpty()
    m2, s2 = os.openpty()
    for fd in (s1, s2):
        tty.setraw(fd)
    stop = threading.Event()

    def bridge() -> None:
        while not stop.is_set():
            ready, _, _ = select.select([m1, m2], [], [], 0.05)
            for fd in ready:
                try:
                    data = os.read(fd, 4096)
                except OSError:
                    return
                os.write(m2 if fd == m1 else m1, data)

    th = threading.Thread(target=bridge, daemon=True)
    th.start()
    yield os.ttyname(s1), os.ttyname(s2)
    stop.set()
    th.join(1)
    for fd in (m1, s1, m2, s2):
        os.close(fd)


def test_rtu_over_pseudo_terminals(pty_pair: tuple[str, str]) -> None:
    client_dev, server_dev = pty_pair
    # parity N: a pseudo-terminal refuses parity settings (EINVAL); a real RS-485 port takes E
    with PlcSimulator(serial_port=server_dev, serial_parity="N") as sim:
        reg = CollectorRegistry()
        cfg = PlcConfig(
            transport=RtuTransportConfig(device=client_dev, parity="N"),
            heartbeat_period_ms=100,
            timeout_ms=300,
            poll_period_ms=20,
            deadline_ms=1000,
        )
        link = PlcLink.from_config(cfg, metrics_registry=reg)
        link.start()
        try:
            assert sim.wait_until(lambda: link.health().connected, 5.0)
            feed(link, range(1, 11), period_s=0.01)
            assert settle(link, 10.0)
        finally:
            link.stop()
        a = audit(sim, reg, range(1, 11))
    assert a.ok and a.written == 10, a

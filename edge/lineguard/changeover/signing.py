"""Ed25519 signatures over a bundle's ``manifest.json`` bytes (detached, in ``manifest.sig``).

Where it sits: before :func:`lineguard.bundle.load_bundle` in every install and swap. The manifest
lists every other file's sha256, so one signature over its exact bytes covers the whole bundle:
a changed byte anywhere either breaks a hash (``load_bundle``) or breaks the signature (here).

``manifest.sig`` is JSON: ``{"algorithm": "ed25519", "key_id": "<16 hex>", "signature": "<b64>"}``;
``key_id`` is the first 16 hex digits of sha256(raw public key) and only picks the key to try.

Must never: accept a signature from a key that is not in the config's ``trusted_keys``, or treat
an unsigned bundle as signed. Unsigned bundles pass only with ``allow_unsigned`` (development),
and that is logged every time.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from lineguard.bundle import MANIFEST, SIGNATURE
from lineguard.changeover.config import decode_public_key
from lineguard.errors import BundleError

log = logging.getLogger(__name__)
ALGORITHM = "ed25519"


class SignatureError(BundleError):
    """A bundle's signature is missing, malformed, from an untrusted key, or does not match."""


def key_id(public_raw: bytes) -> str:
    return hashlib.sha256(public_raw).hexdigest()[:16]


def public_raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_text(key: Ed25519PrivateKey) -> str:
    """The base64 line to paste into ``changeover.trusted_keys``."""
    return base64.b64encode(public_raw(key.public_key())).decode("ascii")


def generate_key(path: Path) -> Ed25519PrivateKey:
    """Write a new private key as unencrypted PKCS#8 PEM, readable by its owner only (0600)."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL: never overwrite a signing key by accident (bundles signed with it would become unverifiable)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return key


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise SignatureError(f"cannot read signing key {path}: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path} is not an Ed25519 private key")
    return key


def sign_bytes(key: Ed25519PrivateKey, data: bytes) -> dict[str, str]:
    return {
        "algorithm": ALGORITHM,
        "key_id": key_id(public_raw(key.public_key())),
        "signature": base64.b64encode(key.sign(data)).decode("ascii"),
    }


def sign_bundle(root: Path, key: Ed25519PrivateKey) -> Path:
    """Sign ``root/manifest.json`` as it is on disk; writes ``root/manifest.sig`` atomically."""
    manifest = root / MANIFEST
    try:
        data = manifest.read_bytes()
    except OSError as exc:
        raise SignatureError(f"cannot read {manifest}: {exc}") from exc
    out = root / SIGNATURE
    tmp = out.with_name(f".{SIGNATURE}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(sign_bytes(key, data), indent=2) + "\n", encoding="utf-8")
    with tmp.open("rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, out)
    return out


@dataclass(frozen=True, slots=True)
class SignatureCheck:
    """Outcome of a successful check: which key signed, and the exact manifest bytes it covered."""

    signed: bool
    key_id: str
    manifest_bytes: bytes


class SignatureVerifier:
    """Trusted public keys from the config; :meth:`verify` checks one bundle directory."""

    def __init__(self, *, trusted: Iterable[bytes], allow_unsigned: bool) -> None:
        self._keys = {key_id(raw): Ed25519PublicKey.from_public_bytes(raw) for raw in trusted}
        self.allow_unsigned = allow_unsigned

    @classmethod
    def from_texts(cls, keys: Iterable[str], *, allow_unsigned: bool) -> SignatureVerifier:
        return cls(trusted=[decode_public_key(k) for k in keys], allow_unsigned=allow_unsigned)

    @property
    def key_ids(self) -> list[str]:
        return sorted(self._keys)

    def verify(self, root: Path) -> SignatureCheck:
        """Check ``manifest.sig`` against ``manifest.json``; raises :class:`SignatureError` when refused."""
        try:
            data = (root / MANIFEST).read_bytes()
        except OSError as exc:
            raise SignatureError(f"bundle {root}: cannot read {MANIFEST}: {exc}") from exc
        sig_path = root / SIGNATURE
        if not sig_path.is_file():
            if self.allow_unsigned:
                log.warning("bundle %s is UNSIGNED and accepted only because allow_unsigned is set", root)
                return SignatureCheck(signed=False, key_id="", manifest_bytes=data)
            raise SignatureError(
                f"bundle {root} is not signed ({SIGNATURE} missing); sign it with lineguard sign-bundle"
            )
        try:
            return self._check(root, data, sig_path)
        except SignatureError:
            if self.allow_unsigned:
                log.warning("bundle %s has a BAD signature, accepted only because allow_unsigned is set", root)
                return SignatureCheck(signed=False, key_id="", manifest_bytes=data)
            raise

    def _check(self, root: Path, data: bytes, sig_path: Path) -> SignatureCheck:
        try:
            doc = json.loads(sig_path.read_text(encoding="utf-8"))
            algorithm, kid, sig = doc["algorithm"], doc["key_id"], base64.b64decode(doc["signature"], validate=True)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SignatureError(f"bundle {root}: unreadable {SIGNATURE}: {exc}") from exc
        if algorithm != ALGORITHM:
            raise SignatureError(f"bundle {root}: signature algorithm {algorithm!r} is not {ALGORITHM}")
        key = self._keys.get(str(kid))
        if key is None:
            raise SignatureError(
                f"bundle {root} is signed by key {kid}, which is not in trusted_keys "
                f"({', '.join(self.key_ids) or 'none'})"
            )
        try:
            key.verify(sig, data)
        except InvalidSignature as exc:
            raise SignatureError(
                f"bundle {root}: signature does not match {MANIFEST} (changed after signing?)"
            ) from exc
        return SignatureCheck(signed=True, key_id=str(kid), manifest_bytes=data)

"""Ed25519 signatures over a bundle's ``manifest.json`` bytes (detached, in ``manifest.sig``).

Where it sits: :func:`verify_bundle` is the one check every entry point runs before a bundle may
judge a part: ``lineguard run`` at start (``InspectionService.from_config``), ``prepare_bundle``
(reload), swaps (cold and preloaded), rollback, shadow, install, ``check-config`` and
``check-bundle --config``. The manifest lists every other file's sha256, so one signature over its
exact bytes covers the whole bundle: a changed byte anywhere either breaks a hash (``load_bundle``)
or breaks the signature (here).

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
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from lineguard.bundle import MANIFEST, SIGNATURE, Bundle, Manifest, load_bundle
from lineguard.changeover.config import decode_public_key
from lineguard.errors import BundleError

if TYPE_CHECKING:
    from lineguard.config import LineConfig

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
    """Outcome of a successful check: which key signed, and the exact manifest bytes it covered.

    ``signed`` is False only for a bundle accepted under ``allow_unsigned``; ``problem`` then says
    why it would have been refused (missing, untrusted key, changed after signing).
    """

    signed: bool
    key_id: str
    manifest_bytes: bytes
    fingerprint: str = ""  # sha256 of the raw public key, hex (the key's full identity)
    key_field: str = ""  # where the key is configured, e.g. "changeover.trusted_keys[0]"
    problem: str = ""

    def describe(self) -> str:
        """One line for the operator: who signed, or why the bundle is accepted anyway."""
        if self.signed:
            return f"signed by key {self.key_id} ({self.key_field}, sha256 fingerprint {self.fingerprint})"
        return f"NOT verified ({self.problem}), accepted only because allow_unsigned is set"


class SignatureVerifier:
    """Trusted public keys from the config; :meth:`verify` checks one bundle directory.

    ``keys_field`` names the config field the keys come from, so every refusal says where to fix it.
    """

    def __init__(self, *, trusted: Iterable[bytes], allow_unsigned: bool,
                 keys_field: str = "changeover.trusted_keys") -> None:
        raws = list(trusted)
        self._keys = {key_id(raw): Ed25519PublicKey.from_public_bytes(raw) for raw in raws}
        self._where = {key_id(raw): (f"{keys_field}[{i}]", hashlib.sha256(raw).hexdigest())
                       for i, raw in enumerate(raws)}
        self.allow_unsigned = allow_unsigned
        self.keys_field = keys_field

    @classmethod
    def from_texts(cls, keys: Iterable[str], *, allow_unsigned: bool,
                   keys_field: str = "changeover.trusted_keys") -> SignatureVerifier:
        return cls(trusted=[decode_public_key(k) for k in keys], allow_unsigned=allow_unsigned,
                   keys_field=keys_field)

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
        try:
            if not sig_path.is_file():
                raise SignatureError(
                    f"bundle {root} is not signed ({SIGNATURE} missing): sign it with lineguard sign-bundle "
                    f"using a key listed in {self.keys_field}"
                )
            return self._check(root, data, sig_path)
        except SignatureError as exc:
            if not self.allow_unsigned:
                raise
            # development only: accepted, but never quietly (every start, swap and install says so)
            log.warning("%s -- ACCEPTED only because allow_unsigned is set", exc)
            return SignatureCheck(signed=False, key_id="", manifest_bytes=data, problem=str(exc))

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
                f"bundle {root} is signed by key {kid}, which is not in trusted_keys (config field "
                f"{self.keys_field}: {', '.join(self.key_ids) or 'none'}): add that public key there if you trust it, "
                "or re-sign the bundle with a trusted key"
            )
        field, fingerprint = self._where[str(kid)]
        try:
            key.verify(sig, data)
        except InvalidSignature as exc:
            raise SignatureError(
                f"bundle {root}: {MANIFEST} was changed after it was signed by key {kid} ({field}): the "
                "signature does not match; restore the signed bundle, or review the change and sign it "
                "again with lineguard sign-bundle"
            ) from exc
        return SignatureCheck(signed=True, key_id=str(kid), manifest_bytes=data, fingerprint=fingerprint,
                              key_field=field)

    def warn_if_permissive(self, what: str) -> None:
        """Say loudly, at every start, that this line would run an unsigned or edited bundle."""
        if self.allow_unsigned:
            log.warning("%s: allow_unsigned is set: unsigned, untrusted or edited bundles are ACCEPTED "
                        "(development only; set allow_unsigned: false and list keys in %s on a line)",
                        what, self.keys_field)


def line_verifier(cfg: LineConfig) -> SignatureVerifier:
    """The verifier of a line's one signature policy (``LineConfig.signature_policy``)."""
    keys, allow_unsigned, field = cfg.signature_policy()
    return SignatureVerifier.from_texts(keys, allow_unsigned=allow_unsigned, keys_field=field)


def manifest_of(raw: bytes) -> Manifest:
    """The manifest a signature covered, parsed from exactly those bytes."""
    try:
        return Manifest.model_validate(json.loads(raw))
    except ValueError as exc:
        raise BundleError(f"signed manifest is not valid: {exc}") from exc


@dataclass(frozen=True, slots=True)
class VerifiedBundle:
    """A bundle whose signature (per the line's policy) and every file hash were checked together."""

    bundle: Bundle
    signature: SignatureCheck


def verify_bundle(root: str | Path, verifier: SignatureVerifier) -> VerifiedBundle:
    """THE check before a bundle becomes active anywhere: signature, then every hash.

    The manifest that was hash-checked must be the one that was signed (a manifest swapped between
    the two reads is refused). Raises :class:`SignatureError` or :class:`BundleError`.
    """
    root = Path(root)
    if not root.is_dir():
        raise BundleError(f"bundle {root} does not exist or is not a directory")
    check = verifier.verify(root)
    bundle = load_bundle(root)
    if manifest_of(check.manifest_bytes) != bundle.manifest:
        raise BundleError(f"bundle {root}: {MANIFEST} changed while it was being verified")
    return VerifiedBundle(bundle=bundle, signature=check)

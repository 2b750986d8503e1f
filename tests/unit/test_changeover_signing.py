"""Ed25519 bundle signatures: what is accepted, what is refused, and why."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lineguard.bundle import MANIFEST, SIGNATURE
from lineguard.changeover.signing import (
    SignatureError,
    SignatureVerifier,
    generate_key,
    key_id,
    load_private_key,
    public_key_text,
    public_raw,
    sign_bundle,
)


def _bundle(tmp: Path) -> Path:
    root = tmp / "b"
    root.mkdir()
    (root / MANIFEST).write_text('{"bundle_id": "x", "files": {"a.onnx": "00"}}\n')
    return root


def _verifier(*keys: Ed25519PrivateKey, allow_unsigned: bool = False) -> SignatureVerifier:
    return SignatureVerifier.from_texts([public_key_text(k) for k in keys], allow_unsigned=allow_unsigned)


def test_signed_manifest_verifies_and_names_the_key(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    root = _bundle(tmp_path)
    sign_bundle(root, key)
    check = _verifier(Ed25519PrivateKey.generate(), key).verify(root)
    assert check.signed and check.manifest_bytes == (root / MANIFEST).read_bytes()
    assert check.key_id in _verifier(key).key_ids


def test_one_changed_manifest_byte_breaks_the_signature(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    root = _bundle(tmp_path)
    sign_bundle(root, key)
    data = bytearray((root / MANIFEST).read_bytes())
    data[data.index(b"00")] = ord("1")  # a file hash changed: the bundle now vouches for other bytes
    (root / MANIFEST).write_bytes(bytes(data))
    with pytest.raises(SignatureError, match="does not match"):
        _verifier(key).verify(root)


def test_untrusted_key_and_unsigned_bundle_are_refused(tmp_path: Path) -> None:
    root = _bundle(tmp_path)
    trusted = Ed25519PrivateKey.generate()
    with pytest.raises(SignatureError, match="not signed"):
        _verifier(trusted).verify(root)
    sign_bundle(root, Ed25519PrivateKey.generate())
    with pytest.raises(SignatureError, match="not in trusted_keys"):
        _verifier(trusted).verify(root)


def test_allow_unsigned_accepts_but_reports_unsigned(tmp_path: Path) -> None:
    root = _bundle(tmp_path)
    check = _verifier(allow_unsigned=True).verify(root)
    assert not check.signed and check.key_id == ""
    (root / SIGNATURE).write_text("garbage")
    assert not _verifier(allow_unsigned=True).verify(root).signed


def test_malformed_signature_file_is_a_signature_error(tmp_path: Path) -> None:
    root = _bundle(tmp_path)
    (root / SIGNATURE).write_text('{"algorithm": "rsa", "key_id": "x", "signature": "AAAA"}')
    with pytest.raises(SignatureError, match="algorithm"):
        _verifier(Ed25519PrivateKey.generate()).verify(root)
    (root / SIGNATURE).write_text("not json")
    with pytest.raises(SignatureError, match="unreadable"):
        _verifier(Ed25519PrivateKey.generate()).verify(root)


def test_generated_key_is_private_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "release.pem"
    key = generate_key(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert public_key_text(load_private_key(path)) == public_key_text(key)
    with pytest.raises(FileExistsError):
        generate_key(path)


def test_check_names_the_key_entry_and_fingerprint(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    root = _bundle(tmp_path)
    sign_bundle(root, key)
    verifier = SignatureVerifier.from_texts([public_key_text(Ed25519PrivateKey.generate()), public_key_text(key)],
                                            allow_unsigned=False, keys_field="bundle.trusted_keys")
    check = verifier.verify(root)
    raw = public_raw(key.public_key())
    assert check.describe() == (f"signed by key {key_id(raw)} (bundle.trusted_keys[1], sha256 fingerprint "
                                f"{hashlib.sha256(raw).hexdigest()})")


def test_refusals_name_the_config_field_and_the_fix(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    root = _bundle(tmp_path)
    verifier = _verifier(key)
    with pytest.raises(SignatureError, match=r"sign it with lineguard sign-bundle using a key listed in "
                                             r"changeover\.trusted_keys"):
        verifier.verify(root)
    sign_bundle(root, key)
    (root / MANIFEST).write_text((root / MANIFEST).read_text().replace('"x"', '"y"'))
    kid = key_id(public_raw(key.public_key()))
    with pytest.raises(SignatureError, match=rf"manifest\.json was changed after it was signed by key {kid} "
                                             r"\(changeover\.trusted_keys\[0\]\)"):
        verifier.verify(root)


def test_permissive_policy_warns_at_every_start(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    _verifier(Ed25519PrivateKey.generate()).warn_if_permissive("starting")
    assert caplog.records == []
    _verifier(allow_unsigned=True).warn_if_permissive("starting")
    [rec] = caplog.records
    assert rec.levelno == logging.WARNING and rec.getMessage().startswith("starting: allow_unsigned is set")

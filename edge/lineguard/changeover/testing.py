"""Helpers for changeover tests and benchmarks: real signed bundles with chosen ids and recipes.

Not part of the frame path, never imported by the service. Bundles come from
:func:`lineguard.engines.synthetic.build_synthetic_bundle` (real ONNX graphs; needs the ``onnx``
package), with the manifest rewritten where a test needs another recipe or a broken bundle;
hashes are recomputed and the result re-signed, so each fault is exactly the one intended.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lineguard.bundle import MANIFEST, sha256_file
from lineguard.changeover.signing import sign_bundle
from lineguard.engines.synthetic import build_synthetic_bundle


def rewrite_manifest(root: Path, change: Callable[[dict[str, Any]], None], *, rehash: bool = True) -> None:
    """Apply ``change`` to manifest.json (and refresh every file hash when ``rehash``)."""
    path = root / MANIFEST
    doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    change(doc)
    if rehash:
        doc["files"] = {rel: sha256_file(root / rel) for rel in doc["files"]}
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def make_bundle(
    out: Path, *, bundle_id: str, recipe: int, key: Ed25519PrivateKey | None, product: str = "synthetic",
    lower: float = 0.1, upper: float = 0.25, input_size: int = 64,
) -> Path:
    """A synthetic bundle for ``recipe``, signed with ``key`` (unsigned when None)."""
    build_synthetic_bundle(out, bundle_id=bundle_id, lower=lower, upper=upper, input_size=input_size)

    def set_identity(doc: dict[str, Any]) -> None:
        doc["recipe"] = recipe
        doc["product"] = product

    rewrite_manifest(out, set_identity, rehash=False)
    if key is not None:
        sign_bundle(out, key)
    return out


def break_golden(root: Path, key: Ed25519PrivateKey) -> None:
    """Change one golden expected score and re-sign: signature and hashes pass, the self-test fails."""

    def shift(doc: dict[str, Any]) -> None:
        doc["golden"][0]["expected_score"] = float(doc["golden"][0]["expected_score"]) + 0.05

    rewrite_manifest(root, shift)
    sign_bundle(root, key)


def break_engine(root: Path, key: Ed25519PrivateKey) -> None:
    """Replace the anomaly ONNX file with garbage, re-hash and re-sign: only the engine build fails."""
    (root / "anomaly.onnx").write_bytes(b"this is not an ONNX model" * 10)
    rewrite_manifest(root, lambda doc: None)
    sign_bundle(root, key)


def edit_thresholds_after_signing(root: Path, *, lower: float = 5.0, upper: float = 9.0) -> None:
    """The manipulation signatures exist for: thresholds raised so defective parts pass, and the golden
    expectations edited to match, hashes left true. Only the signature over the manifest catches it."""

    def loosen(doc: dict[str, Any]) -> None:
        doc["thresholds"]["lower"], doc["thresholds"]["upper"] = lower, upper
        for g in doc["golden"]:
            g["expected_verdict"] = "accept" if g["expected_score"] < lower else g["expected_verdict"]

    rewrite_manifest(root, loosen, rehash=False)


def flip_byte(path: Path, offset: int = -1) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))

"""Bundle store: atomic install of verified copies, versions, recipe map, safe removal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lineguard.bundle import Bundle, load_bundle
from lineguard.changeover.signing import SignatureError, SignatureVerifier, public_key_text
from lineguard.changeover.store import BundleStore
from lineguard.changeover.testing import flip_byte, make_bundle
from lineguard.errors import BundleError

KEY = Ed25519PrivateKey.generate()
VERIFIER = SignatureVerifier.from_texts([public_key_text(KEY)], allow_unsigned=False)


@pytest.fixture()
def store(tmp_path: Path) -> BundleStore:
    return BundleStore.open(tmp_path / "store")


def _src(tmp: Path, bid: str, recipe: int, key: Ed25519PrivateKey | None = KEY) -> Path:
    return make_bundle(tmp / "src" / bid, bundle_id=bid, recipe=recipe, key=key)


def test_install_keeps_a_verified_signed_copy_and_maps_the_recipe(store: BundleStore, tmp_path: Path) -> None:
    seen: list[Path] = []

    def prepare(b: Bundle) -> dict[str, Any]:
        seen.append(b.root)
        return {"provider": "test", "golden": "passed"}

    entry = store.install(_src(tmp_path, "p-1", 7), verifier=VERIFIER, prepare=prepare)
    assert entry.path == store.bundles_dir / "p-1" and load_bundle(entry.path).bundle_id == "p-1"
    assert (entry.path / "manifest.sig").is_file() and entry.signed_by in VERIFIER.key_ids
    assert seen and seen[0].parent == store.staging_dir, "engines are prepared on the copy, before it is visible"
    assert store.recipes() == {7: "p-1"} and store.get("p-1").prepared["golden"] == "passed"
    assert list(store.staging_dir.iterdir()) == []


def test_versions_coexist_and_activate_selects_one(store: BundleStore, tmp_path: Path) -> None:
    store.install(_src(tmp_path, "p-1", 7), verifier=VERIFIER)
    store.install(_src(tmp_path, "p-2", 7), verifier=VERIFIER)
    assert [e.bundle_id for e in store.list()] == ["p-1", "p-2"] and store.for_recipe(7).bundle_id == "p-2"
    store.activate("p-1")
    assert store.for_recipe(7).bundle_id == "p-1"


def test_failing_prepare_installs_nothing(store: BundleStore, tmp_path: Path) -> None:
    def prepare(b: Bundle) -> dict[str, Any]:
        raise BundleError("golden self-test failed")

    with pytest.raises(BundleError, match="golden"):
        store.install(_src(tmp_path, "p-1", 7), verifier=VERIFIER, prepare=prepare)
    assert store.list() == [] and store.recipes() == {} and list(store.staging_dir.iterdir()) == []
    assert not (store.bundles_dir / "p-1").exists()


def test_unsigned_or_changed_bundles_are_refused(store: BundleStore, tmp_path: Path) -> None:
    with pytest.raises(SignatureError):
        store.install(_src(tmp_path, "u-1", 1, key=None), verifier=VERIFIER)
    src = _src(tmp_path, "c-1", 1)
    flip_byte(src / "anomaly.onnx")
    with pytest.raises(BundleError, match="sha256 mismatch"):
        store.install(src, verifier=VERIFIER)
    assert store.list() == []


def test_same_id_with_other_content_is_refused_but_identical_reinstall_is_fine(
    store: BundleStore, tmp_path: Path
) -> None:
    store.install(_src(tmp_path, "p-1", 7), verifier=VERIFIER)
    store.install(tmp_path / "src" / "p-1", verifier=VERIFIER)  # idempotent
    other = make_bundle(tmp_path / "other" / "p-1", bundle_id="p-1", recipe=8, key=KEY)
    with pytest.raises(BundleError, match="different content"):
        store.install(other, verifier=VERIFIER)


def test_remove_protects_the_active_and_mapped_versions(store: BundleStore, tmp_path: Path) -> None:
    store.install(_src(tmp_path, "p-1", 7), verifier=VERIFIER)
    store.install(_src(tmp_path, "p-2", 7), verifier=VERIFIER)
    store.mark_active("p-2")
    with pytest.raises(BundleError, match="the line runs"):
        store.remove("p-2")
    store.activate("p-1")
    with pytest.raises(BundleError, match="serves recipe"):
        store.remove("p-1")
    store.remove("p-1", force=True)
    assert [e.bundle_id for e in store.list()] == ["p-2"] and store.recipes() == {}
    assert not (store.bundles_dir / "p-1").exists()


def test_reopen_cleans_interrupted_installs(store: BundleStore, tmp_path: Path) -> None:
    half = store.staging_dir / "p-9.abc"
    half.mkdir()
    (half / "anomaly.onnx").write_bytes(b"half a file")
    again = BundleStore.open(store.root)
    assert list(again.staging_dir.iterdir()) == [] and again.list() == []

"""Bundle store on the edge box: installed bundle versions, the recipe map, install records.

Where it sits: between a bundle arriving (``lineguard install-bundle``, a file drop) and the
changeover controller, which asks it "which bundle serves recipe 7?" and marks what is active.

Layout of ``store_dir``::

    bundles/<bundle_id>/    one immutable directory per installed version (manifest.sig included)
    index.json              recipe -> bundle id, active bundle id, install records (atomic rewrite)
    .staging/               half-copied bundles; removed at open, never read
    .lock                   flock held during every read-modify-write of index.json

An install verifies the signature and every hash of the source, copies it into ``.staging``,
fsyncs, verifies the copy again, prepares the engines (build, warm up, golden self-test: for
TensorRT this fills the plan cache so a changeover does not build), and only then renames it into
``bundles/`` and records it. Must never: expose a half-copied or unverified bundle, let two
processes interleave index updates, or remove the bundle the line runs.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lineguard.bundle import MANIFEST, SIGNATURE, Bundle, Manifest
from lineguard.changeover.signing import SignatureVerifier, verify_bundle
from lineguard.errors import BundleError
from lineguard.fsutil import fsync_path, fsync_tree

log = logging.getLogger(__name__)
INDEX = "index.json"
PrepareHook = Callable[[Bundle], dict[str, Any]]


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredBundle:
    """One installed bundle version as the index records it."""

    bundle_id: str
    product: str
    recipe: int
    path: Path
    installed_utc: str
    signed_by: str  # key id, "" when accepted unsigned (development)
    prepared: dict[str, Any] = field(default_factory=dict)  # provider, prepare_ms, golden: "passed"

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


class BundleStore:
    """The store under one directory. Open with :meth:`open`; safe across processes (flock)."""

    def __init__(self, *, root: Path) -> None:
        self.root = root
        self.bundles_dir = root / "bundles"
        self.staging_dir = root / ".staging"

    @classmethod
    def open(cls, root: Path) -> BundleStore:
        """Create the layout if needed and remove leftovers of interrupted installs."""
        store = cls(root=root)
        try:
            store.bundles_dir.mkdir(parents=True, exist_ok=True)
            store.staging_dir.mkdir(exist_ok=True)
            with store._locked():
                for leftover in store.staging_dir.iterdir():
                    shutil.rmtree(leftover, ignore_errors=True)
        except OSError as exc:
            raise BundleError(f"bundle store {root} cannot be opened: {exc}") from exc
        return store

    # ---------------------------------------------------------------- index
    @contextmanager
    def _locked(self) -> Iterator[None]:
        with (self.root / ".lock").open("a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def _read(self) -> dict[str, Any]:
        path = self.root / INDEX
        if not path.exists():
            return {"bundles": {}, "recipes": {}, "active": None}
        try:
            doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise BundleError(f"bundle store index {path} is unreadable: {exc}") from exc
        return doc

    def _write(self, doc: dict[str, Any]) -> None:
        path = self.root / INDEX
        fd, tmp = tempfile.mkstemp(prefix=".index.", dir=self.root)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_path(self.root)

    @staticmethod
    def _entry(raw: dict[str, Any]) -> StoredBundle:
        return StoredBundle(**{**raw, "path": Path(raw["path"])})

    # ---------------------------------------------------------------- queries
    def list(self) -> list[StoredBundle]:
        with self._locked():
            doc = self._read()
        return [self._entry(v) for _, v in sorted(doc["bundles"].items())]

    def get(self, bundle_id: str) -> StoredBundle:
        with self._locked():
            raw = self._read()["bundles"].get(bundle_id)
        if raw is None:
            raise BundleError(f"bundle {bundle_id!r} is not installed (lineguard bundles list)")
        return self._entry(raw)

    def recipes(self) -> dict[int, str]:
        with self._locked():
            return {int(k): v for k, v in self._read()["recipes"].items()}

    def for_recipe(self, recipe: int) -> StoredBundle:
        bundle_id = self.recipes().get(int(recipe))
        if bundle_id is None:
            raise BundleError(f"no bundle is mapped to recipe {recipe} (install one or lineguard bundles activate)")
        return self.get(bundle_id)

    def active(self) -> str | None:
        with self._locked():
            value = self._read().get("active")
        return str(value) if value else None

    # ---------------------------------------------------------------- changes
    def install(
        self, src: Path, *, verifier: SignatureVerifier, prepare: PrepareHook | None = None, map_recipe: bool = True
    ) -> StoredBundle:
        """Verify, copy atomically, verify the copy, prepare engines, record; returns the entry."""
        bundle = verify_bundle(src, verifier).bundle
        bid = bundle.bundle_id
        final = self.bundles_dir / bid
        if final.exists():
            return self._reinstall(src, final, bundle, map_recipe=map_recipe)
        staging = Path(tempfile.mkdtemp(prefix=f"{bid}.", dir=self.staging_dir))
        try:
            for rel in [*bundle.manifest.files, MANIFEST, SIGNATURE]:
                if (src / rel).is_file():
                    (staging / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src / rel, staging / rel)
            fsync_tree(staging)
            kept = verify_bundle(staging, verifier)  # the bytes we keep, not the ones we read
            copy, signed_by = kept.bundle, kept.signature.key_id
            prepared = prepare(copy) if prepare is not None else {}
            with self._locked():
                if final.exists():
                    raise BundleError(f"bundle {bid} was installed by someone else meanwhile")
                os.rename(staging, final)
                fsync_path(self.bundles_dir)
                entry = self._record(bundle.manifest, final, signed_by, prepared, map_recipe=map_recipe)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        log.info("installed bundle %s (product %s, recipe %d) into %s", bid, entry.product, entry.recipe, final)
        return entry

    def _reinstall(self, src: Path, final: Path, bundle: Bundle, *, map_recipe: bool) -> StoredBundle:
        """Same id again: fine when byte-identical (idempotent), refused otherwise (ids are versions)."""
        if (final / MANIFEST).read_bytes() != (src / MANIFEST).read_bytes():
            raise BundleError(
                f"bundle id {bundle.bundle_id} is installed with different content; give the new version a new id"
            )
        entry = self.get(bundle.bundle_id)
        if map_recipe:
            self.activate(bundle.bundle_id)
        return entry

    def _record(
        self, man: Manifest, path: Path, signed_by: str, prepared: dict[str, Any], *, map_recipe: bool
    ) -> StoredBundle:
        entry = StoredBundle(
            bundle_id=man.bundle_id, product=man.product, recipe=man.recipe, path=path,
            installed_utc=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            signed_by=signed_by, prepared=prepared,
        )
        doc = self._read()
        doc["bundles"][man.bundle_id] = entry.to_json()
        if map_recipe:
            doc["recipes"][str(man.recipe)] = man.bundle_id
        self._write(doc)
        return entry

    def activate(self, bundle_id: str) -> StoredBundle:
        """Map the bundle's recipe to this version (the next request for that recipe gets it)."""
        with self._locked():
            doc = self._read()
            raw = doc["bundles"].get(bundle_id)
            if raw is None:
                raise BundleError(f"bundle {bundle_id!r} is not installed")
            doc["recipes"][str(raw["recipe"])] = bundle_id
            self._write(doc)
        return self._entry(raw)

    def mark_active(self, bundle_id: str) -> None:
        """Record what the line runs now (the service calls this after a swap)."""
        with self._locked():
            doc = self._read()
            doc["active"] = bundle_id
            self._write(doc)

    def remove(self, bundle_id: str, *, force: bool = False) -> None:
        """Delete a version; refused for the active one, and for a recipe's current one unless ``force``."""
        with self._locked():
            doc = self._read()
            if bundle_id not in doc["bundles"]:
                raise BundleError(f"bundle {bundle_id!r} is not installed")
            if doc.get("active") == bundle_id:
                raise BundleError(f"bundle {bundle_id} is the one the line runs; swap to another first")
            mapped = [r for r, b in doc["recipes"].items() if b == bundle_id]
            if mapped and not force:
                raise BundleError(f"bundle {bundle_id} serves recipe {', '.join(mapped)}; use --force to unmap it")
            for r in mapped:
                del doc["recipes"][r]
            del doc["bundles"][bundle_id]
            self._write(doc)  # index first: a crash leaves an orphan folder, never a dangling entry
            trash = Path(tempfile.mkdtemp(prefix=f"{bundle_id}.removed.", dir=self.staging_dir))
            os.rename(self.bundles_dir / bundle_id, trash / bundle_id)
        shutil.rmtree(trash, ignore_errors=True)

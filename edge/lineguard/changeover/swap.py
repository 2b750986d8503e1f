"""The changeover controller: turns swap requests into a verified, self-tested bundle switch.

Where it sits: beside the inspection service (built by its composition root when ``changeover:``
is configured). Requests come from the PLC's recipe-request register (``tick()`` on the main
thread), the control endpoint (``submit``) and the drop folder; one worker thread handles them in
order: resolve (store) -> signature + hashes -> build, warm up, golden self-test (or take a bundle
prepared earlier and verify its signature and hashes on disk again) -> ``service.activate`` between
two parts -> watch for rollback (the rollback target is verified again too). A failed
request keeps the old bundle, and its reason is counted (``lineguard_changeover_swaps``), logged
and shown by ``GET /status``.

Must never: run on or block the inspection thread (``observe`` is O(1)), activate a bundle whose
signature, hashes or golden test failed, or close engines a frame may still be using.
"""

from __future__ import annotations

import logging
import queue
import shutil
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry

from lineguard.bundle import Bundle
from lineguard.changeover.config import ChangeoverConfig
from lineguard.changeover.control import ControlServer, read_token
from lineguard.changeover.metrics import ChangeoverMetrics
from lineguard.changeover.preload import PreparedCache
from lineguard.changeover.requests import SwapFailed, SwapRequest, SwapResult
from lineguard.changeover.shadow import RollbackWatch, ShadowRunner
from lineguard.changeover.signing import SignatureError, SignatureVerifier, verify_bundle
from lineguard.changeover.store import BundleStore, StoredBundle
from lineguard.contracts import Decision, Frame
from lineguard.errors import BundleError, EngineError, LineGuardError, SelfTestError
from lineguard.plc import NullPlcLink, PlcLink

if TYPE_CHECKING:
    from lineguard.config import LineConfig
    from lineguard.prepared import PreparedBundle

log = logging.getLogger(__name__)
REQUEST_QUEUE = 8  # pending swap requests; more is an operator or PLC gone wrong -> refused ("busy")


class SwapTarget(Protocol):
    """What the controller needs from the inspection service."""

    plc: PlcLink | NullPlcLink
    cfg: LineConfig

    @property
    def bundle(self) -> Bundle: ...
    def prepare_bundle(self, path: str | Path) -> PreparedBundle: ...
    def activate(self, prepared: PreparedBundle) -> PreparedBundle: ...


class ChangeoverController:
    """Owns the swap worker, preloaded bundles, shadow runner, rollback watch and control endpoint."""

    def __init__(
        self, *, cfg: ChangeoverConfig, service: SwapTarget, store: BundleStore, verifier: SignatureVerifier,
        metrics: ChangeoverMetrics, token: bytes | None,
    ) -> None:
        self.cfg = cfg
        self.service = service
        self.store = store
        self.verifier = verifier
        self.metrics = metrics
        self._requests: queue.Queue[SwapRequest] = queue.Queue(maxsize=REQUEST_QUEUE)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._worker, name="changeover", daemon=True)
        self._previous: PreparedBundle | None = None  # rollback target while a watch runs
        self._watch: RollbackWatch | None = None
        self._shadow: ShadowRunner | None = None
        self._shadow_lock = threading.Lock()
        self._cache = PreparedCache(capacity=cfg.preload_bundles, retire_after_s=cfg.retire_after_s,
                                    in_use=self._in_use)
        self._history: list[SwapResult] = []
        self._first_part: tuple[str, int] | None = None  # (bundle id, request t_ns) awaiting its first verdict
        self.first_part_ms: float | None = None  # request -> first verdict of the new bundle, last swap
        self._next_scan = 0.0
        self._next_plc = 0.0
        self.control = ControlServer.from_config(cfg.control, controller=self, token=token) if cfg.control else None

    @classmethod
    def from_config(
        cls, cfg: ChangeoverConfig, *, service: SwapTarget, registry: CollectorRegistry
    ) -> ChangeoverController:
        """Open the store, load trusted keys and the control token (file I/O happens here)."""
        token = read_token(cfg.control.token_file) if cfg.control is not None else None
        return cls(
            cfg=cfg, service=service, store=BundleStore.open(cfg.store_dir),
            verifier=SignatureVerifier.from_texts(cfg.trusted_keys, allow_unsigned=cfg.allow_unsigned),
            metrics=ChangeoverMetrics(registry), token=token,
        )

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Prepare the bundles mapped to recipes now (before the line runs), then start the worker."""
        self.store.mark_active(self.service.bundle.bundle_id)
        self._fill_preload()
        self._next_scan = time.monotonic() + self.cfg.drop_poll_ms / 1000
        self._thread.start()
        if self.control is not None:
            self.control.start()

    def stop(self) -> None:
        if self.control is not None:
            self.control.stop()
        self._stop.set()
        self._thread.join(timeout=30)
        self.stop_shadow()
        self._previous = None
        self._cache.close_all()

    def _in_use(self, p: PreparedBundle) -> bool:
        # bundle ids are versions: the active one is the prepared bundle with the active id
        return p.bundle.bundle_id == self.service.bundle.bundle_id or p is self._previous

    # ---------------------------------------------------------------- requests (any thread)
    def tick(self) -> None:
        """Follow the PLC's recipe-request register (supervision tick and, faster, the swap worker).

        The link reads the register every poll period and reports each change once, so calling
        this from two threads cannot start a swap twice; the worker's ``plc_poll_ms`` keeps the
        changeover from waiting up to a whole supervision tick (0.5 s).
        """
        if not self.cfg.follow_plc_recipe:
            return
        recipe = self.service.plc.poll_recipe_request()
        if recipe is not None:
            log.info("PLC requests recipe %d", recipe)
            self.submit(SwapRequest(source="plc", recipe=recipe))

    def submit(self, req: SwapRequest) -> SwapRequest:
        """Queue a request ("reject_newest" when full: answered at once with result busy)."""
        try:
            self._requests.put_nowait(req)
        except queue.Full:
            self._finish(req, SwapResult(ok=False, result="internal", source=req.source, requested=req.what,
                                         message=f"{REQUEST_QUEUE} swap requests already pending; try again"))
        return req

    def observe(self, d: Decision, frame: Frame) -> None:
        """Inspection thread, after every verdict: O(1) hand-offs only."""
        watch, shadow, first = self._watch, self._shadow, self._first_part
        if watch is not None:
            watch.observe(d)
        if shadow is not None:
            shadow.offer(d, frame)
        if first is not None and d.bundle_id == first[0] and not d.failsafe:
            self._first_part = None
            self.first_part_ms = (d.t_decided_ns - first[1]) / 1e6

    # ---------------------------------------------------------------- worker
    def _worker(self) -> None:
        while not self._stop.is_set():
            try:
                req: SwapRequest | None = self._requests.get(timeout=min(0.05, self.cfg.plc_poll_ms / 1000))
            except queue.Empty:
                req = None
            try:
                if req is not None:
                    self._finish(req, self._handle(req))
                if time.monotonic() >= self._next_plc:
                    self._next_plc = time.monotonic() + self.cfg.plc_poll_ms / 1000
                    self.tick()
                self._check_rollback()
                self._cache.close_due()
                if time.monotonic() >= self._next_scan:
                    self._next_scan = time.monotonic() + self.cfg.drop_poll_ms / 1000
                    self._scan_drop_dir()
                    self._fill_preload()
            except Exception:  # the worker must outlive one bad request; the line is not affected
                log.exception("changeover worker error")
        while not self._requests.empty():
            req = self._requests.get_nowait()
            self._finish(req, SwapResult(ok=False, result="internal", source=req.source, requested=req.what,
                                         message="service stopping"))

    def _finish(self, req: SwapRequest, res: SwapResult) -> None:
        req.result = res
        self._history = [*self._history[-19:], res]
        self.metrics.swaps_total.labels(source=res.source, result=res.result).inc()
        if res.ok and res.result == "ok":
            self.metrics.swap_seconds.labels(prepared=res.prepared).observe(res.swap_ms / 1000)
        (log.info if res.ok else log.error)("swap %s from %s: %s %s", req.what, res.source, res.result, res.message)
        req.done.set()

    def _handle(self, req: SwapRequest) -> SwapResult:
        src, what = req.source, req.what
        try:
            entry = self._resolve(req)
        except BundleError as exc:
            return SwapResult(ok=False, result="not_found", message=str(exc), source=src, requested=what)
        current = self.service.bundle.bundle_id
        if entry.bundle_id == current:
            return SwapResult(ok=True, result="already_active", bundle_id=current, previous_id=current,
                              source=src, requested=what)
        try:
            prepared, how = self._prepared_for(entry)
        except SwapFailed as exc:
            self._cache.failed[entry.bundle_id] = str(exc)
            return SwapResult(ok=False, result=exc.result, bundle_id=entry.bundle_id, previous_id=current,
                              message=str(exc), source=src, requested=what)
        self._first_part = (entry.bundle_id, req.t_ns)
        previous = self.service.activate(prepared)
        swap_ms = (time.monotonic_ns() - req.t_ns) / 1e6
        self._after_activate(previous, watch=req.source != "rollback")
        return SwapResult(ok=True, result="ok", bundle_id=entry.bundle_id, previous_id=previous.bundle.bundle_id,
                          prepared=how, swap_ms=swap_ms, source=src, requested=what)

    def _resolve(self, req: SwapRequest) -> StoredBundle:
        if req.bundle_id is not None:
            return self.store.get(req.bundle_id)
        assert req.recipe is not None
        return self.store.for_recipe(req.recipe)

    def _prepared_for(self, entry: StoredBundle) -> tuple[PreparedBundle, str]:
        hit = self._cache.take(entry.bundle_id)
        if hit is not None:
            try:
                self._recheck(hit)
            except SwapFailed:
                self._cache.release(hit)  # never again from memory: a new request prepares it afresh
                raise
            return hit, "preloaded"
        return self._prepare(entry.path), "cold"

    def _prepare(self, path: Path) -> PreparedBundle:
        """Signature -> hashes -> engines, warm-up, golden (``service.prepare_bundle``); each failure
        named for the metric."""
        try:
            return self.service.prepare_bundle(path)
        except SignatureError as exc:
            raise SwapFailed("signature", str(exc)) from exc
        except EngineError as exc:
            raise SwapFailed("engine", str(exc)) from exc
        except SelfTestError as exc:
            raise SwapFailed("golden", str(exc)) from exc
        except BundleError as exc:
            raise SwapFailed("verification", str(exc)) from exc

    def _recheck(self, prepared: PreparedBundle) -> None:
        """Verify a bundle prepared earlier on disk again, right before it becomes active (preloaded
        swap, rollback): the store may have been edited since. Costs the hashes (ms), not a build."""
        root = prepared.bundle.root
        try:
            current = verify_bundle(root, self.verifier).bundle
        except SignatureError as exc:
            raise SwapFailed("signature", str(exc)) from exc
        except BundleError as exc:
            raise SwapFailed("verification", str(exc)) from exc
        if current.manifest != prepared.bundle.manifest:
            raise SwapFailed("verification", f"bundle {root}: manifest differs from the one prepared earlier; "
                             "request the swap again to prepare the bundle as it is now")

    def _after_activate(self, previous: PreparedBundle, *, watch: bool) -> None:
        self.store.mark_active(self.service.bundle.bundle_id)
        old_previous = self._previous
        self._previous = previous if (watch and self.cfg.rollback.enabled) else None
        self._watch = RollbackWatch(cfg=self.cfg.rollback, bundle_id=self.service.bundle.bundle_id) if (
            self._previous is not None) else None
        self._cache.put(previous)  # flipping back later is instant too, while it fits
        if old_previous is not None and old_previous is not previous:
            self._cache.release(old_previous)
        self.metrics.preloaded.set(len(self._cache.ids()))

    # ---------------------------------------------------------------- rollback
    def _check_rollback(self) -> None:
        watch, previous = self._watch, self._previous
        if watch is None or previous is None:
            return
        reason = watch.breach()
        if reason is None:
            if watch.done:
                log.info("bundle %s passed its rollback watch (%s)", watch.bundle_id, watch.summary())
                self._watch, self._previous = None, None
                self._cache.release(previous)
            return
        log.error("bundle %s left its window (%s: %s); rolling back to %s",
                  watch.bundle_id, reason, watch.summary(), previous.bundle.bundle_id)
        self.metrics.rollbacks_total.labels(reason=reason).inc()
        self._watch = None
        try:
            self._recheck(previous)
        except SwapFailed as exc:
            self._refuse_rollback(previous, watch.bundle_id, exc)
            return
        self._cache.take(previous.bundle.bundle_id)  # it becomes active: not a cache entry any more
        self._first_part = (previous.bundle.bundle_id, time.monotonic_ns())
        failed = self.service.activate(previous)
        self._previous = None
        self._after_activate(failed, watch=False)
        # not kept prepared and not preloaded again: only an explicit request brings it back (cold)
        if self._cache.take(failed.bundle.bundle_id) is not None:
            self._cache.release(failed)
        self._cache.failed[failed.bundle.bundle_id] = f"rolled back: {reason}"
        self._history = [*self._history[-19:], SwapResult(
            ok=True, result="ok", source="rollback", requested=f"bundle {previous.bundle.bundle_id}",
            bundle_id=previous.bundle.bundle_id, previous_id=watch.bundle_id, prepared="preloaded",
            message=f"rolled back: {reason} {watch.summary()}")]
        self.metrics.swaps_total.labels(source="rollback", result="ok").inc()

    def _refuse_rollback(self, previous: PreparedBundle, current_id: str, exc: SwapFailed) -> None:
        """The rollback target no longer verifies: it must not judge parts; the current bundle stays."""
        log.error("rollback to %s REFUSED (%s: %s); bundle %s stays active", previous.bundle.bundle_id,
                  exc.result, exc, current_id)
        self._previous = None
        self._cache.release(previous)
        self._cache.failed[previous.bundle.bundle_id] = str(exc)
        self._history = [*self._history[-19:], SwapResult(
            ok=False, result=exc.result, source="rollback", requested=f"bundle {previous.bundle.bundle_id}",
            bundle_id=previous.bundle.bundle_id, previous_id=current_id, message=str(exc))]
        self.metrics.swaps_total.labels(source="rollback", result=exc.result).inc()

    # ---------------------------------------------------------------- drop folder and preload
    def _scan_drop_dir(self) -> None:
        drop = self.cfg.drop_dir
        if drop is None or not drop.is_dir():
            return
        for marker in sorted(drop.glob("*.ready")):
            src = marker.with_suffix("")
            res = self._install_and_swap(src)
            outcome = marker.with_suffix(".done" if res.ok else ".failed")
            outcome.write_text(f"{res.result}: {res.message or res.bundle_id}\n", encoding="utf-8")
            marker.unlink(missing_ok=True)
            if res.ok:
                shutil.rmtree(src, ignore_errors=True)

    def _install_and_swap(self, src: Path) -> SwapResult:
        """Install without mapping the recipe; map it only once the bundle has really taken over."""
        req = SwapRequest(source="drop", bundle_id=src.name)
        try:
            entry = self.store.install(src, verifier=self.verifier, map_recipe=False)
        except SignatureError as exc:
            res = SwapResult(ok=False, result="signature", source="drop", requested=str(src), message=str(exc))
        except (LineGuardError, OSError) as exc:
            res = SwapResult(ok=False, result="verification", source="drop", requested=str(src), message=str(exc))
        else:
            req.bundle_id = entry.bundle_id
            res = self._handle(req)
            if res.ok:
                self.store.activate(entry.bundle_id)
            elif entry.bundle_id not in self.store.recipes().values():
                self.store.remove(entry.bundle_id, force=True)  # unusable here: keep the store clean
        self._finish(req, res)
        return res

    def _fill_preload(self) -> None:
        """Prepare the bundles mapped to recipes ahead of their changeover, while slots are free."""
        if self._cache.free_slots() <= 0:
            return
        active = self.service.bundle.bundle_id
        for bundle_id in self.store.recipes().values():
            if self._cache.free_slots() <= 0 or self._stop.is_set():
                return
            if bundle_id == active or bundle_id in self._cache or bundle_id in self._cache.failed:
                continue
            try:
                self._cache.put(self._prepare(self.store.get(bundle_id).path))
                log.info("bundle %s preloaded", bundle_id)
            except (SwapFailed, LineGuardError) as exc:
                self._cache.failed[bundle_id] = str(exc)
                log.error("bundle %s cannot be preloaded: %s", bundle_id, exc)
        self.metrics.preloaded.set(len(self._cache.ids()))

    # ---------------------------------------------------------------- shadow and status
    def start_shadow(self, bundle_id: str) -> dict[str, Any]:
        """Run an installed bundle beside the active one (replaces any earlier candidate)."""
        entry = self.store.get(bundle_id)
        verify_bundle(entry.path, self.verifier)
        runner = ShadowRunner.from_path(entry.path, engine_cfg=self.service.cfg.engine, cfg=self.cfg.shadow,
                                        metrics=self.metrics)
        with self._shadow_lock:
            old, self._shadow = self._shadow, runner.start()
        if old is not None:
            old.stop()
        return runner.report().to_json()

    def stop_shadow(self) -> dict[str, Any] | None:
        with self._shadow_lock:
            old, self._shadow = self._shadow, None
        if old is None:
            return None
        old.stop()
        return old.report().to_json()

    def status(self) -> dict[str, Any]:
        man = self.service.bundle.manifest
        watch, shadow = self._watch, self._shadow
        return {
            "active": {"bundle_id": man.bundle_id, "product": man.product, "recipe": man.recipe},
            "recipes": {str(k): v for k, v in self.store.recipes().items()},
            "preloaded": self._cache.ids(),
            "preload_failed": dict(self._cache.failed),
            "pending_requests": self._requests.qsize(),
            "last_swaps": [r.to_json() for r in self._history[-5:]],
            "first_part_ms": self.first_part_ms,
            "rollback_watch": watch.summary() if watch is not None else None,
            "shadow": shadow.report().to_json() if shadow is not None else None,
            "signature_keys": self.verifier.key_ids,
            "allow_unsigned": self.verifier.allow_unsigned,
        }



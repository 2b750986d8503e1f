"""A bundle made ready to judge parts: verified, engines built, warmed up, golden self-test passed.

Where it sits: below both the composition root (``service.py``, which builds the first one at
start and swaps the active one) and the changeover package (``changeover/``, which prepares the
next one off the hot path and keeps preloaded ones). Neither of them imports the other; both use
this module. ``lineguard check-config`` uses the same warm-up and self-test.

Must never: hand out a runner whose golden self-test failed, or leak a runner whose preparation
failed (it is closed before the error propagates).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from lineguard.bundle import Bundle
from lineguard.changeover.signing import SignatureVerifier, verify_bundle
from lineguard.config import LineConfig
from lineguard.decision import DecisionPolicy
from lineguard.engines import BundleRunner, run_golden
from lineguard.errors import SelfTestError

log = logging.getLogger(__name__)


def warm_up_and_self_test(runner: BundleRunner, bundle: Bundle) -> None:
    """Warm up, then prove the engines reproduce the bundle's golden scores on this runtime.

    The first inference allocates buffers and (TensorRT) autotunes: the line must not pay for it.
    A bundle that fails the golden self-test never judges a part.
    """
    runner.warmup()
    failures = run_golden(runner, bundle)
    if failures:
        raise SelfTestError(f"bundle {bundle.bundle_id} failed its golden self-test: " + "; ".join(failures))


def build_runner(bundle: Bundle, cfg: LineConfig) -> BundleRunner:
    """The bundle's engines; the anomaly map is stitched only when the sink is to receive it."""
    pub = cfg.publisher
    with_map = pub.enabled and pub.include_anomaly_map and "map" in bundle.manifest.engines["anomaly"].outputs
    return BundleRunner.from_bundle(bundle, cfg.engine, with_map=with_map)


@dataclass(frozen=True, slots=True)
class PreparedBundle:
    """A verified bundle with its warmed-up runner; the active one is replaced as one reference."""

    bundle: Bundle
    runner: BundleRunner
    policy: DecisionPolicy
    thresholds: dict[str, float]  # for the uncertain-frame header; built once, not per frame

    @classmethod
    def build(cls, bundle: Bundle, runner: BundleRunner) -> PreparedBundle:
        policy = DecisionPolicy.from_manifest(bundle.manifest)
        return cls(bundle, runner, policy, {"lower": policy.lower, "upper": policy.upper})


def prepare_bundle(
    path: str | Path, *, cfg: LineConfig, verifier: SignatureVerifier, active: Bundle | None = None
) -> PreparedBundle:
    """Verify, build, warm up and self-test a bundle off the hot path (the line keeps running).

    ``active`` is the bundle now judging parts: a candidate expecting other frames is allowed but
    logged (the camera must change too). Raises :class:`SignatureError` / :class:`BundleError`
    (hashes) / :class:`EngineError` / :class:`SelfTestError` and leaves the running bundle untouched.
    """
    bundle = verify_bundle(path, verifier).bundle
    runner = build_runner(bundle, cfg)
    try:
        warm_up_and_self_test(runner, bundle)
        if active is not None and bundle.manifest.input != active.manifest.input:
            log.warning("bundle %s expects different frames than %s: the camera must change too",
                        bundle.bundle_id, active.bundle_id)
    except BaseException:
        runner.close()
        raise
    return PreparedBundle.build(bundle, runner)

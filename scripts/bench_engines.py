#!/usr/bin/env python3
"""Raw engine latency of a bundle (ONNX Runtime alone): p50 / p99 per frame and per stage.

    python scripts/bench_engines.py BUNDLE [--n 2000] [--threads 0] [--images DIR] [--json]
    python scripts/bench_engines.py --synthetic /tmp/synthetic-bundle ...   # build one first

Frames are the bundle's golden images (or ``--images``), cycled. This is the baseline that
``lineguard bench`` compares the service's end-to-end latency against; it uses the same
:func:`lineguard.engines.bench.measure_engine`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import onnxruntime as ort

from lineguard.bundle import load_bundle
from lineguard.engines import BundleRunner, OrtEngineConfig
from lineguard.engines.bench import measure_engine
from lineguard.imageio import list_images, read_image


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", nargs="?", help="bundle directory")
    p.add_argument("--synthetic", metavar="DIR", help="build a synthetic bundle in DIR (2x2 tiles of 224) and use it")
    p.add_argument("--n", type=int, default=2000, help="measured inferences")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0 = all cores)")
    p.add_argument("--images", help="folder of frames to cycle (default: the bundle's golden images)")
    p.add_argument("--map", action="store_true", help="also stitch the anomaly map (as the publisher needs)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)
    if args.synthetic:
        from lineguard.engines.synthetic import build_synthetic_bundle
        from lineguard.preprocess import TileSpec

        bundle = build_synthetic_bundle(Path(args.synthetic), input_size=224, tiles=TileSpec(rows=2, cols=2),
                                        overwrite=True)
    elif args.bundle:
        bundle = load_bundle(args.bundle)
    else:
        p.error("give a BUNDLE or --synthetic DIR")
    paths = list_images(args.images) if args.images else [bundle.path(g.file) for g in bundle.manifest.golden]
    images = [read_image(x) for x in paths]
    cfg = OrtEngineConfig(intra_op_threads=args.threads)
    with BundleRunner.from_bundle(bundle, cfg, with_map=args.map) as runner:
        stats = measure_engine(runner, images, args.n)
    stats.update(bundle=bundle.bundle_id, onnxruntime=ort.__version__, cpu=platform.processor() or platform.machine(),
                 cores=os.cpu_count(), threads=args.threads, images=len(images), map=args.map)
    if args.json:
        print(json.dumps({k: v for k, v in stats.items() if k != "samples_ms"}, indent=2))  # summary only
        return 0
    t = stats["total"]
    print(f"bundle {bundle.bundle_id} on {stats['provider']} (ORT {ort.__version__}, {os.cpu_count()} cores, "
          f"threads={args.threads}), {args.n} frames of {len(images)} image(s)")
    print(f"  per frame: p50 {t['p50']:.3f} ms  p99 {t['p99']:.3f} ms  max {t['max']:.3f} ms  "
          f"throughput {stats['throughput_per_s']:.1f} frames/s")
    for stage, s in stats["stages"].items():
        print(f"  {stage:<11} p50 {s['p50']:.3f} ms  p99 {s['p99']:.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())

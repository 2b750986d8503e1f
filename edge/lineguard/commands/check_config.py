"""``lineguard check-config``: would this config start and judge parts correctly on this box?

Schema first (each error with its YAML line), then the on-box checks of :mod:`lineguard.preflight`
(bundle present, signed per the line's policy and hash-verified, matching the source's size and
pixel format; replay paths; writable directories with free space; endpoints and ports; key files),
each refusal with its field's YAML line and the fix. ``--bundle`` adds what ``run`` does next:
build the engines, warm up and run the golden self-test. ``--schema-only`` checks the file alone
(configs rendered off the line, e.g. by the fleet playbook). Side-effect free: no connection is made
and nothing is left on disk.
"""

from __future__ import annotations

import argparse

from lineguard.bundle import Bundle
from lineguard.config import LineConfig
from lineguard.yamlcfg import ConfigProblem, line_of, load_file_with_doc

HELP = "validate a config file and report each error with its YAML line"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="path of the line YAML config")
    p.add_argument("--bundle", action="store_true",
                   help="also build the bundle's engines, warm up and run its golden self-test (as run does)")
    p.add_argument("--schema-only", action="store_true",
                   help="check the file alone: no bundle, paths or directories (configs rendered off the box)")


def _self_test(cfg: LineConfig, bundle: Bundle) -> None:
    from lineguard.prepared import build_runner, warm_up_and_self_test  # engines: only when asked

    runner = build_runner(bundle, cfg)
    try:
        warm_up_and_self_test(runner, bundle)
        print(f"bundle {bundle.bundle_id}: golden self-test passed on {runner.provider}")
    finally:
        runner.close()


def run(args: argparse.Namespace) -> int:
    cfg, doc = load_file_with_doc(LineConfig, args.config)
    if not args.schema_only:
        from lineguard.preflight import preflight

        result = preflight(cfg)
        for note in result.notes:
            print(note)
        if result.problems:
            raise ConfigProblem(str(args.config),
                                [(line_of(doc, p.loc), p.dotted, p.message) for p in result.problems])
        if args.bundle and result.verified is not None:
            _self_test(cfg, result.verified.bundle)
    print(f"{args.config}: OK (source {cfg.source.type}, plc {cfg.plc.transport.type if cfg.plc else 'off'}"
          f"{', schema only' if args.schema_only else ''})")
    return 0

"""``lineguard bundles list|activate|remove --config line.yaml``: manage the edge box's bundle store.

Off the frame path. ``activate ID`` maps the bundle's recipe to this version (the next request
for that recipe, from the PLC or ``lineguard swap --recipe``, gets it; use ``lineguard swap
--bundle ID`` to switch the running line now). ``remove`` refuses the version the line runs.
"""

from __future__ import annotations

import argparse

from lineguard.changeover.store import BundleStore
from lineguard.commands.install_bundle import changeover_section
from lineguard.config import load_config

HELP = "list, activate (map to its recipe) or remove installed bundle versions"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("list", "activate", "remove"), help="what to do")
    p.add_argument("bundle_id", nargs="?", help="bundle id (activate, remove)")
    p.add_argument("--config", required=True, help="line config with a changeover: section")
    p.add_argument("--force", action="store_true", help="remove: also unmap the recipe it serves")


def run(args: argparse.Namespace) -> int:
    store = BundleStore.open(changeover_section(load_config(args.config), args.config).store_dir)
    if args.action == "list":
        recipes = {b: r for r, b in store.recipes().items()}
        active = store.active()
        print(f"{'bundle':<32} {'product':<16} {'recipe':>6}  {'mapped':<6} {'active':<6} installed")
        for e in store.list():
            mapped = "yes" if e.bundle_id in recipes else ""
            print(f"{e.bundle_id:<32} {e.product:<16} {e.recipe:>6}  {mapped:<6} "
                  f"{'*' if e.bundle_id == active else '':<6} {e.installed_utc} {e.prepared.get('provider', '')}")
        return 0
    if not args.bundle_id:
        print(f"bundles {args.action} needs a bundle id")
        return 2
    if args.action == "activate":
        e = store.activate(args.bundle_id)
        print(f"recipe {e.recipe} -> {e.bundle_id}")
    else:
        store.remove(args.bundle_id, force=args.force)
        print(f"removed {args.bundle_id}")
    return 0

"""``lineguard swap --recipe N | --bundle ID | --status | --shadow ID | --shadow-stop``.

Talks to the running service's control endpoint (address and token file from the line config's
``changeover.control``); the service's swap worker does the work and this command prints its
answer. Off the frame path. Exit code 0: switched (or already active); 1: refused (the line keeps
its bundle; the reason is printed); 3: still pending when the wait ended.
"""

from __future__ import annotations

import argparse
import json

from lineguard.changeover.control import call, read_token
from lineguard.commands.install_bundle import changeover_section
from lineguard.config import load_config
from lineguard.errors import ConfigError

HELP = "ask the running service to switch bundle (by recipe or id), or show its changeover status"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="line config with changeover.control")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--recipe", type=int, help="switch to the bundle mapped to this recipe")
    g.add_argument("--bundle", help="switch to this installed bundle id")
    g.add_argument("--status", action="store_true", help="print the changeover status")
    g.add_argument("--shadow", metavar="ID", help="run an installed bundle in shadow mode")
    g.add_argument("--shadow-stop", action="store_true", help="stop shadow mode and print its report")
    p.add_argument("--wait-s", type=float, default=120.0, help="how long to wait for the swap result")


def run(args: argparse.Namespace) -> int:
    co = changeover_section(load_config(args.config), args.config)
    if co.control is None:
        raise ConfigError(f"{args.config}: changeover.control is not configured")
    token = read_token(co.control.token_file)
    if args.status:
        code, doc = call(co.control, token, "GET", "/status")
    elif args.shadow or args.shadow_stop:
        body: dict[str, object] = {"stop": True} if args.shadow_stop else {"bundle": args.shadow}
        code, doc = call(co.control, token, "POST", "/shadow", body)
    else:
        body = {"recipe": args.recipe} if args.recipe is not None else {"bundle": args.bundle}
        body["wait_s"] = args.wait_s
        code, doc = call(co.control, token, "POST", "/swap", body, timeout_s=args.wait_s + 10)
    print(json.dumps(doc, indent=2))
    return {200: 0, 202: 3}.get(code, 1)

"""``lineguard label --store DIR``: serve the labelling page for a sink store.

Thin CLI over :class:`lineguard.labelling.server.LabelServer`. The per-shift selection comes from
``lineguard_models.active`` (numpy and OpenCV only, no torch: it is safe to import on the sink
host); ``--no-selection`` falls back to the informativeness order of the label book.

Must never: hold labelling logic of its own.
"""

from __future__ import annotations

import argparse
import datetime as dt
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from lineguard.errors import ConfigError
from lineguard.labelling.server import LabelServer, LabelServerConfig, Planner
from lineguard.sink.labels import LabelBook

if TYPE_CHECKING:
    from lineguard_models.active import SelectionConfig

HELP = "serve the labelling page for the sink's frames (most informative first)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", type=Path, required=True, help="the sink's store_dir (holds index.sqlite3)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    p.add_argument("--port", type=int, default=8090, help="TCP port (0 = any free)")
    p.add_argument("--labeller", default="operator", help="name recorded with each label")
    p.add_argument("--budget", type=int, default=50, help="frames selected for labelling per shift")
    p.add_argument("--audit-share", type=float, default=0.1, help="share of the budget drawn at random")
    p.add_argument("--shift-hours", type=int, default=8, help="shift length in hours (shifts start 00:00 UTC)")
    p.add_argument("--no-selection", action="store_true",
                   help="no active-learning selection: order by informativeness only")
    side = p.add_mutually_exclusive_group()
    side.add_argument("--reject-side-first", dest="both_sides", action="store_false",
                      help="the default: select by the reject side only, rejected and nearly rejected frames "
                           "first, the accept side not at all (casting, 8 %% defect stream, 16 seeds: 81 %% "
                           "fewer false rejects and +24 points reject precision at the line's defect share "
                           "against random labelling; docs/benchmarks/data-loop.md)")
    side.add_argument("--both-sides", dest="both_sides", action="store_true",
                      help="value frames near either threshold alike (the rule before 2026-11-28; level with "
                           "or worse than random labelling on casting)")
    p.set_defaults(both_sides=False)


def selection_config(args: argparse.Namespace) -> SelectionConfig:
    from lineguard_models.active import REJECT_SIDE_FIRST, SelectionConfig

    try:
        return SelectionConfig(budget_per_shift=args.budget, audit_share=args.audit_share,
                               shift_hours=args.shift_hours, **({} if args.both_sides else REJECT_SIDE_FIRST))
    except ValidationError as exc:
        raise ConfigError(f"invalid selection options: {exc}") from exc


def _planner_factory(args: argparse.Namespace) -> Callable[[LabelBook], Planner] | None:
    if args.no_selection:
        return None
    from lineguard_models.active import plan_shift  # numpy/OpenCV only, see docstring

    sel = selection_config(args)

    def factory(book: LabelBook) -> Planner:
        return lambda: plan_shift(book, sel, now=dt.datetime.now(dt.timezone.utc))[0]

    return factory


def run(args: argparse.Namespace) -> int:
    try:
        cfg = LabelServerConfig(host=args.host, port=args.port, labeller=args.labeller,
                                budget_per_shift=args.budget)
    except ValidationError as exc:
        raise ConfigError(f"invalid labelling options: {exc}") from exc
    factory = _planner_factory(args)
    server = LabelServer.from_store(args.store, cfg, factory)
    print(f"labelling page: {server.url}  (Ctrl-C to stop)", flush=True)
    stop = threading.Event()
    server.start()
    try:
        stop.wait()
    finally:
        server.stop()
    return 0

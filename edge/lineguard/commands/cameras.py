"""``lineguard cameras --cti PATH``: list the GenICam devices a GenTL producer sees.

Where it sits: an operator tool beside the service, used while setting up a line (which serial
goes into ``source.serial``?). With ``--features`` it opens each free device read-only-ish
(exclusive for a moment) and prints what the source config can use: pixel formats, ROI limits,
exposure, gain and trigger support.

Never: change a camera setting, or keep a device open after printing.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Any

from lineguard.errors import SourceError

HELP = "list GenICam devices visible through a GenTL producer (.cti)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cti", required=True, help="GenTL producer file (.cti); 'viky' for the simulator")
    p.add_argument("--features", action="store_true", help="also open each device and list its features")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    try:
        from lineguard.sources import genicam
    except ModuleNotFoundError as exc:
        raise SourceError(f"listing cameras needs the '{exc.name}' package (pip install harvesters genicam)") from exc
    cti = str(args.cti)
    if cti == "viky":
        found = genicam.viky_cti_path()
        if found is None:
            raise SourceError("the viky.cti simulator is not inside this genicam installation")
        cti = str(found)
    devices = genicam.list_devices(cti)
    rows: list[dict[str, Any]] = [asdict(d) for d in devices]
    if args.features:
        for row in rows:
            row["features"] = genicam.describe_features(cti, int(row["index"]))
    if args.json:
        print(json.dumps({"cti": cti, "devices": rows}, indent=2))
        return 0
    if not rows:
        print(f"no devices found through {cti} (check cabling, power, network/USB permissions)")
        return 1
    print(f"{'#':>2}  {'vendor':<28} {'model':<20} {'serial':<16} id")
    for row in rows:
        print(f"{row['index']:>2}  {row['vendor']:<28} {row['model']:<20} {row['serial']:<16} {row['device_id']}")
        for key, value in row.get("features", {}).items():
            print(f"      {key}: {value}")
    return 0

"""Build ``../data/datasets/pku_pcb_defects`` (a fetched public set for the classifier suite, issue 16).

The PKU Open Lab PCB defect set (Huang & Wei, "A PCB dataset for defects detection and
classification", 2019; 693 colour photos of 10 bare boards, 6 defect types with Pascal VOC boxes) is
not in ``../shared/datasets``. Its box crops are committed to a public repository: branch
``Suswagata-Ghosh`` of ``mentor-pranaya/CircuitGuard-PCB-Defect-Detection-and-Classification-Application_1``,
folder ``outputs/roi_crops/<Class>/<board>_<type>_<nn>_roi_<k>.jpg`` (every annotated box cut out of
its photo and resized to 128x128 with Lanczos, by that project's ``modules/Module_2.ipynb``; 2953
crops, 482-503 per type, the published box count). Fetch the repository as a bare git mirror (the
tool library's ``fetch``), then run this script: it copies the JPEG bytes unchanged (no re-encoding)
and writes the shared sets' layout, ``<class>/<file>``, ``manifest.csv``
(``path,split,label,is_good,mask`` plus ``group``: the source photo, so splits can keep every crop of
one photo on one side) and ``provenance.json``.

    .venv/bin/python scripts/build_pku_pcb_defects.py --mirror /work/.mirror/<owner+name>/repo

Must never: write into this repository, or re-encode an image.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import subprocess
import sys
from pathlib import Path

BRANCH = "Suswagata-Ghosh"
REPO = "mentor-pranaya/CircuitGuard-PCB-Defect-Detection-and-Classification-Application_1"
PREFIX = "outputs/roi_crops/"
NAME = re.compile(r"^(?P<group>\d+_[a-z_]+_\d+)_roi_\d+\.jpg$")
DEFAULT_OUT = Path(__file__).resolve().parents[2] / "data" / "datasets" / "pku_pcb_defects"


def git(mirror: Path, *args: str) -> bytes:
    return subprocess.run(["git", "-C", str(mirror), *args], check=True, capture_output=True).stdout


def build(mirror: Path, out: Path) -> dict[str, int]:
    commit = git(mirror, "rev-parse", BRANCH).decode().strip()
    listing = git(mirror, "ls-tree", "-r", commit, PREFIX).decode().splitlines()
    rows, counts = [], {}
    for line in listing:
        meta, path = line.split("\t", 1)
        cls_dir, fname = path[len(PREFIX):].split("/", 1)
        m = NAME.match(fname)
        if m is None:
            raise SystemExit(f"unexpected file name {path!r}: the crops' naming changed, check the source")
        label = cls_dir.lower()
        dest = out / label / fname
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(git(mirror, "cat-file", "blob", meta.split()[2]))
        rows.append({"path": f"{label}/{fname}", "split": "", "label": label, "is_good": "0", "mask": "",
                     "group": m["group"]})
        counts[label] = counts.get(label, 0) + 1
    with (out / "manifest.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["path", "split", "label", "is_good", "mask", "group"])
        w.writeheader()
        w.writerows(sorted(rows, key=lambda r: r["path"]))
    (out / "provenance.json").write_text(json.dumps({
        "source": f"https://github.com/{REPO} (branch {BRANCH}, {PREFIX})",
        "commit": commit,
        "original": "PKU Open Lab PCB defect dataset (Huang & Wei 2019): 693 photos, 10 boards, 6 defect types, "
                    "2953 boxes; released for research use, cite the paper",
        "crops": "every annotated box cut out and resized to 128x128 (Lanczos) by the source repository's "
                 "modules/Module_2.ipynb; copied here byte for byte",
        "counts": counts,
        "groups": len({r['group'] for r in rows}),
        "caveat": "crops of one photo (3-5 per photo, one defect type) are correlated: split by the 'group' column",
        "licence": "the source repository states none; the PKU set is distributed for research use",
    }, indent=1), encoding="utf-8")
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mirror", type=Path, required=True, help="bare git mirror of the source repository")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    if Path(__file__).resolve().parents[1] in args.out.resolve().parents:
        raise SystemExit("--out is inside the repository: fetched data lives outside it")
    counts = build(args.mirror, args.out)
    print(f"{args.out}: {sum(counts.values())} crops, {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

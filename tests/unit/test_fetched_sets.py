"""The fetched classifier set: its build script (from a bare git mirror, byte for byte) and the grouped split
the classifier suite uses on it (crops of one photo never on both sides)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
sys.path.insert(0, str(SCRIPTS))

import bench_quality_classifier as bqc  # noqa: E402
import build_pku_pcb_defects as build  # noqa: E402


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(cwd), *args], check=True, capture_output=True)


def _mirror(tmp_path: Path, files: dict[str, bytes]) -> Path:
    """A bare mirror whose branch ``build.BRANCH`` holds ``files`` (path -> bytes)."""
    work = tmp_path / "work"
    for rel, data in files.items():
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_bytes(data)
    _git(tmp_path, "init", "-q", "-b", build.BRANCH, str(work))
    _git(work, "add", "-A")
    _git(work, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "crops")
    bare = tmp_path / "mirror.git"
    _git(tmp_path, "clone", "-q", "--mirror", str(work), str(bare))
    return bare


def test_build_copies_every_crop_byte_for_byte_with_its_photo(tmp_path: Path) -> None:
    files = {
        f"{build.PREFIX}Short/01_short_03_roi_00.jpg": b"\xff\xd8 first",
        f"{build.PREFIX}Short/01_short_03_roi_01.jpg": b"\xff\xd8 second",
        f"{build.PREFIX}Missing_hole/04_missing_hole_11_roi_00.jpg": b"\xff\xd8 third",
        "outputs/other/ignored.jpg": b"not a crop",
    }
    out = tmp_path / "out"
    counts = build.build(_mirror(tmp_path, files), out)
    assert counts == {"short": 2, "missing_hole": 1}
    assert (out / "short" / "01_short_03_roi_01.jpg").read_bytes() == b"\xff\xd8 second"
    with (out / "manifest.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == ["missing_hole/04_missing_hole_11_roi_00.jpg",
                                         "short/01_short_03_roi_00.jpg", "short/01_short_03_roi_01.jpg"]
    assert [r["group"] for r in rows] == ["04_missing_hole_11", "01_short_03", "01_short_03"]
    assert {r["is_good"] for r in rows} == {"0"}
    prov = json.loads((out / "provenance.json").read_text(encoding="utf-8"))
    assert prov["groups"] == 2 and prov["counts"] == counts and len(prov["commit"]) == 40


def test_build_refuses_an_unexpected_name_and_an_output_inside_the_repository(tmp_path: Path) -> None:
    bare = _mirror(tmp_path, {f"{build.PREFIX}Spur/renamed.jpg": b"x"})
    with pytest.raises(SystemExit, match="unexpected file name"):
        build.build(bare, tmp_path / "out")
    with pytest.raises(SystemExit, match="inside the repository"):
        build.main(["--mirror", str(bare), "--out", str(SCRIPTS.parent / "data_here")])
    assert not (SCRIPTS.parent / "data_here").exists()


def test_grouped_split_keeps_each_photo_on_one_side() -> None:
    rng = np.random.default_rng(0)
    paths, labels = [], []
    for c in range(3):
        for photo in range(30):
            for k in range(int(rng.integers(2, 6))):
                paths.append(f"c{c}/{photo:02d}_type{c}_{photo:02d}_roi_{k:02d}.jpg")
                labels.append(c)
    y = np.array(labels)
    groups = np.array([bqc.photo_group(p) for p in paths])
    order, test = bqc.splits("pku_pcb_defects", y, paths, seed=1, n_max=8)
    train = np.concatenate(list(order.values()))
    assert all(len(v) == 8 for v in order.values())
    assert len(set(groups[train])) == len(train)  # one crop per photo
    assert not set(groups[train]) & set(groups[test])  # no photo on both sides
    assert all(int((y[test] == c).sum()) <= bqc.TEST_PER_CLASS for c in range(3))
    assert (y[order[2]] == 2).all()
    again = bqc.splits("pku_pcb_defects", y, paths, seed=1, n_max=8)
    assert (np.concatenate(list(again[0].values())) == train).all() and (again[1] == test).all()
    other = bqc.splits("pku_pcb_defects", y, paths, seed=2, n_max=8)
    assert not (np.concatenate(list(other[0].values())) == train).all()

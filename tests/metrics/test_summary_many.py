"""`tdptrace summary` over several captures or a directory of them: per-capture rows and a fleet total."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from refdata import REFERENCE, expected
from typer.testing import CliRunner

from tdptrace.cli import app, main
from tdptrace.metrics.fleet import find_captures, fleet_total

HOSTS = {"k61-128m": "host-a", "k61-256m-thp": "host-a", "k61-512m-hog": "host-b"}


@pytest.fixture(scope="module")
def fleet_dir(reference_captures, tmp_path_factory) -> Path:
    """captures/<host>/<name>.tdp with each capture's meta.json naming its host."""
    root = tmp_path_factory.mktemp("captures")
    for name, cap in reference_captures.items():
        dst = root / HOSTS[name] / f"{name}.tdp"
        dst.parent.mkdir(exist_ok=True)
        shutil.copytree(cap, dst)
        meta = json.loads((dst / "meta.json").read_text())
        meta["host"] = {"hostname": HOSTS[name], "machine": "x86_64"}
        (dst / "meta.json").write_text(json.dumps(meta))
    return root


def _json(args: list[str]) -> dict:
    res = CliRunner().invoke(app, ["summary", *args, "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def test_directory_gives_each_capture_and_the_fleet_total(fleet_dir):
    out = _json([str(fleet_dir)])
    assert sorted(Path(p).name for p in out["captures"]) == sorted(f"{n}.tdp" for n in REFERENCE)
    for path, s in out["captures"].items():
        name = Path(path).name[:-len(".tdp")]
        assert s["zaps_by_level"] == expected(name)["zaps_by_level"]
        assert s["capture"]["host"] == HOSTS[name]
    f = out["fleet"]
    assert f["captures"] == 3 and f["hosts"] == ["host-a", "host-b"]
    assert f["zaps_total"] == {"leaf": 48644 + 192 + 196100, "nonleaf": 66 + 2 + 258}
    assert f["zaps_by_level"]["2"] == {"leaf": 192, "nonleaf": 64 + 256}
    assert f["page_tables"]["allocated"] == 67 + 3 + 259 and f["page_tables"]["freed"] == 66 + 2 + 258
    assert f["yields"]["spans"] == 15 and f["yields"]["count"] == 0 + 0 + 8
    assert f["yields"]["max_gap_ns"] == out["captures"][str(fleet_dir / "host-b" / "k61-512m-hog.tdp")][
        "yields"]["max_gap_ns"]
    assert abs(f["yields"]["max_gap_ns"] - 99_724_000) <= 1000
    assert f["by_host"]["host-a"]["captures"] == 2 and f["by_host"]["host-b"]["zaps_total"]["leaf"] == 196100
    assert f["lost_events"] == 0


def test_several_paths_are_deduplicated_and_a_single_capture_keeps_its_output(fleet_dir):
    one = fleet_dir / "host-a" / "k61-128m.tdp"
    both = _json([str(fleet_dir / "host-a"), str(one)])
    assert len(both["captures"]) == 2
    single = _json([str(one)])
    assert "captures" not in single and single["zaps_by_level"] == expected("k61-128m")["zaps_by_level"]


def test_table_output_has_a_row_per_capture_and_a_total(fleet_dir):
    res = CliRunner().invoke(app, ["summary", str(fleet_dir)], env={"COLUMNS": "80"})
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].startswith("3 captures from 2 host(s)")
    total = [ln for ln in lines if ln.startswith("fleet total")]
    assert total and total[0].split()[3:5] == ["244936", "326"]
    assert max(len(ln) for ln in lines) <= 80


def test_unmeasurable_figures_stay_none_in_the_total():
    s = {"capture": {"host": "h"}, "zaps_by_level": {}, "yields": {"count": None, "max_gap_ns": None, "spans": 0},
         "page_tables": {"allocated": None, "freed": None, "retained_nonleaf": None}, "lost_events": 2}
    f = fleet_total({"a": s, "b": s})
    assert f["yields"]["count"] is None and f["yields"]["max_gap_ns"] is None
    assert f["page_tables"]["allocated"] is None and f["lost_events"] == 4


def test_empty_directory_and_missing_capture_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["summary", str(tmp_path / "empty")]) == 2
    assert capsys.readouterr().err.startswith(f"tdptrace: error: {tmp_path / 'empty'}: no captures in this directory")
    with pytest.raises(Exception):
        find_captures([tmp_path / "empty"])
    assert main(["summary", str(tmp_path / "nope.tdp"), str(tmp_path / "empty")]) == 2


def test_readme_duckdb_query_agrees_with_the_fleet_total(reference_captures, tmp_path, monkeypatch):
    duckdb = pytest.importorskip("duckdb", reason="DuckDB is not installed")
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    sql = readme.split("## Fleet monitoring", 1)[1].split("```sql\n", 1)[1].split("```", 1)[0]
    root = tmp_path / "captures"
    root.mkdir()
    for name, cap in reference_captures.items():  # captures/<host>-<name>.tdp, flat as in the README
        dst = root / f"{HOSTS[name]}-{name}.tdp"
        shutil.copytree(cap, dst)
        meta = json.loads((dst / "meta.json").read_text())
        meta["host"] = {"hostname": HOSTS[name], "machine": "x86_64"}
        (dst / "meta.json").write_text(json.dumps(meta))
    monkeypatch.chdir(tmp_path)
    rows = {r[0]: r for r in duckdb.sql(sql).fetchall()}
    fleet = _json([str(root)])["fleet"]["by_host"]
    assert set(rows) == set(fleet) == {"host-a", "host-b"}
    for host, (_, captures, spans, yields, max_gap_ms, _over, leaf_4k) in rows.items():
        f = fleet[host]
        assert captures == f["captures"] and spans == f["yields"]["spans"] and yields == f["yields"]["count"]
        assert max_gap_ms == round(f["yields"]["max_gap_ns"] / 1e6, 1)
        assert leaf_4k == f["zaps_by_level"]["1"]["leaf"]

"""Kernel addresses never reach a capture raw, whichever writer or column they come through: CaptureWriter
hashes every address-looking token (hex with or without 0x, back to back, decimal >= 2^63) in every string
column and in meta.json, and drops pointer-valued return codes (counted in a note). Then nothing printed from
the capture (summary --json, triage, the HTML report) can show one either."""
from __future__ import annotations

import json

import pandas as pd
import pytest
from addrscan import addresses_in, scan_for_kernel_addresses
from smallcaps import _frame
from tracegen import Trace, leaf4k, nonleaf

import tdptrace
from tdptrace.capture import CaptureMeta, CaptureWriter
from tdptrace.capture.hashing import PointerHasher
from tdptrace.cli import main

FN = 0xFFFFFFFFC0A1B2C0
OBJ = 18446612685283207808  # 0xffff8881_0e4c0080 printed in decimal
TASK = "ffff888812345678"  # a task name that is an address (comm is 16 characters)


def _lines() -> str:
    return (Trace().get_page(0, 1).spte(0, 2, 0, nonleaf(5)).spte(1, 1, 0, leaf4k(1))
            .enter("tdp_mmu_zap_leafs", "root=0xffff8946134bab80 start=0x0 end=0x200 can_yield=1 flush=0")
            .spte(1, 1, leaf4k(1), 0).yield_()
            # a return whose caller is printed as a bare address: lands in spans.caller
            .raw("            qemu-100     [000] ...1.     1.000020: r_tdp_mmu_zap_leafs: "
                 "(0xffffffffc0a1b2cc <- tdp_mmu_zap_leafs) ret=1")
            # a kprobe printed as an address (markers.function), a decimal pointer, two addresses back to back
            .raw(f"            qemu-100     [000] ...1.     1.000021: p_zap: ({FN:#x}) obj={OBJ} "
                 "two=0xffffffffc0a1b2c00xffff888812345678")
            # an event name and a task name that are addresses: meta.json events, markers.event and .comm
            .raw(f"{TASK}-101     [001] ...1.     1.000022: {FN:x}: x=1")
            .raw(f"            qemu-100     [000] ...1.     1.000023: kvm_mmu_zap_all_fast: kvm={OBJ} "
                 "ffffffffc0a1b2c0ffff888812345678")
            .text())


@pytest.fixture
def cap(tmp_path):
    src = tmp_path / "t.txt"
    src.write_text(_lines())
    out = tmp_path / "a.tdp"
    assert main(["import", str(src), "-o", str(out), "-q", "--kernel", "6.1.0-56-amd64"]) == 0
    return out


def test_no_address_in_any_column_name_or_meta(cap):
    assert scan_for_kernel_addresses(cap) == []
    c = tdptrace.open(cap)
    assert c.spans["caller"].str.startswith("ptr:").all()
    m = c.markers
    assert m["function"].str.startswith("ptr:").any() and m["comm"].str.startswith("ptr:").any()
    fn_hash = m.loc[m["event"] == "call", "function"].iloc[0]
    assert m["event"].eq(fn_hash).any()  # the same address hashes alike in every column of one capture
    two = m.loc[m["event"] == "call", "detail"].iloc[0]
    assert two.count("ptr:") == 3 and "obj=ptr:" in two
    meta = json.loads((cap / "meta.json").read_text())
    assert fn_hash in json.dumps(meta["events"])


def test_nothing_printed_from_the_capture_shows_one(cap, tmp_path, capsys):
    for args in (["summary", str(cap), "--json"], ["summary", str(cap)], ["triage", str(cap)],
                 ["triage", str(cap), "--json"]):
        capsys.readouterr()
        main(args)
        out = capsys.readouterr()
        assert addresses_in(out.out + out.err) == [], args
    assert main(["report", str(cap), "-o", str(tmp_path / "r.html")]) == 0
    assert addresses_in((tmp_path / "r.html").read_text()) == []


def test_every_writer_is_scrubbed_at_the_writer(tmp_path):
    """Whatever a writer hands in (here: every string column of every table, a pointer-valued return and a
    meta full of addresses), the files hold hashes; the dropped return is counted."""
    meta = CaptureMeta(source={"kind": "test", "note": f"task {TASK}"},
                       events={"counts": {f"{FN:x}": 1, "ok": 2}, "unknown": {}, "owner": OBJ},
                       notes=[f"seen 0x{FN:x}0x{FN:x}"])
    with CaptureWriter(tmp_path / "w.tdp", meta) as w:
        for table in ("markers", "spans", "yields", "page_tables"):
            row = {"ts": 1, "comm": TASK, "event": f"{FN:#x}", "function": f"fn{FN:x}", "detail": f"o={OBJ}",
                   "caller": f"{FN:#X}", "vm": str(OBJ), "root": f"{FN:x}", "lock": f"{FN:x}", "kind": f"{FN:x}",
                   "span_id": 0, "end_ts": 2, "duration_ns": 1}
            w.append(table, _frame(table, [row], 0))
        y = _frame("yields", [{"ts": 2, "function": "f"}], 0)
        y["ret"] = pd.array([-(1 << 46)], dtype="Int64")
        w.append("yields", y)
        w.append("stacks", pd.DataFrame({"stack_id": [1], "depth": [0], "symbol": [f"{FN:#x}"]}))
    assert scan_for_kernel_addresses(tmp_path / "w.tdp") == []
    c = tdptrace.open(tmp_path / "w.tdp")
    assert len(c.yields) == 2 and c.yields["ret"].isna().all()
    assert "return codes not kept because they were kernel pointers: 1" in c.meta.notes


@pytest.mark.parametrize("text,kept", [
    ("ts=1733000000000000000", True),  # a 19-digit timestamp below 2^63 is not a pointer
    ("gfn 0x1ffff and -12 and 0xffff88810000", True),  # too short to be an address
    ("level 4 old_spte 0x8600000123456ff7", True),
    ("ptr:0123456789abcdef", True),
])
def test_ordinary_values_are_left_alone(text, kept):
    assert (PointerHasher().scrub_str(text) == text) is kept


@pytest.mark.parametrize("text", [
    "0xffff8946134bab80", "FFFF8946134BAB80", "(0xffffffffc0a1b2cc <- f)", "a0xffffffffc0a1b2c0z",
    "0xffffffffc0a1b2c00xffff888812345678", "ffffffffc0a1b2c0ffff888812345678", "obj=18446612685283207808",
    "18446612685283207808", "1844661268528320780818446612685283207808",
])
def test_addresses_in_any_form_are_hashed(text):
    h = PointerHasher()
    out = h.scrub_str(text)
    assert addresses_in(out) == [] and "ptr:" in out
    assert h.scrub_str(out) == out  # a hash is never taken for an address again


def test_hex_and_decimal_forms_of_one_pointer_hash_alike():
    h = PointerHasher()
    assert h.scrub_str(f"{OBJ:#x}") == h.scrub_str(str(OBJ)) == "ptr:" + h.one(OBJ)


def test_a_hash_never_looks_like_an_address():
    h = PointerHasher(b"k" * 16)
    assert all(not addresses_in(h.one(v)) for v in range(0xFFFF888000000000, 0xFFFF888000000000 + 200_000, 3))

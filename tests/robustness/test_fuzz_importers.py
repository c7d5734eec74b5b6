"""Fuzzing every importer: mutated and made-up input either imports or raises a TdpError (one clear line on
the command line), never any other exception.

Three layers, cheapest first: each format's line parser plus the shared decoder on thousands of mutated
blocks; whole `import_file` runs (files, compression, capture writing) on fewer; the CLI itself on a handful,
checking one line on stderr and no traceback. Seeds are small real samples of each format (tests/data and
tracegen). derandomize=True keeps CI repeatable: the same cases every run. The native tracefs scanner is run
beside the pure parser on every tracefs block: both give the same events or both refuse the block.

Whole-import cases (the file written plain or compressed, the compressed stream sometimes damaged) number
TDPTRACE_FUZZ_CASES (150 by default in the suite; a release check runs 5,000 or more).
"""
from __future__ import annotations

import functools
import gzip
import lzma
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tracegen import Trace, leaf2m, leaf4k, nonleaf

from tdptrace.errors import TdpError
from tdptrace.importers import fastscan, formats, import_file, tracefs
from tdptrace.importers.decode import decode
from tdptrace.metrics.summary import summarize

DATA = Path(__file__).resolve().parents[1] / "data"
KALLSYMS = ("ffffffffc0a00000 t kvm_tdp_mmu_unmap_gfn_range\t[kvm]\nffffffffc0a00090 t tdp_mmu_zap_leafs\t[kvm]\n"
            "ffffffffc0a00270 T __cond_resched_rwlock_write\n")
KPROBE_EVENTS = ("p:tdp/zap_leafs_enter tdp_mmu_zap_leafs root=%si start=%dx\n"
                 "r:tdp/zap_leafs_exit tdp_mmu_zap_leafs ret=$retval\n")


def _tracefs_seed() -> bytes:
    t = (Trace().get_page(0, 4).get_page(0, 1).spte(0, 2, 0, nonleaf(9)).spte(1, 1, 0, leaf4k(1))
         .enter("tdp_mmu_zap_leafs", "root=0xffff8946134bab80 start=0x0 end=0x200 can_yield=1 flush=0")
         .spte(1, 1, leaf4k(1), 0).yield_(write=True).spte(0, 2, leaf2m(3), 0).ret("tdp_mmu_zap_leafs", args="ret=1")
         .prepare_zap(0, 1).raw("CPU:1 [LOST 3 EVENTS]")
         .raw("      kvm-nx-lpage-re-99      [001] d..1.     2.000000: kvm_mmu_zap_all_fast: kvm-mmu-valid-gen 0 used_pages 1"))
    return t.text().encode()


def _kprobe_lines(sep: str) -> str:
    """trace-cmd (sep '-') or perf (sep ' ') lines with raw kprobe addresses."""
    return (f"            qemu{sep}7 [000]     1.000001: zap_leafs_enter:     (ffffffffc0a00090) root=0xffff8946134bab80 "
            f"start=0x4000\n"
            f"            qemu{sep}7 [000]     1.000002: kvm_tdp_mmu_spte_changed: as id 0 gfn 4000 level 1 old_spte 800 "
            f"new_spte 0\n"
            f"            qemu{sep}7 [000]     1.000009: zap_leafs_exit:      (ffffffffc0a00090 <- ffffffffc0a00074) ret=1\n")


SEEDS: dict[str, bytes] = {
    "tracefs": _tracefs_seed(),
    "trace-cmd": (DATA / "trace-cmd-report.txt").read_bytes() + _kprobe_lines("-").encode()
    + b"CPU:0 [12 EVENTS DROPPED]\n" + (DATA / "trace-cmd-report-instance.txt").read_bytes().split(b"\n", 1)[1],
    "perf": (DATA / "perf-script.txt").read_bytes() + (DATA / "perf-script-lost.txt").read_bytes()
    + _kprobe_lines(" ").encode(),
}
FORMATS = tuple(SEEDS)
TOKENS = ["kvm_tdp_mmu_spte_changed: ", "kvm_mmu_get_page: ", "kvm_mmu_prepare_zap_page: ", "kvmmmu:", "as id ",
          " gfn ", " level ", " old_spte ", " new_spte ", "sp gen ", " l4 ", " root ", " sync", " new", "CPU:",
          " [LOST ", " EVENTS]", " EVENTS DROPPED]", "[FAILED TO PARSE] ", "role=", "gfn=", "created=", "<- ",
          "(", ")", "+0x0/0x1e0 [kvm]", "0x", "ffffffffc0a00090", "-", " [000] ", " [999999] ", "...1. ", ": ",
          "1.000001", "99999999999999999999.1", "\n", "\t", " ", "#", "cpus=2\n", "PERF_RECORD_LOST lost ", "\x00",
          "\xff", "é", "\r", "ret=", "=", "9" * 25, "-1"]


@st.composite
def mutated(draw, fmt: str) -> bytes:
    """A seed with a few byte-level edits: replace, insert (bytes or trace tokens), delete, duplicate, cut."""
    data = bytearray(SEEDS[fmt])
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["replace", "insert", "token", "delete", "dup", "cut"]))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if op == "replace":
            data[i] = draw(st.integers(0, 255))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "token":
            data[i:i] = draw(st.sampled_from(TOKENS)).encode("utf-8", errors="surrogateescape")
        elif op == "delete":
            del data[i:i + draw(st.integers(1, 40))]
        elif op == "dup":
            j = draw(st.integers(i, min(len(data), i + 200)))
            data[j:j] = data[i:j]
        else:
            del data[i:]
    return bytes(data)


@st.composite
def made_up(draw) -> bytes:
    """Lines assembled from trace tokens: shapes no seed has."""
    lines = draw(st.lists(st.lists(st.sampled_from(TOKENS), min_size=1, max_size=14).map("".join), min_size=1,
                          max_size=12))
    return "\n".join(lines).encode("utf-8", errors="surrogateescape")


@functools.lru_cache(maxsize=None)
def _parser(fmt: str):
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "ks").write_text(KALLSYMS)
        return formats.line_parser(fmt, kallsyms=Path(d) / "ks")


def _parse_block(fmt: str, data: bytes) -> None:
    data = data if data.endswith(b"\n") else data + b"\n"
    try:
        parsed = _parser(fmt)(tracefs.split_lines(data), 0)
        chunk = decode(parsed.events) if parsed.events.num_rows else None
    except TdpError:
        if fmt == "tracefs" and fastscan.available():  # the native path refuses the same block
            try:
                fastscan.scan_block(data)
            except TdpError:
                raise
            raise AssertionError("the native scanner read a block the pure parser refuses")
        raise
    if fmt == "tracefs" and fastscan.available():
        native = fastscan.scan_block(data)  # raises nothing the pure path did not
        assert native.events == parsed.events.num_rows
        assert native.unparsed == parsed.unparsed and native.lost == parsed.lost
        if chunk is not None:
            got = native.chunk
            sp = got.sptes if isinstance(got.sptes, pd.DataFrame) else got.sptes.to_pandas()
            assert sp[["seq", "ts", "gfn", "level", "old_spte", "new_spte"]].reset_index(drop=True).equals(
                chunk.sptes[["seq", "ts", "gfn", "level", "old_spte", "new_spte"]].reset_index(drop=True).astype(
                    sp[["seq", "ts", "gfn", "level", "old_spte", "new_spte"]].dtypes))
            n_markers = len(got.markers) + (got.marker_table.num_rows if got.marker_table is not None else 0)
            assert n_markers == len(chunk.markers) and len(got.calls) == len(chunk.calls)
            assert got.counts == chunk.counts and got.unknown == chunk.unknown


@settings(max_examples=1500, deadline=None, derandomize=True, database=None)
@given(fmt=st.sampled_from(FORMATS), data=st.data())
def test_line_parsers_and_decoder_on_mutations(fmt, data):
    blob = data.draw(mutated(fmt))
    try:
        _parse_block(fmt, blob)
    except TdpError as exc:
        assert exc.line().strip() and "\n" not in exc.line()


@settings(max_examples=600, deadline=None, derandomize=True, database=None)
@given(fmt=st.sampled_from(FORMATS), blob=made_up())
def test_line_parsers_and_decoder_on_made_up_lines(fmt, blob):
    try:
        _parse_block(fmt, blob)
    except TdpError as exc:
        assert exc.line().strip() and "\n" not in exc.line()


def _damaged(packed: bytes, damage: int) -> bytes:
    """The compressed stream with one byte changed or its end cut (damage 0: as it is)."""
    if not damage or len(packed) < 12:
        return packed
    b = bytearray(packed)
    at = 10 + damage % (len(b) - 10)
    if damage % 3 == 0:
        return bytes(b[:at])
    b[at] ^= 1 + damage % 255
    return bytes(b)


def _import(blob: bytes, fmt: str, compress: str, naming: str, damage: int = 0) -> None:
    COUNTER["cases"] += 1
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "trace.txt"
        packed = {"gz": gzip.compress, "xz": lzma.compress, "": bytes}
        if compress == "zst":
            import zstandard

            packed["zst"] = zstandard.ZstdCompressor().compress
        src.write_bytes(_damaged(packed[compress](blob), damage if compress else 0))
        (Path(d) / "ks").write_text(KALLSYMS)
        (Path(d) / "ke").write_text(KPROBE_EVENTS)
        opts = {"kallsyms": Path(d) / "ks"} if naming == "kallsyms" else {"kprobe_events": Path(d) / "ke"}
        out = Path(d) / "c.tdp"
        try:
            import_file(src, out, fmt=fmt, kernel_release="6.1.0" if len(blob) % 2 else None, **opts)
        except TdpError as exc:
            COUNTER["clean_errors"] += 1
            assert exc.line().strip() and "\n" not in exc.line()
            assert not out.exists() or (out / "meta.json").exists()  # never a directory that is not a capture
            return
        import tdptrace

        summarize(tdptrace.open(out))  # what was imported can be analysed


CASES = int(os.environ.get("TDPTRACE_FUZZ_CASES", "150"))
COUNTER = {"cases": 0, "clean_errors": 0}


@settings(max_examples=CASES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(fmt=st.sampled_from(FORMATS), auto=st.booleans(), compress=st.sampled_from(["", "gz", "xz", "zst"]),
       naming=st.sampled_from(["kallsyms", "kprobe_events"]), damage=st.one_of(st.just(0), st.integers(1, 10_000)),
       data=st.data())
def test_import_file_on_mutations(fmt, auto, compress, naming, damage, data):
    blob = data.draw(st.one_of(mutated(fmt), made_up(), st.binary(max_size=300)))
    _import(blob, "auto" if auto else fmt, compress, naming, damage)


def test_import_fuzz_ran_its_budget():
    """The whole-import fuzzer above ran its cases (the count a release check reports)."""
    print(f"import fuzz: {COUNTER['cases']} cases, {COUNTER['clean_errors']} refused with one line")
    assert COUNTER["cases"] >= CASES


def test_cli_bad_inputs_are_one_line(tmp_path, capsys):
    """A sample of bad inputs through the command line: non-zero exit, one line on stderr, nothing left behind."""
    from tdptrace.cli import main

    cases = {
        "empty.txt": b"",
        "blank.txt": b"\n\n   \n",
        "garbage.bin": os.urandom(2048),
        "unknown.txt": b"Nov 25 10:00:00 host kernel: something\n" * 5,
        "cut.xz": lzma.compress(SEEDS["perf"])[:-30],
        "binary.gz": gzip.compress(os.urandom(500)),
        "trace.dat": b"\x17\x08\x44tracing6\x00" + os.urandom(100),
        "damaged-spte.txt": SEEDS["tracefs"].replace(b"old_spte 0 new_spte", b"old_spte zz new_spte"),
        "only-comments.txt": b"# tracer: nop\n#\n# entries-in-buffer/entries-written: 0/0   #P:2\n",
        "perf-no-map.txt": _kprobe_lines(" ").encode(),
    }
    for name, blob in cases.items():
        f = tmp_path / name
        f.write_bytes(blob)
        rc = main(["import", str(f), "-o", str(tmp_path / f"{name}.tdp")])
        lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert rc != 0, name
        assert len(lines) == 1 and lines[0].startswith("tdptrace: error: "), (name, lines)
        assert not (tmp_path / f"{name}.tdp").exists(), name  # failed imports leave nothing behind
    # And once as a real process: no traceback reaches the terminal.
    p = subprocess.run([sys.executable, "-m", "tdptrace.cli", "import", str(tmp_path / "cut.xz"), "-o",
                        str(tmp_path / "x.tdp")], capture_output=True, text=True)
    assert p.returncode != 0 and "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1

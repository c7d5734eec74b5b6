"""What the importer does with input no real trace holds: decimal 64-bit pointers (a '%si:u64' kprobe fetch),
damaged compressed files, a line longer than a block, a kallsyms with an absurd symbol name, and event names
that are kernel addresses. Each gives the safe outcome: imported and hashed, or one line and exit 2."""
from __future__ import annotations

import gzip
import json
import lzma
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tdptrace.importers.reader import blocks

TDP = [sys.executable, "-m", "tdptrace.cli"]
KVM = 18446612685283207808  # 0xffff888100000000 + 0x... printed as a u64
ROOT = 18446612685283207810

SPAN = """\
# tracer: nop
        kvmtouch-134     [000] ...1.     3.541398: zap_root_enter: (__tdp_mmu_zap_root+0x0/0x1e0 [kvm]) kvm={kvm} root={root} shared=0 zap_level=1
        kvmtouch-134     [000] ...1.     3.541400: kvm_tdp_mmu_spte_changed: as id 0 gfn 1 level 1 old_spte 2be3e67 new_spte 0
        kvmtouch-134     [000] ...1.     3.541498: zap_root_exit: (kvm_tdp_mmu_zap_invalidated_roots+0x74/0x90 [kvm] <- __tdp_mmu_zap_root) arg1=0x0
"""


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(TDP + list(args), capture_output=True, text=True, env=os.environ | {"COLUMNS": "200"})


def one_line_error(p: subprocess.CompletedProcess, needle: str) -> None:
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], p.stderr


def test_decimal_pointers_are_accepted_and_hashed_like_hex(tmp_path):
    text = SPAN.format(kvm=KVM, root=ROOT) + SPAN.format(kvm=hex(KVM), root=hex(ROOT)).split("\n", 1)[1].replace(
        "3.5414", "3.5424")
    f = tmp_path / "dec.txt"
    f.write_text(text)
    p = run("import", str(f), "-o", str(tmp_path / "d.tdp"), "--kernel", "6.1.0-56-amd64")
    assert p.returncode == 0, p.stderr
    spans = pq.read_table(tmp_path / "d.tdp" / "spans").to_pylist()
    assert len(spans) == 2
    assert spans[0]["root"] == spans[1]["root"] and spans[0]["vm"] == spans[1]["vm"]  # decimal and hex alike
    raw = b"".join(p.read_bytes() for p in (tmp_path / "d.tdp").rglob("*") if p.is_file())
    for value in (KVM, ROOT):
        assert str(value).encode() not in raw and f"{value:x}".encode() not in raw


def _damaged_gz(blob: bytes) -> bytes:
    """A .gz whose deflate data is damaged so that zlib itself fails (not only the CRC check)."""
    good = bytearray(gzip.compress(blob))
    for at in range(12, 200):
        bad = bytearray(good)
        bad[at] ^= 0x55
        try:
            gzip.decompress(bytes(bad))
        except gzip.BadGzipFile:
            continue
        except Exception as exc:  # zlib.error: what used to escape as a traceback
            if type(exc).__name__ == "error":
                return bytes(bad)
    raise AssertionError("no damage position makes zlib fail")


@pytest.mark.parametrize("kind", ["gz-deflate", "gz-cut", "xz-flip", "xz-cut", "zst-flip", "zst-cut"])
def test_damaged_compressed_input_is_one_line(kind, tmp_path):
    import zstandard

    blob = (SPAN.format(kvm=hex(KVM), root=hex(ROOT)) * 2000).encode()
    fmt = kind.split("-")[0]
    packed = {"gz": gzip.compress, "xz": lzma.compress,
              "zst": zstandard.ZstdCompressor(write_checksum=True).compress}[fmt](blob)  # as the zstd tool writes
    if kind == "gz-deflate":
        data = _damaged_gz(blob)
    elif kind.endswith("cut"):
        data = packed[: len(packed) // 2]
    else:
        b = bytearray(packed)
        b[len(b) // 2] ^= 0xFF
        data = bytes(b)
    f = tmp_path / f"t.{fmt}"
    f.write_bytes(data)
    one_line_error(run("import", str(f), "-o", str(tmp_path / "x.tdp")), "")
    assert not (tmp_path / "x.tdp").exists()


def test_a_line_longer_than_a_block_is_read_through_not_held(tmp_path):
    f = tmp_path / "t.txt"
    f.write_bytes(b"a" * 5000 + b"\nline two\n" + b"b" * 3000 + b"\nlast\n" + b"c" * 4000)
    got = list(blocks(f, block_bytes=1000))
    assert b"".join(b.data for b in got) == b"line two\nlast\n"
    assert sum(b.long_lines for b in got) == 3 and got[0].long_line_bytes == 5000
    assert all(len(b.data) <= 2000 for b in got)


def test_huge_line_is_counted_and_memory_stays_bounded(tmp_path):
    """A 48 MiB line (three blocks) among real ones: skipped, counted, said; the import's memory stays near
    its block size instead of growing with the line (the 300 MB case measured 242 MB peak)."""
    good = SPAN.format(kvm=hex(KVM), root=hex(ROOT))
    f = tmp_path / "long.txt"
    with open(f, "wb") as out:
        out.write(good.encode())
        out.write(b"x" * (48 << 20) + b"\n")
        out.write(good.split("\n", 1)[1].replace("3.5414", "3.5424").encode())
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a child of a big test process would report
    # its parent's size.
    code = ("import sys; from tdptrace.cli import main; rc = main(sys.argv[1:]); "
            "print(next(ln.split()[1] for ln in open('/proc/self/status') if ln.startswith('VmHWM:')), "
            "file=sys.stderr); sys.exit(rc)")
    p = subprocess.run([sys.executable, "-c", code, "import", str(f), "-o", str(tmp_path / "l.tdp"), "--kernel",
                        "6.1.0-56-amd64"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "1 lines could not be read, e.g. '<a line of 50,331,648 bytes>'" in p.stderr
    peak_kb = int(p.stderr.strip().splitlines()[-1])
    assert peak_kb < 700_000, peak_kb
    meta = json.loads((tmp_path / "l.tdp" / "meta.json").read_text())
    assert any("longer than 16 MiB were skipped" in n for n in meta["notes"])
    assert meta["events"]["counts"]["kvm_tdp_mmu_spte_changed"] == 2


def test_kallsyms_with_an_absurd_symbol_is_refused_at_once(tmp_path):
    ks = tmp_path / "kallsyms"
    ks.write_text("ffffffffc0a1b2c0 t tdp_mmu_zap_leafs\t[kvm]\nffffffffc0a1b3c0 t " + "x" * 20_000_000 + "\n")
    trace = tmp_path / "tc.txt"
    trace.write_text("cpus=2\n        kvmtouch-134   [000]     3.541398: kvm_mmu_get_page:     sp gen 0 gfn 0 l4 "
                     "8-byte q0 direct wux nxe ad root 0 sync new\n")
    one_line_error(run("import", str(trace), "-o", str(tmp_path / "x.tdp"), "--kallsyms", str(ks)),
                   "line 2 is 20,000,019 characters long")


def test_unknown_event_named_by_an_address_is_not_printed_raw(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text(SPAN.format(kvm=hex(KVM), root=hex(ROOT))
                 + "        kvmtouch-134     [000] ...1.     3.541499: ffff8880a1b2c3d4: hello\n")
    p = run("import", str(f), "-o", str(tmp_path / "u.tdp"), "--kernel", "6.1.0-56-amd64")
    assert p.returncode == 0, p.stderr
    assert "unknown events kept as markers: ptr:" in p.stdout
    assert "ffff8880a1b2c3d4" not in p.stdout + p.stderr

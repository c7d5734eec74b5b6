"""`tdptrace import` of trace-cmd report and perf script text (and of trace.dat / perf.data through the tools).

The reference traces rendered the way each tool prints them must give exactly the figures of EXPECTED.md;
real output of both tools recorded on a kvm_pvm host (tests/data) must import; raw kprobe addresses are named
through kallsyms or kprobe_events; lost-event markers are counted.
"""
from __future__ import annotations

import gzip
import lzma
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from refdata import expected, reference_trace
from traceformats import render

import tdptrace
from tdptrace.errors import BadInput
from tdptrace.importers import detect_format, import_file
from tdptrace.metrics.summary import summarize

DATA = Path(__file__).resolve().parents[1] / "data"
KERNEL = "6.1.0-56-amd64"
SPAN_KEYS = ("function", "start_ns", "duration_ns", "yields", "max_gap_ns", "retained_nonleaf_after")
# Read back from tracefs on the lab host for the reference runs (../shared/data/MANIFEST.md).
MANIFEST_KPROBE_EVENTS = """\
p:tdp/zap_leafs_enter tdp_mmu_zap_leafs root=%si start=%dx end=%cx can_yield=%r8:u8 flush=%r9:u8
r10:tdp/zap_leafs_exit tdp_mmu_zap_leafs ret=$retval:u8
p:tdp/zap_root_enter __tdp_mmu_zap_root root=%si shared=%dx:u8 zap_level=%cx:s32
r10:tdp/zap_root_exit __tdp_mmu_zap_root
p:tdp/kvm_zap_leafs_enter kvm_tdp_mmu_zap_leafs start=%si end=%dx
r10:tdp/kvm_zap_leafs_exit kvm_tdp_mmu_zap_leafs ret=$retval:u8
p:tdp/zap_invalidated_roots kvm_tdp_mmu_zap_invalidated_roots
p:tdp/zap_all kvm_tdp_mmu_zap_all
p:tdp/put_root kvm_tdp_mmu_put_root root=%si shared=%dx:u8
p:tdp/cond_resched_w __cond_resched_rwlock_write
r10:tdp/cond_resched_w_ret __cond_resched_rwlock_write ret=$retval:s32
p:tdp/cond_resched_r __cond_resched_rwlock_read
"""


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tdptrace.cli", *args], capture_output=True, text=True,
                          env=os.environ | {"COLUMNS": "100"})


def one_line_error(p: subprocess.CompletedProcess, needle: str) -> None:
    assert p.returncode != 0
    assert "Traceback" not in p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, p.stderr
    assert needle in lines[0], lines[0]


# ---- the reference traces, as each tool prints them --------------------------------------------------------

@pytest.fixture(scope="module")
def renderings(tmp_path_factory) -> dict[str, Path]:
    """k61-512m-hog as trace-cmd report text (xz) and k61-128m as perf script text, with kallsyms naming their
    kprobe addresses and the lab's kprobe_events."""
    d = tmp_path_factory.mktemp("rendered")
    hog = lzma.open(reference_trace("k61-512m-hog"), "rt").read()
    tc, hog_syms = render(hog, "trace-cmd")
    del hog
    small = lzma.open(reference_trace("k61-128m"), "rt").read()
    pf, small_syms = render(small, "perf")
    files = {"trace-cmd": d / "hog.report.txt.xz", "hog-kallsyms": d / "hog.kallsyms",
             "perf": d / "128m.script.txt", "128m-kallsyms": d / "128m.kallsyms", "kprobe_events": d / "kprobe_events"}
    files["trace-cmd"].write_bytes(lzma.compress(tc.encode(), preset=0))
    files["hog-kallsyms"].write_text(hog_syms)
    files["perf"].write_text(pf)
    files["128m-kallsyms"].write_text(small_syms)
    files["kprobe_events"].write_text(MANIFEST_KPROBE_EVENTS)
    return files


def assert_expected(cap: Path, name: str) -> dict:
    s = summarize(tdptrace.open(cap))
    e = expected(name)
    assert s["zaps_by_level"] == e["zaps_by_level"]
    assert [{k: sp[k] for k in SPAN_KEYS} for sp in s["spans"]] == e["spans"]
    for k in ("count", "spans", "max_gap_ns"):
        assert s["yields"][k] == e["yields"][k]
    assert (s["page_tables"]["allocated"], s["page_tables"]["freed"]) == (e["page_tables"]["allocated"],
                                                                           e["page_tables"]["freed"])
    assert s["lost_events"] == 0
    return s


def test_trace_cmd_report_of_hog_gives_expected(renderings, tmp_path):
    src = renderings["trace-cmd"]
    assert detect_format(src) == "trace-cmd"
    r = import_file(src, tmp_path / "c.tdp", kernel_release=KERNEL, kallsyms=renderings["hog-kallsyms"])
    assert (r.format, r.unparsed, r.unknown) == ("trace-cmd", 0, {})
    s = assert_expected(tmp_path / "c.tdp", "k61-512m-hog")
    sp = s["spans"][0]
    assert (sp["caller"], sp["lock_drops"], sp["gfn_start"], sp["gfn_end"]) == (
        "kvm_tdp_mmu_unmap_gfn_range+0x74/0x90", 7, 0x10000, 0x20000)


@pytest.mark.parametrize("naming", ["kprobe_events", "128m-kallsyms"])
def test_perf_script_of_128m_gives_expected(renderings, tmp_path, naming):
    src = renderings["perf"]
    assert detect_format(src) == "perf"
    opt = {"kprobe_events" if naming == "kprobe_events" else "kallsyms": renderings[naming]}
    r = import_file(src, tmp_path / "c.tdp", kernel_release=KERNEL, **opt)
    assert (r.format, r.unparsed, r.unknown) == ("perf", 0, {})
    s = assert_expected(tmp_path / "c.tdp", "k61-128m")
    assert s["page_tables"]["retained_nonleaf"]["peak"] == 32
    # kprobe_events says which function returned, not who called it.
    assert s["spans"][0]["caller"] == ("?" if naming == "kprobe_events" else "kvm_tdp_mmu_unmap_gfn_range+0x74/0x90")


# ---- real output of both tools (recorded on a kvm_pvm host: shadow MMU, one level-4 root) ---------------------

@pytest.mark.parametrize("name", ["trace-cmd-report.txt", "trace-cmd-report-instance.txt",
                                  "trace-cmd-report-latency.txt", "perf-script.txt"])
def test_real_tool_output(name, tmp_path):
    r = import_file(DATA / name, tmp_path / "c.tdp")
    assert r.format == ("perf" if name.startswith("perf") else "trace-cmd")
    assert (r.events, r.unparsed) == (4, 0)
    cap = tdptrace.open(tmp_path / "c.tdp")
    pt = cap.page_tables
    assert pt["kind"].tolist() == ["alloc", "free", "free"]
    assert pt["level"].tolist() == [4, 4, 4]
    assert pt["gfn"].tolist()[0] == 1
    assert cap.markers["event"].tolist() == ["kvm_mmu_zap_all_fast"]
    assert summarize(cap)["page_tables"]["by_level"] == {"alloc": {"4": 1}, "free": {"4": 2}}


def test_perf_lost_record_is_counted(tmp_path):
    r = import_file(DATA / "perf-script-lost.txt", tmp_path / "c.tdp")
    assert (r.events, r.lost, r.unparsed) == (4, 1045, 0)
    meta = tdptrace.open(tmp_path / "c.tdp").meta
    assert meta.lost_events == {"total": 1045, "per_cpu": {"0": 1045}}


def test_trace_cmd_dropped_markers_are_counted(tmp_path):
    lines = (DATA / "trace-cmd-report.txt").read_text().splitlines()
    text = "\n".join(lines[:2] + ["CPU:1 [37 EVENTS DROPPED]"] + lines[2:4] + ["CPU:0 [EVENTS DROPPED]"]
                     + lines[4:] + ["[5 EVENTS DROPPED]"]) + "\n"
    (tmp_path / "t.txt").write_text(text)
    r = import_file(tmp_path / "t.txt", tmp_path / "c.tdp")
    assert (r.events, r.lost, r.unparsed) == (4, 43, 0)
    cap = tdptrace.open(tmp_path / "c.tdp")
    assert cap.meta.lost_events["per_cpu"] == {"1": 37, "0": 1, "-1": 5}
    assert cap.lost["seq"].tolist() == [1, 3, 4]  # each before the event that follows it


def test_gzip_trace_cmd_text(tmp_path):
    (tmp_path / "t.txt.gz").write_bytes(gzip.compress((DATA / "trace-cmd-report.txt").read_bytes()))
    assert import_file(tmp_path / "t.txt.gz", tmp_path / "c.tdp").events == 4


def test_kvm_plugin_wording_keeps_level_and_gfn(tmp_path):
    text = ("cpus=2\n"
            "            kvmx-10 [001]  10.000001: kvm_mmu_get_page:     existing sp gfn 3fe00 2 q0 direct wux "
            "invalid !pae nxe wp smep root 2 unsync\n"
            "            kvmx-10 [001]  10.000002: kvm_mmu_prepare_zap_page: 1 q3 wux !pae nxe wp root 0 sync\n")
    (tmp_path / "t.txt").write_text(text)
    import_file(tmp_path / "t.txt", tmp_path / "c.tdp")
    pt = tdptrace.open(tmp_path / "c.tdp").page_tables
    assert pt[["kind", "gfn", "level", "root_count", "unsync"]].values.tolist() == [
        ["lookup", 0x3FE00, 2, 2, 1], ["free", 0, 1, 0, 0]]


# ---- naming kprobe addresses --------------------------------------------------------------------------------

def _kprobe_text(tool: str) -> str:
    t = ("            qemu-7 [000] ...1.     1.000001: zap_leafs_enter: (tdp_mmu_zap_leafs+0x0/0x1e0 [kvm]) "
         "root=0xffff8946134bab80 start=0x4000 end=0x8000 can_yield=1 flush=0\n"
         "            qemu-7 [000] ...1.     1.000002: kvm_tdp_mmu_spte_changed: as id 0 gfn 4000 level 1 "
         "old_spte 800 new_spte 0\n"
         "            qemu-7 [000] ...1.     1.000004: cond_resched_w: (__cond_resched_rwlock_write+0x0/0x50)\n"
         "            qemu-7 [000] ...1.     1.000006: cond_resched_w_ret: (tdp_mmu_zap_leafs+0x196/0x1e0 [kvm] "
         "<- __cond_resched_rwlock_write) ret=1\n"
         "            qemu-7 [000] ...1.     1.000009: zap_leafs_exit: (kvm_tdp_mmu_unmap_gfn_range+0x74/0x90 [kvm] "
         "<- tdp_mmu_zap_leafs) ret=1\n")
    return render(t, tool)


@pytest.mark.parametrize("tool", ["trace-cmd", "perf"])
def test_raw_kprobes_without_a_map_fail_in_one_line(tool, tmp_path):
    text, _ = _kprobe_text(tool)
    (tmp_path / "t.txt").write_text(text)
    one_line_error(run("import", str(tmp_path / "t.txt"), "-o", str(tmp_path / "c.tdp")), "--kallsyms")
    assert not (tmp_path / "c.tdp").exists()  # nothing half-written left behind: the same command can be rerun


@pytest.mark.parametrize("tool", ["trace-cmd", "perf"])
def test_raw_kprobes_named_by_kallsyms(tool, tmp_path):
    text, syms = _kprobe_text(tool)
    (tmp_path / "t.txt").write_text(text)
    (tmp_path / "ks").write_text(syms)
    import_file(tmp_path / "t.txt", tmp_path / "c.tdp", kernel_release=KERNEL, kallsyms=tmp_path / "ks")
    s = summarize(tdptrace.open(tmp_path / "c.tdp"))
    sp = s["spans"][0]
    assert (sp["function"], sp["duration_ns"], sp["caller"]) == ("tdp_mmu_zap_leafs", 8000,
                                                                 "kvm_tdp_mmu_unmap_gfn_range+0x74/0x90")
    assert (sp["gfn_start"], sp["gfn_end"], sp["can_yield"]) == (0x4000, 0x8000, 1)
    assert sp["zaps_by_level"] == {"1": {"leaf": 1, "nonleaf": 0}}
    assert (sp["yields"], sp["lock_drops"], sp["max_gap_ns"]) == (1, 1, 3000)


def test_raw_kprobes_named_by_kprobe_events(tmp_path):
    text, _ = _kprobe_text("perf")
    (tmp_path / "t.txt").write_text(text)
    (tmp_path / "ke").write_text("p:tdp/zap_leafs_enter tdp_mmu_zap_leafs root=%si start=%dx end=%cx can_yield=%r8\n"
                                 "r:tdp/zap_leafs_exit kvm:tdp_mmu_zap_leafs ret=$retval\n"
                                 "p:tdp/cond_resched_w __cond_resched_rwlock_write\n"
                                 "r:tdp/cond_resched_w_ret __cond_resched_rwlock_write ret=$retval\n")
    import_file(tmp_path / "t.txt", tmp_path / "c.tdp", kernel_release=KERNEL, kprobe_events=tmp_path / "ke")
    sp = summarize(tdptrace.open(tmp_path / "c.tdp"))["spans"][0]
    assert (sp["function"], sp["duration_ns"], sp["caller"], sp["gfn_start"]) == ("tdp_mmu_zap_leafs", 8000, "?",
                                                                                  0x4000)
    assert (sp["yields"], sp["lock_drops"], sp["max_gap_ns"]) == (1, 1, 3000)


def test_address_outside_kallsyms_is_an_unknown_event(tmp_path):
    text, syms = _kprobe_text("perf")
    # The entry at an address no symbol covers (below the first one).
    text = re.sub(r"(zap_leafs_enter: )\([0-9a-f]+\)", r"\1(ffffffff81000000)", text)
    (tmp_path / "t.txt").write_text(text)
    (tmp_path / "ks").write_text(syms)
    r = import_file(tmp_path / "t.txt", tmp_path / "c.tdp", kallsyms=tmp_path / "ks")
    assert r.unknown == {"tdp:zap_leafs_enter": 1}
    m = tdptrace.open(tmp_path / "c.tdp").markers
    assert m.loc[m["event"] == "tdp:zap_leafs_enter", "detail"].str.startswith("unresolved kprobe (ptr:").all()


def test_bad_kallsyms_and_kprobe_events_files(tmp_path):
    text, _ = _kprobe_text("perf")
    (tmp_path / "t.txt").write_text(text)
    (tmp_path / "zero").write_text("0000000000000000 t tdp_mmu_zap_leafs\t[kvm]\n")
    (tmp_path / "junk").write_text("hello\n")
    one_line_error(run("import", str(tmp_path / "t.txt"), "-o", str(tmp_path / "a.tdp"), "--kallsyms",
                       str(tmp_path / "zero")), "every address is 0")
    one_line_error(run("import", str(tmp_path / "t.txt"), "-o", str(tmp_path / "b.tdp"), "--kallsyms",
                       str(tmp_path / "junk")), "no kallsyms lines")
    one_line_error(run("import", str(tmp_path / "t.txt"), "-o", str(tmp_path / "c.tdp"), "--kprobe-events",
                       str(tmp_path / "junk")), "no kprobe definitions")
    one_line_error(run("import", str(tmp_path / "t.txt"), "-o", str(tmp_path / "d.tdp"), "--kprobe-events",
                       str(tmp_path / "missing")), "no such file")


def test_kprobe_events_parser():
    from tdptrace.importers.kprobe_events import parse_kprobe_events

    ev = parse_kprobe_events(MANIFEST_KPROBE_EVENTS + "-:tdp/old\n# note\nr:probe/x__return kvm:kvm_mmu_zap_all_fast+16\n")
    assert len({id(v) for v in ev.values()}) == 13
    assert ev["tdp:zap_leafs_exit"] == ev["zap_leafs_exit"]
    e = ev["zap_leafs_enter"]
    assert (e.function, e.is_return, e.offset, e.args) == ("tdp_mmu_zap_leafs", False, 0,
                                                          ("root", "start", "end", "can_yield", "flush"))
    x = ev["probe:x__return"]
    assert (x.function, x.is_return, x.offset) == ("kvm_mmu_zap_all_fast", True, 16)


def test_kallsyms_resolve_edges():
    import numpy as np

    from tdptrace.importers.kallsyms import hex_strings, parse_kallsyms

    ks = parse_kallsyms("ffffffffc0a00100 t b\t[kvm]\nffffffffc0a00000 T a\nffffffffc0a00000 T a_alias\n"
                        "0000000000000000 A percpu\n")
    loc, sym = ks.resolve(np.array([0xFFFFFFFFC0A00000, 0xFFFFFFFFC0A000FF, 0xFFFFFFFFC0A00110, 0x10, 0,
                                    0xFFFFFFFFC0A01100], dtype=np.uint64))
    assert loc.to_pylist() == ["a+0x0/0x100", "a+0xff/0x100", "b+0x10/0x1000 [kvm]", None, None, None]
    assert sym.to_pylist() == ["a", "a", "b", None, None, None]
    assert hex_strings(np.array([0, 1, 0xABC, 2**64 - 1], dtype=np.uint64)).to_pylist() == [
        "0", "1", "abc", "ffffffffffffffff"]


# ---- binary traces: the tools are run for us -----------------------------------------------------------------

def test_missing_tool_names_the_package(tmp_path, monkeypatch):
    from tdptrace.importers import formats

    f = tmp_path / "trace.dat"
    f.write_bytes(b"\x17\x08\x44tracing6\x00" + b"\x00" * 64)
    monkeypatch.setattr(formats.shutil, "which", lambda name: None)
    with pytest.raises(BadInput) as exc:
        import_file(f, tmp_path / "c.tdp")
    assert "trace.dat file and trace-cmd is not installed" in exc.value.line()
    assert "apt-get install trace-cmd" in exc.value.line()
    g = tmp_path / "perf.data"
    g.write_bytes(b"PERFILE2" + b"\x00" * 64)
    with pytest.raises(BadInput) as exc:
        import_file(g, tmp_path / "d.tdp")
    assert "apt-get install linux-perf" in exc.value.line()
    assert not (tmp_path / "c.tdp").exists() and not (tmp_path / "d.tdp").exists()


@pytest.mark.skipif(shutil.which("trace-cmd") is None, reason="trace-cmd not installed (apt-get install trace-cmd)")
def test_damaged_trace_dat_is_one_line(tmp_path):
    f = tmp_path / "trace.dat"
    f.write_bytes(b"\x17\x08\x44tracing6\x00" + os.urandom(300))
    one_line_error(run("import", str(f), "-o", str(tmp_path / "c.tdp")), "trace-cmd")
    assert not (tmp_path / "c.tdp").exists()
    assert not list(tmp_path.glob(".tdptrace-report-*"))


@pytest.mark.skipif(shutil.which("perf") is None, reason="perf not installed (apt-get install linux-perf)")
def test_damaged_perf_data_is_one_line(tmp_path):
    f = tmp_path / "perf.data"
    f.write_bytes(b"PERFILE2" + os.urandom(300))
    one_line_error(run("import", str(f), "-o", str(tmp_path / "c.tdp")), "perf")
    assert not list(tmp_path.glob(".tdptrace-report-*"))


def test_unknown_events_are_counted_and_printed(tmp_path):
    lines = (DATA / "perf-script.txt").read_text().splitlines()
    odd = ("        tdptrace 23277 [001]  1936.969300:           sched:sched_switch: prev_comm=tdptrace prev_pid=23277 "
           "==> next_comm=swapper/1 next_pid=0")
    (tmp_path / "s.txt").write_text("\n".join(lines[:2] + [odd, odd] + lines[2:]) + "\n")
    p = run("import", str(tmp_path / "s.txt"), "-o", str(tmp_path / "c.tdp"))
    assert p.returncode == 0, p.stderr
    assert "unknown events kept as markers: sched:sched_switch (2)" in p.stdout
    cap = tdptrace.open(tmp_path / "c.tdp")
    assert cap.meta.events["unknown"] == {"sched:sched_switch": 2}
    assert int((cap.markers["event"] == "sched:sched_switch").sum()) == 2


def test_vcpu_thread_names_and_pid_tid(tmp_path):
    """QEMU's vCPU threads are called 'CPU 0/KVM'; perf prints 'pid/tid' with -F +pid."""
    perf_text = ("       CPU 0/KVM  4321/4325 [001]  10.000001000:  kvmmmu:kvm_tdp_mmu_spte_changed: as id 0 gfn 10 "
                 "level 1 old_spte 800 new_spte 0\n"
                 "       CPU 1/KVM  4326 [000]  10.000002000:  kvmmmu:kvm_tdp_mmu_spte_changed: as id 0 gfn 11 "
                 "level 1 old_spte 800 new_spte 0\n")
    tc_text = ("cpus=2\n"
               "       CPU 0/KVM-4325  [001]  10.000001: kvm_tdp_mmu_spte_changed: as id 0 gfn 10 level 1 old_spte 800 "
               "new_spte 0\n")
    (tmp_path / "p.txt").write_text(perf_text)
    (tmp_path / "t.txt").write_text(tc_text)
    import_file(tmp_path / "p.txt", tmp_path / "p.tdp")
    import_file(tmp_path / "t.txt", tmp_path / "t.tdp")
    p = tdptrace.open(tmp_path / "p.tdp").sptes
    assert p[["comm", "pid", "tid", "cpu", "ts"]].values.tolist() == [["CPU 0/KVM", 4321, 4325, 1, 10_000_001_000],
                                                                      ["CPU 1/KVM", -1, 4326, 0, 10_000_002_000]]
    t = tdptrace.open(tmp_path / "t.tdp").sptes
    assert t[["comm", "tid", "cpu", "ts"]].values.tolist() == [["CPU 0/KVM", 4325, 1, 10_000_001_000]]


@pytest.mark.skipif(shutil.which("perf") is None, reason="perf not installed (apt-get install linux-perf)")
def test_binary_trace_into_a_missing_directory(tmp_path):
    f = tmp_path / "perf.data"
    f.write_bytes(b"PERFILE2" + b"\x00" * 64)
    one_line_error(run("import", str(f), "-o", str(tmp_path / "nope" / "c.tdp")), "create that directory")


def test_zstd_input_whole_multiframe_truncated_and_damaged(tmp_path):
    zstandard = pytest.importorskip("zstandard", reason="zstandard is a dependency of tdptrace (pyproject.toml)")
    text = (DATA / "trace-cmd-report.txt").read_bytes()
    z = zstandard.ZstdCompressor()
    (tmp_path / "one.zst").write_bytes(z.compress(text))
    (tmp_path / "two.zst").write_bytes(z.compress(text) + z.compress(text.split(b"\n", 1)[1]))  # as pzstd writes
    assert import_file(tmp_path / "one.zst", tmp_path / "one.tdp").events == 4
    assert import_file(tmp_path / "two.zst", tmp_path / "two.tdp").events == 8
    (tmp_path / "cut.zst").write_bytes(z.compress(text * 50)[:-9])  # zstandard's own reader stops silently here
    one_line_error(run("import", str(tmp_path / "cut.zst"), "-o", str(tmp_path / "cut.tdp")), "truncated")
    (tmp_path / "bad.zst").write_bytes(b"\x28\xb5\x2f\xfd" + bytes(range(200)))
    one_line_error(run("import", str(tmp_path / "bad.zst"), "-o", str(tmp_path / "bad.tdp")), "cannot decompress")


@pytest.mark.parametrize("name", ["perf-script.txt", "trace-cmd-report.txt"])
def test_truncated_last_line_keeps_the_rest_and_exits_1(name, tmp_path):
    text = (DATA / name).read_text()
    (tmp_path / "t.txt").write_text(text[:-25])  # cut inside the last event line
    p = run("import", str(tmp_path / "t.txt"), "-o", str(tmp_path / "c.tdp"))
    one_line_error(p, "truncated")
    assert p.returncode == 1
    assert len(tdptrace.open(tmp_path / "c.tdp").page_tables) == 2  # every page-table line but the cut last one

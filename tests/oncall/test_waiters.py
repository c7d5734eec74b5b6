"""Waiters: lock:contention_begin/end and kvm:kvm_page_fault .. kvm:kvm_entry become waits, matched to the VM's
mmu_lock by the keyed hash of its struct kvm pointer; per span and per VM in summary --json, in triage and in
the Perfetto export; pairs that cross decoding blocks stay whole."""
from __future__ import annotations

import json

import pandas as pd
from smallcaps import P
from tracegen import Trace

import tdptrace
from tdptrace.capture.hashing import PointerHasher
from tdptrace.capture.waits import WaitPairer
from tdptrace.cli import main
from tdptrace.importers import import_file
from tdptrace.oncall.triage import triage

KVM = 0xFFFF888100A42000
OTHER = 0xFFFF888100B00000


def contention_trace() -> str:
    """A 10 ms write-mode leaf zap of VM KVM by the VMM (tid 100); vCPU threads 140 and 141 of the same VM
    fault meanwhile and wait for its mmu_lock (3 ms and 6 ms, read); 141 also waits 1 ms on another lock, and
    a fault of 140 before the zap takes 50 us."""
    t = Trace()
    v = dict(comm="CPU 1/KVM", tid=140, cpu=1)
    w = dict(comm="CPU 2/KVM", tid=141, cpu=1)
    t._line("kvm_page_fault", "vcpu 1 rip 0x1000 address 0x0000000000345000 error_code 0x6", dt=10, **v)
    t._line("kvm_entry", "vcpu 1, rip 0x1000 intr_info 0x00000000 error_code 0x00000000", dt=50, **v)
    t.enter("tdp_mmu_zap_leafs", f"kvm=0x{KVM:x} start=0x0 end=0x200 can_yield=1 flush=0", dt=1000)  # at 1.001061
    t.spte(1, 1, P | 0x1000, 0, dt=10)
    t._line("kvm_page_fault", "vcpu 1 rip 0x1000 address 0x0000000000346000 error_code 0x6", dt=990, **v)
    t._line("contention_begin", f"{KVM:x} (flags=SPIN|READ)", dt=10, **v)
    t._line("kvm_page_fault", "vcpu 2 rip 0x1000 address 0x0000000000400000 error_code 0x6", dt=990, **w)
    t._line("contention_begin", f"{KVM:x} (flags=SPIN|READ)", dt=10, **w)
    t._line("contention_end", f"{KVM:x} (ret=0)", dt=2000, **v)            # 140 waited 3.0 ms
    t._line("kvm_entry", "vcpu 1, rip 0x1000 intr_info 0x00000000 error_code 0x00000000", dt=90, **v)
    t._line("contention_end", f"{KVM:x} (ret=0)", dt=3910, **w)            # 141 waited 6.0 ms
    t._line("contention_begin", f"{OTHER:x} (flags=SPIN|WRITE)", dt=5, **w)
    t._line("contention_end", f"{OTHER:x} (ret=0)", dt=1000, **w)          # another lock: not mmu_lock
    t.ret("tdp_mmu_zap_leafs", "kvm_tdp_mmu_unmap_gfn_range", "ret=0", dt=1000)
    t._line("kvm_entry", "vcpu 2, rip 0x1000 intr_info 0x00000000 error_code 0x00000000", dt=100, **w)
    t._line("kvm_entry", "vcpu 1, rip 0x1000 intr_info 0x00000000 error_code 0x00000000", dt=100, **v)  # no fault
    return t.text()


def _capture(tmp_path, block_lines: int | None = None):
    f = tmp_path / "w.txt"
    f.write_text(contention_trace())
    import_file(f, tmp_path / "w.tdp", kernel_release="6.1.0-56-amd64")
    return tdptrace.open(tmp_path / "w.tdp")


def test_waits_are_paired_and_hashed_like_the_vm(tmp_path):
    cap = _capture(tmp_path)
    w = cap.table("waits").sort_values(["kind", "tid", "ts"], ignore_index=True)
    locks = w[w["kind"] == "lock"]
    assert locks["wait_ns"].tolist() == [3_000_000, 6_000_000, 1_000_000]
    assert locks["mode"].tolist() == ["read", "read", "write"] and locks["flags"].tolist() == [3, 3, 5]
    vm = cap.spans["vm"].iloc[0]
    assert locks["lock"].tolist()[:2] == [vm, vm] and locks["lock"].iloc[2] != vm
    assert not any(str(KVM)[:6] in str(x) or f"{KVM:x}" in str(x) for x in w.astype(str).to_numpy().ravel())
    faults = w[w["kind"] == "fault"]
    assert faults["wait_ns"].tolist() == [50_000, 3_100_000, 8_115_000] and faults["retries"].tolist() == [0, 0, 0]
    assert faults["vcpu"].tolist() == [1, 1, 2] and faults["address"].tolist()[0] == 0x345000
    assert cap.meta.capabilities["lock_contention"] and cap.meta.capabilities["fault_latency"]


def test_summary_json_waiters_per_span_and_vm(tmp_path, capsys):
    cap = _capture(tmp_path)
    assert main(["summary", str(cap.path), "--json"]) == 0
    w = json.loads(capsys.readouterr().out)["waiters"]
    assert w["recorded"] and w["lock_contention"] and w["fault_latency"]
    lock = w["all"]["lock"]
    assert (lock["count"], lock["tasks"], lock["p50_ns"], lock["max_ns"]) == (2, 2, 6_000_000, 6_000_000)
    assert lock["total_ns"] == 9_000_000
    assert set(lock["by_mode"]) == {"read"}  # the other lock's write wait is not mmu_lock's
    (sp,) = w["per_span"]
    assert sp["span_id"] == 0 and sp["tasks"] == 2 and sp["lock"]["by_mode"]["read"]["count"] == 2
    assert sp["fault"]["count"] == 2 and sp["fault"]["vcpus"] == [1, 2]  # the fault before the zap is not in it


def test_triage_says_who_was_blocked(tmp_path, capsys):
    cap = _capture(tmp_path)
    (s,) = triage(cap).stretches
    assert s.lock_mode == "write" and s.waiters["lock"]["by_mode"]["read"]["tasks"] == 2
    assert s.waiters["lock"]["max_ns"] == 6_000_000
    assert not any("record the waiters" in a["text"] for a in s.actions)  # they were recorded
    assert main(["triage", str(cap.path)]) == 1  # a 10.0 ms write hold, just above the threshold
    out = " ".join(capsys.readouterr().out.split())
    assert ("waiters: 2 tasks waited (CPU 1/KVM, CPU 2/KVM): mmu_lock read: 2 tasks, 2 waits, p50 6.0 ms p99 6.0 ms "
            "max 6.0 ms; vCPU faults: 2 vCPU threads, 2 faults") in out


def test_pairs_survive_block_boundaries():
    h = PointerHasher(b"k" * 16)
    p = WaitPairer(h)
    ev = lambda seq, event, tid=7, lock=KVM, flags=3: {  # noqa: E731
        "ts": seq * 1000, "seq": seq, "cpu": 0, "tid": tid, "pid": 1, "comm": "v", "event": event,
        "lock": lock, "flags": flags if event == "contention_begin" else None, "vcpu": 0, "address": None,
        "error_code": None}

    def frame(rows):
        df = pd.DataFrame(rows)
        for c, t in (("lock", "UInt64"), ("flags", "Int64"), ("vcpu", "Int64"), ("address", "UInt64"),
                     ("error_code", "UInt64")):
            df[c] = df[c].astype(t)
        return df

    a = p.add(frame([ev(1, "kvm_page_fault"), ev(2, "contention_begin")]))
    assert a.empty
    b = p.add(frame([ev(5, "contention_end"), ev(6, "kvm_entry"), ev(7, "kvm_page_fault", tid=8)]))
    assert b["wait_ns"].tolist() == [3000]  # the fault is held until it is known not to be retried
    # tid 7 faults again on the same address right after its entry: KVM retried it (RET_PF_RETRY)
    c = p.add(frame([ev(9, "kvm_page_fault"), ev(10, "kvm_entry"), ev(12, "kvm_page_fault"), ev(13, "kvm_entry")]))
    assert c.empty
    d = p.add(frame([{**ev(20, "kvm_page_fault"), "address": 0x5000}, ev(21, "kvm_entry")]))
    assert (d["ts"].tolist(), d["end_ts"].tolist(), d["retries"].tolist()) == ([1000], [13_000], [2])
    e = p.close()
    assert sorted(zip(e["tid"], e["end_ts"].isna(), e["retries"])) == [(7, False, 0), (8, True, 0)]
    assert e.loc[e["tid"] == 7, "address"].tolist() == [0x5000]


def test_export_puts_waiters_on_their_own_tracks(tmp_path):
    from perfetto.protos.perfetto.trace.perfetto_trace_pb2 import Trace as PTrace

    cap = _capture(tmp_path)
    assert main(["export", str(cap.path), "-o", str(tmp_path / "w.perfetto-trace")]) == 0
    tr = PTrace()
    tr.ParseFromString((tmp_path / "w.perfetto-trace").read_bytes())
    names = {p.track_descriptor.name for p in tr.packet if p.HasField("track_descriptor")}
    assert {"mmu_lock waits (tid 140)", "mmu_lock waits (tid 141)", "vCPU faults (tid 140)",
            "vCPU faults (tid 141)"} <= names
    waits = [p.track_event.name for p in tr.packet if p.track_event.name.startswith("wait mmu_lock")]
    assert sorted(waits) == ["wait mmu_lock read", "wait mmu_lock read", "wait mmu_lock write"]

"""A trace's evidence against the kernel it is said to come from: tracepoints, probed functions and SPTE marker
values that exist only in some releases; the wrong --kernel on a real 6.1 trace is refused in one line."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from refdata import reference_trace

from tdptrace.kernel import validate
from tdptrace.kernel.validate import Evidence, KernelContradiction

TDPTRACE = [str(Path(sys.executable).with_name("tdptrace"))]


def test_each_kind_of_evidence_bounds_the_era():
    ev = Evidence()
    ev.add(events=["kvm_tdp_mmu_spte_changed", "kvm_mmu_get_page"], functions=["tdp_mmu_zap_leafs.isra.0"])
    assert ev.era() == ((5, 18), (99, 0))
    ev.add(new_sptes=np.array([0, 0x5A0, 0x134B7827], dtype=np.uint64))
    assert ev.era() == ((5, 18), (6, 10))
    assert validate.contradictions("6.1.0-56-amd64", ev) == []
    assert validate.contradictions("6.12.117+deb12-amd64", ev) == ["the removed marker 0x5a0 in SPTEs (5.13 to 6.9)"]
    seven = Evidence()
    seven.add(events=["kvm_tdp_mmu_spte_changed"], functions=["__handle_changed_spte", "__tdp_mmu_zap_root"],
              new_sptes=np.array([0x80000000000001A0], dtype=np.uint64))
    assert validate.contradictions("7.3.4+deb14-amd64", seven) == []  # __handle_changed_spte proves nothing
    assert validate.contradictions("6.12.117+deb12-amd64", seven) == [
        "the frozen marker 0x80000000000001a0 in SPTEs (7.1 or later)"]
    old = Evidence()
    old.add(functions=["zap_gfn_range", "kvm_tdp_mmu_zap_hva_range"])
    assert validate.contradictions("5.10.0-32-amd64", old) == []
    assert validate.contradictions("6.1.0-56-amd64", old) == [
        "probes on kvm_tdp_mmu_zap_hva_range (5.10 to 5.12)", "probes on zap_gfn_range (5.10 to 5.17)"]
    assert Evidence().era() is None and validate.guess(Evidence()) is None


def test_check_raises_one_line_naming_the_contradiction():
    ev = Evidence()
    ev.add(events=["kvm_tdp_mmu_spte_changed"], functions=["__tdp_mmu_zap_root"])
    with pytest.raises(KernelContradiction) as exc:
        validate.check("5.10.0-32-amd64", ev)
    line = exc.value.line()
    assert exc.value.exit_code == 2 and "\n" not in line
    assert "kvm_tdp_mmu_spte_changed events (5.11 or later)" in line and "__tdp_mmu_zap_root" in line
    validate.check("6.1.0-56-amd64", ev)  # fits: no exception
    assert validate.guess(ev) == ("kernel release not given; the trace's evidence (kvm_tdp_mmu_spte_changed events, "
                                  "probes on __tdp_mmu_zap_root) says 5.18 or later")


def test_wrong_kernel_import_of_a_real_61_trace_exits_2_with_one_line(tmp_path):
    out = tmp_path / "x.tdp"
    run = subprocess.run(TDPTRACE + ["import", "--kernel", "5.10.0-32-amd64", str(reference_trace("k61-128m")),
                                     "-o", str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in run.stderr
    assert "--kernel 5.10.0-32-amd64 contradicts the trace" in lines[0]
    # refused at the first block that contradicts it: the madvise zap comes before the root teardown
    assert "kvm_tdp_mmu_spte_changed events (5.11 or later)" in lines[0]
    assert "probes on tdp_mmu_zap_leafs (5.18 or later)" in lines[0]
    assert not out.exists()  # nothing half-written left behind


def test_import_without_kernel_states_the_guess(reference_captures):
    import json

    meta = json.loads((reference_captures["k61-128m"] / "meta.json").read_text())
    assert meta["kernel"]["release"] == "6.1.0-56-amd64"  # given: no guess note
    assert not any("evidence" in n for n in meta["notes"])


def test_import_without_kernel_notes_the_era(tmp_path):
    import json

    out = tmp_path / "g.tdp"
    run = subprocess.run(TDPTRACE + ["import", str(reference_trace("k61-128m")), "-o", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    notes = json.loads((out / "meta.json").read_text())["notes"]
    assert any(n.endswith("says 5.18 to 6.9") and "the removed marker 0x5a0" in n for n in notes), notes

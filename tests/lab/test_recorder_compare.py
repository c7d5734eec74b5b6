"""`lab run --record`: the record options that reach the guest's shell, the command it runs, and the
comparison of the recorder's capture with tracefs' (on real captures; no guest booted here)."""
from __future__ import annotations

import shlex
import shutil

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tdptrace.errors import BadInput
from tdptrace.lab import recorder
from tdptrace.lab.scenario import Scenario


def test_record_args_are_split_and_plain_words_only():
    assert recorder.parse_record_args("--sptes -p 12,13 --stack-threshold=2ms") == (
        "--sptes", "-p", "12,13", "--stack-threshold=2ms")
    assert recorder.parse_record_args("") == ()


@pytest.mark.parametrize("text, needle", [
    ("-o /tmp/x.tdp", "-o is set by the lab"), ("--backend=ftrace", "--backend is set by the lab"),
    ("-- sh", "-- is set by the lab"), ("--json", "--json is set by the lab"),
    ("--sptes; reboot", "not a plain option or value"), ("'$(reboot)'", "not a plain option or value"),
    ("--x 'unterminated", "No closing quotation"),
])
def test_bad_record_args_are_refused_in_one_line(text, needle):
    with pytest.raises(BadInput) as e:
        recorder.parse_record_args(text)
    assert needle in e.value.message


def test_guest_command_records_until_the_workload_is_done():
    cmd = recorder.guest_command("bcc", ("--sptes",))
    words = shlex.split(cmd.split(";", 1)[1].split("; echo $?")[0])
    assert words[:8] == ["tdptrace", "record", "-q", "--backend", "bcc", "-o", "/share/out/record.tdp", "--sptes"]
    assert words[8] == "--" and words[9:11] == ["sh", "-c"]
    assert "hook_ready" in words[11] and "workload_done" in words[11]
    assert cmd.endswith("echo $? > /share/out/record_status")
    with pytest.raises(BadInput):
        recorder.guest_command("perf", ())


def test_scenario_checks_record_options():
    sc = Scenario(kernel="6.1", mib=16, record="ftrace", record_args=("--sptes",))
    assert sc.settle_s == recorder.START_S and sc.timeout_s >= recorder.START_S + recorder.FINISH_S
    with pytest.raises(BadInput, match="unknown"):
        Scenario(kernel="6.1", record="perf")
    with pytest.raises(BadInput, match="without --record"):
        Scenario(kernel="6.1", record_args=("--sptes",))
    with pytest.raises(BadInput, match="hook slot"):
        Scenario(kernel="6.1", record="bcc", chroot_cmd="true")


def _rewrite_spans(cap, change) -> None:
    """Apply `change` to every spans chunk of capture `cap` (a copy), keeping the schema."""
    for f in sorted((cap / "spans").glob("*.parquet")):
        t = pq.read_table(f)
        df = change(t.to_pandas())
        pq.write_table(pa.Table.from_pandas(df, schema=t.schema, preserve_index=False), f)


def test_a_capture_agrees_with_itself(reference_captures):
    cap = reference_captures["k61-512m-hog"]
    res = recorder.compare(cap, cap)
    assert res["agree"], [f for f in res["figures"] if not f["same"]]
    names = [f["figure"] for f in res["figures"]]
    assert names[:5] == ["zaps by level", "page tables allocated", "page tables freed", "lost events",
                         "zap functions traced by both"]
    assert "__tdp_mmu_zap_root: longest gap per span (ns)" in names
    assert res["tracefs_summary"] == res["recorder_summary"]


def test_a_longer_gap_than_the_clock_allows_and_a_missing_yield_disagree(reference_captures, tmp_path):
    src = reference_captures["k61-512m-hog"]
    if not (src / "spans").is_dir():
        pytest.skip("capture layout without a spans directory")
    cap = tmp_path / "changed.tdp"
    shutil.copytree(src, cap)
    root = "__tdp_mmu_zap_root"

    def change(df: pd.DataFrame) -> pd.DataFrame:
        first = df.index[df["function"] == root][0]
        df.loc[first, "max_gap_ns"] += 3 * recorder.CLOCK_RESOLUTION_NS
        return df

    _rewrite_spans(cap, change)
    res = recorder.compare(src, cap)
    bad = [f["figure"] for f in res["figures"] if not f["same"]]
    assert bad == [f"{root}: longest gap per span (ns)"] and not res["agree"]
    assert res["probe_skew_ns"] == 0  # the spans' own entries and returns did not move

    shutil.rmtree(cap)
    shutil.copytree(src, cap)

    def within(df: pd.DataFrame) -> pd.DataFrame:  # one tick off: within the clock's resolution
        df.loc[df["function"] == root, "max_gap_ns"] += recorder.CLOCK_RESOLUTION_NS
        return df

    _rewrite_spans(cap, within)
    assert recorder.compare(src, cap)["agree"]


def test_probe_skew_is_the_spread_of_the_offsets_between_the_captures():
    t = pd.DataFrame({"function": ["f", "f", "g"], "ts": [100, 500, 900], "end_ts": [200, 600, 950]})
    r = t.copy()
    r[["ts", "end_ts"]] += 1_000_000  # another clock: a constant offset is no skew
    assert recorder.probe_skew_ns(t, r) == 0
    r.loc[2, "end_ts"] += 700  # one return seen 700 ns later by the recorder
    assert recorder.probe_skew_ns(t, r) == 700
    ty = pd.DataFrame({"ts": [150], "ret_ts": [160]})
    ry = pd.DataFrame({"ts": [150 + 1_000_000 - 300], "ret_ts": [0]})  # a yield without its return
    assert recorder.probe_skew_ns(t, r, ty, ry) == 1000


def test_a_failed_recorder_is_one_line_naming_its_last_words(tmp_path):
    from tdptrace.errors import TdpError

    (tmp_path / "record_status").write_text("1\n")
    (tmp_path / "hook.log").write_text("Traceback ...\nValueError: left keys must be sorted\nchroot command exit 0\n"
                                      "hook exit 0\n")
    with pytest.raises(TdpError) as e:
        recorder.collect(tmp_path, tmp_path)
    assert "exit status 1: 'ValueError: left keys must be sorted'" in e.value.message
    assert "\n" not in e.value.message

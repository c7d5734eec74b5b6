"""A real Prometheus (Debian's package) scrapes `tdptrace serve` on 127.0.0.1 while `tdptrace exercise` runs:
its HTTP API returns what the exercise did, the shipped alert rules load and pass promtool, and figures the host
cannot measure have no series at all."""
from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from exporterfake import families, samples
from livestats import REPO, TDPTRACE, free_port, require_live, run_exercise

DEPLOY = REPO / "tdptrace" / "deploy"


def _tools() -> tuple[str, str]:
    prom, tool = shutil.which("prometheus"), shutil.which("promtool")
    if not prom or not tool:
        pytest.skip("Prometheus is not installed (Debian package prometheus; scripts/bootstrap.sh installs it)")
    return prom, tool


def _get(url: str, timeout: float = 5) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def _query(port: int, expr: str) -> list[dict]:
    d = json.loads(_get(f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})))
    assert d["status"] == "success", d
    return d["data"]["result"]


def _wait(what: str, check, timeout: float = 60, step: float = 0.5, proc: subprocess.Popen | None = None):
    """Poll `check` (returning a value or None) until it gives a value; bounded in time, and over at once
    (with what the process said) when the process it waits for has exited."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what} exited with {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
        try:
            v = check()
        except OSError:
            v = None
        if v:
            return v
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(step)


def _stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@pytest.mark.live
def test_prometheus_scrapes_serve_during_the_exercise(tmp_path: Path):
    require_live()
    prom, tool = _tools()
    exp_port, prom_port = free_port(), free_port()
    shutil.copy(DEPLOY / "tdptrace-alerts.yml", tmp_path / "tdptrace-alerts.yml")
    (tmp_path / "prometheus.yml").write_text(f"""
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
rule_files: [tdptrace-alerts.yml]
scrape_configs:
  - job_name: tdptrace
    static_configs: [{{targets: ["127.0.0.1:{exp_port}"]}}]
""")
    check = subprocess.run([tool, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    serve = subprocess.Popen(TDPTRACE + ["serve", "200ms", "--listen", f"127.0.0.1:{exp_port}"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO)
    server = None
    try:
        _wait("tdptrace serve", lambda: _get(f"http://127.0.0.1:{exp_port}/metrics"), proc=serve)
        server = subprocess.Popen([prom, f"--config.file={tmp_path / 'prometheus.yml'}",
                                   f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                   f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
        up = _wait("the first scrape", lambda: _query(prom_port, 'up{job="tdptrace"} == 1'), proc=server)
        assert up[0]["metric"]["instance"] == f"127.0.0.1:{exp_port}"
        report = run_exercise(32)
        pid = str(report["pid"])
        # the exercise deletes its one memslot once: Prometheus has it, as the exporter serves it
        got = _wait("the exercise's memslot deletion",
                    lambda: _query(prom_port, f'tdptrace_zap_all_fast_total{{vm="{pid}"}} == 1'), timeout=30)
        assert got[0]["metric"]["job"] == "tdptrace" and got[0]["value"][1] == "1"
        fams = families(_get(f"http://127.0.0.1:{exp_port}/metrics").decode())
        alloc = sum(s.value for s in samples(fams, "tdptrace_page_tables_allocated",
                                             "tdptrace_page_tables_allocated_total", vm=pid))
        assert alloc > 0
        q = _wait("page tables allocated", lambda: _query(
            prom_port, f'sum(tdptrace_page_tables_allocated_total{{vm="{pid}"}}) == {alloc:g}'), timeout=30)
        assert float(q[0]["value"][1]) == alloc
        # reason codes, and no series for what this host cannot measure
        avail = {r["metric"]["feature"]: (r["value"][1], r["metric"].get("reason", ""))
                 for r in _query(prom_port, "tdptrace_feature_available")}
        assert set(avail) == {"zaps", "page_tables", "zap_all_fast", "spans", "yields", "gaps", "retained"}
        for feature, (value, reason) in avail.items():
            assert (value == "1") == (reason == ""), (feature, value, reason)
            assert reason in ("", "no_kprobes", "not_attached", "no_tdp_tracepoint", "tdp_mmu_off")
        measured = {"gaps": "tdptrace_mmu_lock_gap_max_1m_seconds", "zaps": "tdptrace_spte_changes_total",
                    "retained": "tdptrace_retained_page_tables"}
        for feature, metric in measured.items():
            present = bool(_query(prom_port, metric))
            assert present == (avail[feature][0] == "1") or (present is False and feature == "zaps"), feature
        # the shipped rules are loaded and evaluate cleanly against the real series
        rules = json.loads(_get(f"http://127.0.0.1:{prom_port}/api/v1/rules"))["data"]["groups"]
        (group,) = [g for g in rules if g["name"] == "tdptrace"]
        assert len(group["rules"]) == 6
        _wait("a rule evaluation", lambda: all(r.get("lastEvaluation", "").startswith("2") for r in
                                               json.loads(_get(f"http://127.0.0.1:{prom_port}/api/v1/rules"))
                                               ["data"]["groups"][0]["rules"]), timeout=20)
        health = {r["name"]: r["health"] for g in json.loads(_get(f"http://127.0.0.1:{prom_port}/api/v1/rules"))
                  ["data"]["groups"] for r in g["rules"]}
        assert set(health.values()) == {"ok"}, health
    finally:
        if server is not None:
            _stop(server)
        _stop(serve)
    for t in ("tdptrace-alerts.yml",):
        out = subprocess.run([tool, "check", "rules", str(DEPLOY / t)], capture_output=True, text=True)
        assert out.returncode == 0, out.stdout
    out = subprocess.run([tool, "test", "rules", "tdptrace-alerts.test.yml"], capture_output=True, text=True,
                         cwd=DEPLOY)
    assert out.returncode == 0 and "SUCCESS" in out.stdout, out.stdout + out.stderr

"""tdptrace/deploy: the alert rules use metrics the exporter really serves, and fire on a long gap; the unit is valid."""
from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from exporterfake import _scrape_text, _snapshot, families

DEPLOY = Path(__file__).resolve().parents[2] / "tdptrace" / "deploy"
RULES = DEPLOY / "tdptrace-alerts.yml"
UNIT = DEPLOY / "tdptrace-serve.service"


def _promtool() -> str:
    tool = os.environ.get("PROMTOOL") or shutil.which("promtool")
    if not tool:
        pytest.skip("promtool is not installed (Debian package prometheus; or set PROMTOOL=/path/to/promtool)")
    return tool


def test_rule_expressions_only_name_metrics_the_exporter_serves():
    yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read the rule file")
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    assert {r["alert"] for r in rules} >= {"TdptraceMmuLockGapAboveThreshold", "TdptraceMaxGapAboveThreshold"}
    served = set()
    for fam in families(_scrape_text(_snapshot(spans=True))).values():
        served |= {s.name for s in fam.samples}
    used = {m for r in rules for m in re.findall(r"\btdptrace_[a-z0-9_]+", r["expr"])}
    assert used and used <= served, used - served
    les = {s.labels["le"] for fam in families(_scrape_text(_snapshot(spans=True))).values() for s in fam.samples
           if "le" in s.labels}
    for r in rules:
        for le in re.findall(r'le="([^"]+)"', r["expr"]):
            assert le in les  # a bucket bound that does not exist would make the alert silently never fire


def test_promtool_accepts_the_rules_and_their_shipped_unit_tests(tmp_path):
    tool = _promtool()
    out = subprocess.run([tool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    shutil.copy(RULES, tmp_path / RULES.name)
    shutil.copy(DEPLOY / "tdptrace-alerts.test.yml", tmp_path / "t.yml")
    out = subprocess.run([tool, "test", "rules", "t.yml"], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0 and "SUCCESS" in out.stdout, out.stdout + out.stderr


def test_alert_thresholds_are_round_values():
    yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read the rule file")
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    found = 0
    for r in rules:
        for v in re.findall(r">\s*([0-9][0-9.]*)", r["expr"]):
            x = float(v)
            found += 1
            mantissa = x / 10 ** math.floor(math.log10(x)) if x else 1
            assert round(mantissa, 9) in (1, 2, 3, 5), (r["alert"], x)  # 0.1 s, 1 s, 30 s; not 0.134217728
    assert found >= 4


def test_unit_file_is_valid_and_listens_on_loopback(tmp_path):
    text = UNIT.read_text()
    exec_start = " ".join(ln.strip().rstrip("\\") for ln in text.split("ExecStart=", 1)[1].splitlines()[:2])
    assert "serve --listen 127.0.0.1:" in exec_start and "--record-dir /var/lib/tdptrace" in exec_start
    import shlex

    import typer

    from tdptrace.cli import app

    words = shlex.split(exec_start)
    serve = typer.main.get_command(app).commands["serve"]
    params = serve.make_context("serve", words[words.index("serve") + 1:]).params  # options of today's serve
    assert params["retain_for"] == 48 * 3600 * 10**9 and params["interval"] == 10**9
    tool = shutil.which("systemd-analyze")
    if not tool:
        pytest.skip("systemd-analyze is not installed")
    exe = Path(os.environ.get("VIRTUAL_ENV", "/usr")) / "bin" / "tdptrace"
    if not exe.exists():
        exe = Path(shutil.which("tdptrace") or "/bin/true")
    unit = tmp_path / "tdptrace-serve.service"
    unit.write_text(text.replace("/usr/local/bin/tdptrace", str(exe)))
    out = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True)
    assert out.returncode == 0 and not out.stderr.strip(), out.stderr

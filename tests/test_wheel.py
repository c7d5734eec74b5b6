"""The wheel built from the repository holds every package and the BPF sources, and a tdptrace installed from it
(not editable, run from outside the repository) imports a trace, summarises it and plots it."""
from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from refdata import REPO, expected, reference_trace


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(REPO)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    (whl,) = out.glob("tdptrace-*.whl")
    return whl


def test_wheel_holds_every_package_and_the_probes(wheel: Path):
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = {str(p.parent.relative_to(REPO)) for p in (REPO / "tdptrace").rglob("__init__.py")}
    missing = [d for d in packages if f"{d}/__init__.py" not in names]
    assert not missing, f"wheel lacks {missing}"
    for src in (REPO / "probes").glob("*"):
        if src.suffix in (".c", ".h"):
            assert f"tdptrace/probes/{src.name}" in names
    assert "tdptrace/lab/kvmtouch.c" in names and "tdptrace/deploy/tdptrace-alerts.yml" in names


def test_installed_wheel_imports_summarises_and_plots(wheel: Path, tmp_path: Path):
    trace = reference_trace("k61-256m-thp")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    # Dependencies come from this environment (a .pth line adds its site-packages, whose own .pth files,
    # the editable install among them, are not processed); tdptrace itself only from the wheel.
    purelib = Path(sysconfig.get_paths()["purelib"])
    vpy = venv / "bin" / "python"
    vsite = Path(subprocess.run([str(vpy), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                capture_output=True, text=True, check=True).stdout.strip())
    (vsite / "deps.pth").write_text(f"{purelib}\n/usr/lib/python3/dist-packages\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(vpy), "install", "-q", "--no-deps", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    tdp = venv / "bin" / "tdptrace"
    where = subprocess.run([str(vpy), "-c", "import tdptrace.metrics.summary, tdptrace.probes as p; print(p.__file__)"],
                           cwd=tmp_path, capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(str(vsite)), where
    cap = tmp_path / "thp.tdp"
    run = lambda *a: subprocess.run([str(tdp), *a], cwd=tmp_path, capture_output=True, text=True, timeout=300)  # noqa: E731
    r = run("import", str(trace), "-o", str(cap), "--kernel", "6.1.0-56-amd64")
    assert r.returncode == 0, r.stderr
    r = run("summary", str(cap), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["zaps_by_level"] == expected("k61-256m-thp")["zaps_by_level"]
    r = run("plot", str(cap), "-o", str(tmp_path / "figs"))
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "figs").glob("*.png"))) == 4

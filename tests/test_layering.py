"""Data flows one way and the analysis side stays light: recorder, capture and metrics import neither
typer nor matplotlib, and nothing imports bcc until a live command needs it."""
from __future__ import annotations

import subprocess
import sys

MODULES = ["tdptrace.capture", "tdptrace.metrics.summary", "tdptrace.importers", "tdptrace.assemble",
           "tdptrace.spans", "tdptrace.pagetables"]


def test_core_modules_do_not_import_ui_or_bcc():
    code = ("import sys\n" + "".join(f"import {m}\n" for m in MODULES) +
            "bad = [m for m in ('typer', 'matplotlib', 'bcc', 'rich') if m in sys.modules]\n"
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_cli_help_does_not_import_bcc_or_matplotlib():
    code = ("import sys\nfrom tdptrace import cli\n"
            "print(','.join(m for m in ('bcc', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""

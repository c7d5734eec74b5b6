"""Imports run one way: kernel facts <- capture <- writers (importers, sim, live) and metrics <- on-call <- lab
<- commands <- cli, never upward, never in a circle, and commands never import each other. The analysis side
stays light: recorder, capture and metrics import neither typer nor matplotlib, nothing imports bcc until a
live command needs it. Checked from the modules' own import statements (function-level ones included)."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "tdptrace"

# Layer of each top-level part of the package, and the layers each may import.
BASE = "base"
ALLOWED: dict[str, set[str]] = {
    BASE: set(),
    "kernel": {BASE},
    "capture": {BASE, "kernel"},
    "importers": {BASE, "kernel", "capture"},
    "sim": {BASE, "kernel", "capture"},
    "live": {BASE, "kernel", "capture", "importers"},
    "metrics": {BASE, "kernel", "capture"},
    "oncall": {BASE, "kernel", "capture", "metrics", "sim"},
    "lab": {BASE, "kernel", "capture", "importers", "sim", "live", "metrics", "oncall"},
    "api": {BASE, "kernel", "capture", "importers", "live", "metrics"},
    "options": {BASE},
    "commands": {BASE, "kernel", "capture", "importers", "sim", "live", "metrics", "oncall", "lab", "options", "api"},
    "cli": {BASE, "commands"},
}
# Single modules at the top of the package, by layer; anything else there is base (small leaf helpers).
TOP_MODULES = {"cli": "cli", "options": "options", "api": "api", "__init__": "api"}


def layer_of(module: str, package: Path = PACKAGE) -> str:
    parts = module.split(".")[1:]
    if not parts:
        return "api"
    if (package / parts[0]).is_dir():
        return parts[0] if parts[0] in ALLOWED else BASE
    return TOP_MODULES.get(parts[0], BASE)


def module_name(path: Path, package: Path = PACKAGE) -> str:
    rel = path.relative_to(package.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path, package: Path = PACKAGE) -> list[tuple[str, int]]:
    """Every tdptrace module `path` imports (from X import Y resolved to X.Y when Y is a module)."""
    tree = ast.parse(path.read_text())
    me = module_name(path, package)
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "tdptrace"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = me.split(".") if is_pkg else me.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "tdptrace":
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                is_module = (package.parent / Path(*sub.split("."))).with_suffix(".py").exists() or \
                    (package.parent / Path(*sub.split(".")) / "__init__.py").exists()
                out.append((sub if is_module else target, node.lineno))
    return out


def modules(package: Path = PACKAGE) -> dict[str, Path]:
    return {module_name(p, package): p for p in package.rglob("*.py")}


def upward_imports(package: Path = PACKAGE) -> list[str]:
    """'file:line: layer imports module (layer)' for every import that is not allowed."""
    bad = []
    for mod, path in modules(package).items():
        mine = layer_of(mod, package)
        for target, line in imports_of(path, package):
            theirs = layer_of(target, package)
            if target == "tdptrace" or theirs == mine:
                continue  # the package root for __version__; sideways within one part is checked below
            if theirs not in ALLOWED[mine]:
                bad.append(f"{path.relative_to(package.parent)}:{line}: {mine} imports {target} ({theirs})")
    return bad


def test_imports_only_run_downward():
    bad = upward_imports()
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_commands_never_import_each_other():
    bad = [f"{p.name}:{line} imports {t}" for m, p in modules().items() if m.startswith("tdptrace.commands.")
           for t, line in imports_of(p) if t.startswith("tdptrace.commands.")]
    assert not bad, bad


def test_no_import_cycles():
    graph = {m: {t for t, _ in imports_of(p) if t != m and t in modules() and t != "tdptrace"}
             for m, p in modules().items()}
    # a package's __init__ re-exporting its own submodules is not a cycle with them
    for m in graph:
        graph[m] = {t for t in graph[m] if not (m != "tdptrace" and t.startswith(m + ".") and
                                                 modules()[m].name == "__init__.py")}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_checker_sees_an_upward_import(tmp_path):
    """A planted package where capture imports on-call (inside a function) and metrics imports typer-free
    commands: both are flagged, so the test above can fail."""
    pkg = tmp_path / "tdptrace"
    for d in ("capture", "oncall", "metrics", "commands"):
        (pkg / d).mkdir(parents=True)
        (pkg / d / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("__version__ = '0'\n")
    (pkg / "oncall" / "triage.py").write_text("from tdptrace.capture.store import Capture\n")
    (pkg / "capture" / "store.py").write_text("def f():\n    from tdptrace.oncall import triage\n")
    (pkg / "metrics" / "zaps.py").write_text("from tdptrace import __version__\nimport tdptrace.commands.plot\n")
    (pkg / "commands" / "plot.py").write_text("from tdptrace.metrics.zaps import x\n")
    bad = upward_imports(pkg)
    assert bad == ["tdptrace/capture/store.py:2: capture imports tdptrace.oncall.triage (oncall)",
                   "tdptrace/metrics/zaps.py:2: metrics imports tdptrace.commands.plot (commands)"] or \
        sorted(bad) == sorted(["tdptrace/capture/store.py:2: capture imports tdptrace.oncall.triage (oncall)",
                               "tdptrace/metrics/zaps.py:2: metrics imports tdptrace.commands.plot (commands)"])


MODULES = ["tdptrace.capture", "tdptrace.metrics.summary", "tdptrace.importers", "tdptrace.capture.assemble",
           "tdptrace.capture.spans", "tdptrace.capture.pagetables", "tdptrace.live.bcc_recorder",
           "tdptrace.metrics.stretches", "tdptrace.api", "tdptrace.capture.frames"]


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

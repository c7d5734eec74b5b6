"""Package discovery: every tdptrace.* package is found automatically; the top-level probes/ directory (BPF C
sources) is installed as tdptrace.probes. The importer's native scanner, the pointer scrubber's prefilter and the retained-table pass are compiled where a C compiler is
present (optional: without one the pure path reads the same figures). Everything else is in pyproject.toml."""
from setuptools import Extension, find_packages, setup

setup(
    packages=find_packages(include=["tdptrace", "tdptrace.*"]) + ["tdptrace.probes"],
    package_dir={"tdptrace.probes": "probes"},
    ext_modules=[Extension("tdptrace.importers._tracefs_scan", ["tdptrace/importers/_tracefs_scan.c"],
                           extra_compile_args=["-O2"], optional=True),
                 Extension("tdptrace.capture._address_scan", ["tdptrace/capture/_address_scan.c"],
                           extra_compile_args=["-O2"], optional=True),
                 Extension("tdptrace.capture._pagetables_scan", ["tdptrace/capture/_pagetables_scan.c"],
                           extra_compile_args=["-O2"], optional=True)],
)

"""Package discovery: every tdptrace.* package is found automatically; the top-level probes/ directory (BPF C
sources) is installed as tdptrace.probes. Everything else is in pyproject.toml."""
from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["tdptrace", "tdptrace.*"]) + ["tdptrace.probes"],
    package_dir={"tdptrace.probes": "probes"},
)

"""Nothing in the repository points at a file it does not contain, and every `docs/X.md "Section"` names a
heading of that document. Checked over the tracked files (git ls-files): relative Markdown links and their
#anchors, path-like references (docs/, tests/, probes/, bench/, analysis/, scripts/, tdptrace/), bare *.md
names, and the notes kept outside the repository while the project was written, which a user never has.
The reference traces beside the repository may be named only by the tests and benchmarks that read them."""
from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Top-level directories whose paths, written out in text, must name a tracked file or directory.
PATH_ROOTS = ("docs", "tests", "probes", "bench", "analysis", "scripts", "tdptrace")
# Files that hold no text worth reading for references.
BINARY_SUFFIXES = {".png", ".parquet", ".xz", ".gz", ".zst", ".whl", ".pyc"}
# Notes the project was written from; a user of the project never has them. Spelled apart so that this file
# does not name them itself.
FOREIGN_NOTES = re.compile(r"\b(?:KERNEL|METRICS|LAB|STYLE)" r"\.md\b")
# The lab's reference traces and their figures live beside the repository (too large to commit); only code
# that reads them (tests, benchmarks) may point there.
REFERENCE_DATA = re.compile(r"(?:/work/shared|\.\./shared)\b(?:/[\w.-]+)*|\b(?:EXPECTED|MANIFEST)\.md\b")
READERS_OF_REFERENCE_DATA = ("tests/", "bench/")

_PATH = re.compile(r"(?<![\w./~$-])((?:%s)/[\w./-]*[\w/])" % "|".join(PATH_ROOTS))
_BARE_MD = re.compile(r"(?<![\w./-])([\w-]+\.md)\b")
_LINK = re.compile(r"!?\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)
# docs/X.md followed (after at least one blank: a quote right after .md closes a string literal) by one or
# more quoted section names, separated by commas or "and"; a name may wrap onto the next (comment) line.
_QUOTED = r'"([^"\n]{1,80}(?:\n[ \t]*(?:#|\*|//)?[ \t]*[^"\n]{0,80})?)"'
_SECTION_REF = re.compile(r"\bdocs/([\w-]+\.md)(?:'s)?[ \t]+((?:%s(?:\s*,\s*|\s+and\s+|,\s+and\s+)?)+)" % _QUOTED)


@dataclass(frozen=True)
class Problem:
    """One reference that does not resolve: where it is and what is wrong."""

    path: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.what}"


def tracked_files(root: Path = REPO) -> list[str]:
    """The repository's tracked files, as paths relative to `root`."""
    out = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True).stdout
    return sorted(p for p in out.decode().split("\0") if p)


def _text(root: Path, rel: str) -> str | None:
    if Path(rel).suffix in BINARY_SUFFIXES:
        return None
    try:
        data = (root / rel).read_bytes()
    except OSError:  # tracked but deleted in the work tree
        return None
    if b"\0" in data[:4096]:
        return None
    return data.decode("utf-8", errors="replace")


def _line(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _mask_fences(text: str) -> str:
    """`text` with fenced code blocks blanked (newlines kept, so line numbers stay right)."""
    return _FENCE.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: formatting dropped, lower case, punctuation removed, blanks
    to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def headings(text: str) -> list[str]:
    """The headings of a Markdown text, formatting removed, outside code blocks."""
    return [re.sub(r"`([^`]*)`", r"\1", m.group(2)) for m in _HEADING.finditer(_mask_fences(text))]


def anchors(text: str) -> set[str]:
    """Every anchor a Markdown text offers (GitHub numbers repeated headings -1, -2, ...)."""
    seen: dict[str, int] = {}
    out = set()
    for h in _HEADING.finditer(_mask_fences(text)):
        s = slug(h.group(2))
        n = seen.get(s, 0)
        seen[s] = n + 1
        out.add(s if n == 0 else f"{s}-{n}")
    return out


def _section_matches(name: str, heads: list[str]) -> bool:
    """A reference names a heading exactly (case aside), or its start when it ends with '...'."""
    want = " ".join(name.split()).lower()
    heads = [" ".join(h.split()).lower() for h in heads]
    if want.endswith("...") or want.endswith("\u2026"):
        stem = want.rstrip(".\u2026").rstrip()
        return any(h.startswith(stem) for h in heads)
    return want in heads


class Tree:
    """The tracked files of one repository, for resolving references against."""

    def __init__(self, root: Path, files: list[str]) -> None:
        self.root = root
        self.files = set(files)
        self.dirs = {str(p) for f in files for p in Path(f).parents if str(p) != "."}

    def exists(self, rel: str) -> bool:
        rel = rel.rstrip("/")
        return rel in self.files or rel in self.dirs

    def text(self, rel: str) -> str:
        return _text(self.root, rel) or ""


def _normal(path: Path) -> str | None:
    """`path` with '.' and '..' folded, or None when it climbs out of the repository."""
    parts: list[str] = []
    for p in path.parts:
        if p == "..":
            if not parts:
                return None
            parts.pop()
        elif p != ".":
            parts.append(p)
    return "/".join(parts)


def link_problems(tree: Tree, rel: str, text: str) -> list[Problem]:
    """Relative links of a Markdown file that name no tracked file, or an anchor its target lacks."""
    out = []
    body = _mask_fences(text)
    body = re.sub(r"`[^`\n]*`", lambda m: " " * len(m.group(0)), body)
    for m in _LINK.finditer(body):
        target = m.group(1)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        if path:
            dest = _normal(Path(rel).parent / path)
            if dest is None or not tree.exists(dest):
                out.append(Problem(rel, _line(text, m.start()), f"link to {target}: no such file in the repository"))
                continue
        else:
            dest = rel
        if anchor and dest.endswith(".md") and anchor not in anchors(tree.text(dest)):
            out.append(Problem(rel, _line(text, m.start()), f"link to {target}: {dest} has no heading #{anchor}"))
    return out


def path_problems(tree: Tree, rel: str, text: str) -> list[Problem]:
    """Paths into the repository's own directories, written in any text, that name nothing tracked."""
    out = []
    for m in _PATH.finditer(text):
        path = m.group(1).rstrip(".")
        if any(c in text[m.end():m.end() + 1] for c in "{*<$"):  # a pattern or template, not a path
            continue
        if not tree.exists(path):
            out.append(Problem(rel, _line(text, m.start()), f"{path}: no such file or directory in the repository"))
    for m in _BARE_MD.finditer(text):
        name = m.group(1)
        if FOREIGN_NOTES.fullmatch(name) or REFERENCE_DATA.fullmatch(name):
            continue  # reported below, with the reason
        if not any(f == name or f.endswith("/" + name) for f in tree.files):
            out.append(Problem(rel, _line(text, m.start()), f"{name}: no file of that name in the repository"))
    return out


def foreign_problems(rel: str, text: str) -> list[Problem]:
    """Names of notes a user never has, and the reference data outside the tests and benchmarks."""
    out = [Problem(rel, _line(text, m.start()), f"{m.group(0)}: not part of the project; say it in docs/")
           for m in FOREIGN_NOTES.finditer(text)]
    if not rel.startswith(READERS_OF_REFERENCE_DATA):
        out += [Problem(rel, _line(text, m.start()), f"{m.group(0)}: outside the repository (only tests and "
                        "benchmarks read the reference traces)") for m in REFERENCE_DATA.finditer(text)]
    return out


def section_problems(tree: Tree, rel: str, text: str) -> list[Problem]:
    """`docs/X.md "Section"` references whose document is missing or has no such heading."""
    out = []
    for m in _SECTION_REF.finditer(text):
        doc = "docs/" + m.group(1)
        if not tree.exists(doc):
            continue  # path_problems reports the missing document
        heads = headings(tree.text(doc))
        for name in re.findall(_QUOTED, m.group(2)):
            name = re.sub(r"\s*\n[ \t]*(?:#|\*|//)?[ \t]*", " ", name)
            if not _section_matches(name, heads):
                out.append(Problem(rel, _line(text, m.start()), f'{doc} has no section "{name}"'))
    return out


def problems(root: Path, files: list[str]) -> list[Problem]:
    """Every reference in `files` (relative to `root`) that does not resolve."""
    tree = Tree(root, files)
    out = []
    for rel in files:
        text = _text(root, rel)
        if text is None:
            continue
        if rel.endswith(".md"):
            out += link_problems(tree, rel, text)
            # Link targets were just checked (relative to the linking file); blank them for the path check.
            out += path_problems(tree, rel, _LINK.sub(lambda m: " " * len(m.group(0)), text))
        else:
            out += path_problems(tree, rel, text)
        out += foreign_problems(rel, text)
        out += section_problems(tree, rel, text)
    return out


def section_refs(root: Path, files: list[str]) -> list[tuple[str, str]]:
    """(doc, section) for every `docs/X.md "Section"` reference in `files`."""
    refs = []
    for rel in files:
        text = _text(root, rel) or ""
        for m in _SECTION_REF.finditer(text):
            refs += [("docs/" + m.group(1), re.sub(r"\s*\n[ \t]*(?:#|\*|//)?[ \t]*", " ", n))
                     for n in re.findall(_QUOTED, m.group(2))]
    return refs


# --- the repository itself ------------------------------------------------------------------------------


SELF = "tests/test_docs.py"  # plants bad references on purpose, in strings


def test_no_reference_points_outside_the_repository():
    found = problems(REPO, [f for f in tracked_files() if f != SELF])
    assert not found, "references that do not resolve:\n" + "\n".join(map(str, found))


def test_section_references_in_the_code_are_checked():
    """The code cites the docs by section in many places; all of them are seen (and resolve, above)."""
    refs = section_refs(REPO, [f for f in tracked_files() if not f.endswith(".md")])
    docs = {d for d, _ in refs}
    assert {"docs/kernel.md", "docs/metrics.md", "docs/lab.md"} <= docs, docs
    assert ("docs/kernel.md", "Zap functions by era") in refs  # one of them wraps across a line break
    assert len(refs) >= 15, refs


def test_docs_exist_for_what_the_code_rests_on():
    files = set(tracked_files())
    for doc in ("docs/metrics.md", "docs/kernel.md", "docs/lab.md"):
        assert doc in files, doc
    readme = (REPO / "README.md").read_text()
    for doc in ("docs/metrics.md", "docs/kernel.md", "docs/lab.md"):
        assert f"]({doc}" in readme, f"README.md does not link {doc}"


# --- the checker, on planted trees ----------------------------------------------------------------------


def _plant(tmp_path: Path, files: dict[str, str]) -> list[str]:
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return sorted(files)


GOOD = {
    "README.md": "See [metrics](docs/metrics.md#zap-span) and [the lab](docs/lab.md), and [up](#top).\n# Top\n",
    "docs/metrics.md": "# Metrics\n## Zap span\n## Page tables and retained non-leaf tables\n"
                       "```\n## not a heading\n```\n",
    "docs/lab.md": "# The lab\n## Guest workload\n",
    "pkg/spans.py": '"""Spans (docs/metrics.md "Zap span", "Page tables...").\n\nSee docs/lab.md "guest\n'
                    'workload" and tests/t.py."""\nhelp = "the lab in docs/lab.md"\npath = f"probes/{name}.c"\n',
    "tests/t.py": "# Reads ../shared/data/EXPECTED.md, the reference figures.\n",
}


def test_checker_accepts_a_clean_tree(tmp_path):
    files = _plant(tmp_path, GOOD)
    assert problems(tmp_path, files) == []
    assert ("docs/lab.md", "guest workload") in section_refs(tmp_path, files)


@pytest.mark.parametrize(("rel", "text", "expect"), [
    ("docs/a.md", "[x](missing.md)\n", "link to missing.md"),
    ("docs/a.md", "[x](../../outside.md)\n", "link to ../../outside.md"),
    ("docs/a.md", "[x](metrics.md#no-such-heading)\n", "has no heading #no-such-heading"),
    ("docs/a.md", "[x](#not-here)\n", "has no heading #not-here"),
    ("pkg/m.py", "# see docs/nowhere.md\n", "docs/nowhere.md: no such file"),
    ("pkg/m.py", "# as tests/live/test_gone.py checks\n", "tests/live/test_gone.py: no such file"),
    ("pkg/m.c", "/* assumed by tdptrace/pagetables.py */\n", "tdptrace/pagetables.py: no such file"),
    ("pkg/m.py", '"""Gaps (docs/metrics.md "Yield point and gap")."""\n', 'no section "Yield point and gap"'),
    ("pkg/m.py", '# docs/metrics.md "Zap span" and "Builds checked"\n', 'no section "Builds checked"'),
    ("pkg/m.py", '"""docs/metrics.md "Zap\n   spam"."""\n', 'no section "Zap spam"'),
    ("pkg/m.py", "# the definitions of " + "METRICS" + ".md\n", "not part of the project"),
    ("docs/a.md", "As " + "KERNEL" + ".md says.\n", "not part of the project"),
    ("docs/a.md", "Figures of EXPECTED.md.\n", "only tests and benchmarks"),
    ("pkg/m.py", "# /work/shared/data/MANIFEST.md\n", "only tests and benchmarks"),
    ("docs/a.md", "See NOTES.md.\n", "NOTES.md: no file of that name"),
])
def test_checker_reports_a_planted_bad_reference(tmp_path, rel, text, expect):
    files = _plant(tmp_path, {**GOOD, rel: text})
    found = [str(p) for p in problems(tmp_path, files)]
    assert len(found) == 1 and expect in found[0] and found[0].startswith(f"{rel}:"), found


def test_checker_reads_the_files_git_tracks(tmp_path):
    """An untracked file is not part of the repository: a link to it is reported."""
    _plant(tmp_path, {"README.md": "[a](docs/a.md)\n", "docs/a.md": "# A\n"})
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["git", "add", "README.md"], cwd=tmp_path, check=True)
    files = tracked_files(tmp_path)
    assert files == ["README.md"]
    assert [p.what for p in problems(tmp_path, files)] == ["link to docs/a.md: no such file in the repository"]


def test_github_anchors():
    assert slug("Zap span") == "zap-span"
    assert slug("Who zaps, and with which lock") == "who-zaps-and-with-which-lock"
    assert slug("`summary --json` contract") == "summary---json-contract"
    assert slug("Levels and SPTE encoding") == "levels-and-spte-encoding"
    assert anchors("# A\n## A\n") == {"a", "a-1"}

"""docs/commands/: one page per command of the app, every invocation shown in a page parses with the app as
it is (unknown options or values in an old grammar fail), and every option of the command appears on its
page. Commands are enumerated from the typer app, so a new command needs its page."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

from tdptrace.cli import app

DOCS = Path(__file__).resolve().parents[2] / "docs" / "commands"
ROOT = typer.main.get_command(app)


def _leaves(cmd=ROOT, path=()):
    if hasattr(cmd, "commands"):
        for name, sub in cmd.commands.items():
            yield from _leaves(sub, path + (name,))
    else:
        yield " ".join(path), cmd


COMMANDS = dict(_leaves())


def _page(name: str) -> Path:
    return DOCS / f"{name.replace(' ', '-')}.md"


def _invocations(text: str) -> list[str]:
    """Command lines shown in the page's code blocks: '$ tdptrace ...' and '# tdptrace ...' (root)."""
    blocks = re.findall(r"^```\n(.*?)^```", text, re.M | re.S)
    return [m.group(1) for b in blocks for m in re.finditer(r"^[$#] (tdptrace .*)$", b, re.M)]


def _parse(line: str) -> None:
    words = shlex.split(line.split(" | ")[0])[1:]
    target, name = ROOT, "tdptrace"
    while hasattr(target, "commands"):
        name = words.pop(0)
        target = target.commands[name]
    target.make_context(name, words)


def test_every_command_has_a_page_listed_in_the_index():
    index = (DOCS / "README.md").read_text()
    for name in COMMANDS:
        assert _page(name).is_file(), f"docs/commands has no page for tdptrace {name}"
        assert f"]({_page(name).name})" in index, f"docs/commands/README.md does not list {name}"
    pages = {p.name for p in DOCS.glob("*.md")} - {"README.md"}
    assert pages == {_page(n).name for n in COMMANDS}, "a page for a command that no longer exists"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_page_invocations_parse_and_options_are_all_there(name):
    text = _page(name).read_text()
    assert text.startswith(f"# tdptrace {name}\n")
    for section in ("## Synopsis", "## Example", "## Options"):
        assert section in text, f"{name}: no {section}"
    shown = _invocations(text)
    assert any(s.startswith(f"tdptrace {name}") for s in shown), f"{name}: no worked example"
    for line in shown:
        try:
            _parse(line)
        except Exception as exc:  # click's usage errors: the page shows a command line the app refuses
            if "error" not in text.split(line, 1)[1].split("\n", 2)[1]:  # unless the page shows that refusal
                raise AssertionError(f"{name}: `{line}` does not parse: {exc}") from exc
    for p in COMMANDS[name].params:
        if getattr(p, "hidden", False) or p.name == "help":
            continue
        for opt in p.opts + getattr(p, "secondary_opts", []):
            if opt.startswith("-"):
                assert opt in text, f"{name}: option {opt} is not on its page"

"""The `tdptrace` command line: a thin typer app; each command group lives in tdptrace/commands/."""
from __future__ import annotations

import importlib
import sys

from tdptrace import arrowmem

arrowmem.configure()  # before any command module imports pyarrow

import typer  # noqa: E402

from tdptrace import __version__  # noqa: E402
from tdptrace.errors import TdpError, one_line  # noqa: E402

app = typer.Typer(
    name="tdptrace",
    help="Watch the KVM x86 TDP MMU: zap levels, mmu_lock hold time between yields, retained page tables.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Each module in tdptrace/commands/ exposes register(app). Order = order in --help.
COMMAND_MODULES = [
    "record", "exercise", "doctor", "importing", "summary", "triage", "plot", "report", "compare",
    "simulate", "calibrate", "top", "serve", "lab",
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"tdptrace {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """tdptrace: KVM TDP MMU zap tracing."""


def _register_all() -> None:
    for name in COMMAND_MODULES:
        modname = f"tdptrace.commands.{name}"
        try:
            module = importlib.import_module(modname)
        except ModuleNotFoundError as exc:
            if exc.name == modname:  # command not built in this version
                continue
            raise
        module.register(app)


_register_all()


def main(argv: list[str] | None = None) -> int:
    """Console entry point: runs the app and turns TdpError into one line on stderr and an exit status."""
    from tdptrace.textsafe import installed

    with installed():  # whatever a command prints, no control character from its data reaches the terminal
        return _run(argv)


def _run(argv: list[str] | None) -> int:
    try:
        rc = app(args=argv, standalone_mode=False)
    except TdpError as exc:
        print(f"tdptrace: error: {exc.line()}", file=sys.stderr)
        return exc.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        print("tdptrace: aborted", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("tdptrace: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # usage errors (click's ClickException, vendored by recent typer)
        if callable(getattr(exc, "format_message", None)) and isinstance(getattr(exc, "exit_code", None), int):
            ctx = getattr(exc, "ctx", None)
            where = f"; see '{ctx.command_path} -h'" if ctx is not None else ""
            print(f"tdptrace: error: {one_line(exc.format_message()).rstrip('.')}{where}", file=sys.stderr)
            return exc.exit_code
        raise
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":
    sys.exit(main())

"""The one command-line entry point, ``qscale``, with one subcommand per user task.

Each layer owns its subcommands in ``qscale/<layer>/commands.py`` and exposes ``register(app)``;
this module only wires them together, so ``qscale --help`` stays fast (heavy imports happen inside
the commands themselves).
"""

from __future__ import annotations

import importlib

import typer

try:  # typer >= 0.23 vendors click as typer._click; older typer uses click itself
    from typer._click import exceptions as _click
except ImportError:  # pragma: no cover - older typer
    from click import exceptions as _click  # type: ignore[no-redef]

app = typer.Typer(
    name="qscale",
    help="Predict how much a language model loses when it is quantized, before quantizing it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

# Order here is the order of the help listing: from the data to the answers.
_COMMAND_MODULES = (
    "qscale.formats.commands",  # formats
    "qscale.corpora.commands",  # corpora
    "qscale.lm.commands",  # zoo train|list
    "qscale.measure.commands",  # quantize, eval
    "qscale.measure.landscape_commands",  # landscape, outliers
    "qscale.collect.commands",  # collect, runs
    "qscale.laws.commands",  # fit, laws
    "qscale.workflows.commands",  # predict, profile, plan, export, demo, lens
    "qscale.report.commands",  # report
    "qscale.service.commands",  # serve
)


def _register_all() -> None:
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(app)


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", help="Print the qscale version and exit."),
) -> None:
    if version:
        from qscale import __version__

        typer.echo(__version__)
        raise typer.Exit()
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit()


_register_all()


def user_error(err: BaseException) -> bool:
    """A user's mistake, not a bug: one of qscale's own ``ValueError`` subclasses (LoadError, FormatError,
    MethodError, WindowError, CorpusError, LawError, PlanError, ...). A plain ValueError or any other exception
    is a bug and keeps its traceback."""
    return isinstance(err, ValueError) and any(
        c.__module__.startswith("qscale.") and issubclass(c, ValueError) and c is not ValueError
        for c in type(err).__mro__
    )


def environment_error(err: BaseException) -> bool:
    """A machine's problem, not a bug: a disk full or read-only, a path that cannot be opened (``OSError``), an
    unreadable SQLite file (``sqlite3.Error``), a run store that is not one (``StoreError``). One line, exit 2
    (docs/cli.md)."""
    import sqlite3

    from qscale.collect.store import StoreError

    return isinstance(err, (OSError, sqlite3.Error, StoreError))


def usage_message(err: _click.UsageError) -> str:
    """One line for a click usage error: which command, the problem, and where the valid choices are.

    Unknown commands list the commands there are; other mistakes point at that command's ``--help``."""
    ctx = err.ctx
    path = ctx.command_path if ctx is not None else "qscale"
    msg = " ".join(err.format_message().split())
    if msg.startswith("Invalid value: "):  # a command's own BadParameter: the message names the option
        msg = msg[len("Invalid value: ") :]
    if ctx is not None and hasattr(ctx.command, "list_commands") and msg.startswith("No such command"):
        names = [
            n
            for n in ctx.command.list_commands(ctx)
            if not getattr(ctx.command.get_command(ctx, n), "hidden", False)
        ]
        msg += " Valid commands: " + ", ".join(names) + "."
    elif ctx is not None and (
        not isinstance(err, _click.BadParameter) or isinstance(err, _click.MissingParameter)
    ):  # click's own wording (missing or unknown option): the choices are in the command's help
        msg += f" (see '{path} --help')"
    return f"{path}: {msg}"


def _say_error(msg: str) -> None:
    typer.secho(f"error: {msg}", fg="red", err=True)


def main(argv: list[str] | None = None) -> None:
    """The ``qscale`` entry point and THE error path of the CLI.

    A user's mistake prints one line ``error: ...`` naming the problem and the valid choices, exit 2: a click/typer
    usage error (unknown command or option, a bad or missing option value, a command's ``typer.BadParameter``)
    or one of qscale's own ``ValueError`` subclasses (see :func:`user_error`). A bug keeps its traceback."""
    import sys

    try:
        rv = app(args=argv, prog_name="qscale", standalone_mode=False)
    except _click.NoArgsIsHelpError as err:  # `qscale runs`: the help (rich prints it itself)
        text = err.format_message()
        if text.strip():
            typer.echo(text)
        sys.exit(err.exit_code)
    except _click.UsageError as err:
        _say_error(usage_message(err))
        sys.exit(2)
    except _click.ClickException as err:  # e.g. click.FileError: a file the user named cannot be opened
        _say_error(" ".join(err.format_message().split()))
        sys.exit(err.exit_code)
    except typer.Abort:  # Ctrl-C at a prompt, or an EOF
        _say_error("aborted")
        sys.exit(130)
    except Exception as err:
        if not (user_error(err) or environment_error(err)):
            raise
        msg = " ".join(str(err).split()) or type(err).__name__
        _say_error(msg)
        sys.exit(2)
    if isinstance(rv, int) and rv:  # typer.Exit(code) inside a command, without standalone mode
        sys.exit(rv)


if __name__ == "__main__":
    main()

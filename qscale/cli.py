"""The one command-line entry point, ``qscale``, with one subcommand per user task.

Each layer owns its subcommands in ``qscale/<layer>/commands.py`` and exposes ``register(app)``;
this module only wires them together, so ``qscale --help`` stays fast (heavy imports happen inside
the commands themselves).
"""

from __future__ import annotations

import importlib

import typer

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
    "qscale.quantize.commands",  # quantize
    "qscale.quantize.lens_commands",  # lens
    "qscale.measure.commands",  # eval
    "qscale.measure.landscape_commands",  # landscape, outliers
    "qscale.collect.commands",  # collect, runs, demo
    "qscale.laws.commands",  # fit, laws
    "qscale.workflows.commands",  # predict, profile
    "qscale.report.commands",  # report
    "qscale.service.commands",  # serve
)


def _register_all() -> None:
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:  # a layer without commands yet
            if err.name == name:
                continue
            raise
        module.register(app)


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


def main(argv: list[str] | None = None) -> None:
    """The ``qscale`` entry point: a user error prints one line naming the problem (exit 2), a bug its traceback."""
    import sys

    try:
        app(args=argv, prog_name="qscale")
    except Exception as err:
        if not user_error(err):
            raise
        msg = " ".join(str(err).split()) or type(err).__name__
        typer.secho(f"error: {msg}", fg="red", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()

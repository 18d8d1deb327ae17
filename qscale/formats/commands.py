"""``qscale formats``: the format catalogue as a table, or one spec described and validated."""

from __future__ import annotations

import json

import typer


def formats(
    spec: str = typer.Argument(
        None, help="A format spec to describe and validate (e.g. int4-g128, mxfp4, nf4)."
    ),
    set_name: str = typer.Option(
        None, "--set", help="List a named set instead (all, default, int, all-4bit, ...)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List the format catalogue, or describe one format spec (canonical form, bits, grammar)."""
    from qscale.formats import FORMAT_SETS, FormatError, format_set, get_format, list_formats

    try:
        if spec is not None:
            fmt = get_format(spec)
            info = fmt.facts() | {"input": spec, "dict": fmt.to_dict()}
            if as_json:
                typer.echo(json.dumps(info, indent=2))
                return
            typer.echo(f"{spec} -> {fmt}")
            for key in ("family", "element_bits", "granularity", "block", "bits_per_element", "description"):
                typer.echo(f"  {key:17s} {info[key]}")
            return
        fmts = format_set(set_name) if set_name else tuple(get_format(s) for s in list_formats())
    except FormatError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    rows = [f.facts() for f in fmts]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    import shutil
    import textwrap

    # one line per format at any width >= 60: the description is cut with "..." (`qscale formats SPEC` shows it)
    width = max(60, shutil.get_terminal_size((100, 24)).columns)
    head = f"{'spec':<17} {'family':<6} {'bits':>4} {'block':>7} {'b/elem':>7}  "
    lines = [f"qscale formats ({set_name or 'catalogue'}: {len(rows)})", "", head + "description"]
    for r in rows:
        block = (
            str(r["block"])
            if r["block"]
            else {"channel": "channel", "tensor": "tensor"}.get(r["granularity"], "-")
        )
        start = f"{r['spec']:<17} {r['family']:<6} {r['element_bits']!s:>4} {block:>7} {r['bits_per_element']:>7g}  "
        lines.append(start + textwrap.shorten(r["description"], width - len(start), placeholder="..."))
    lines += ["", *textwrap.wrap("named sets: " + ", ".join(FORMAT_SETS), width)]
    typer.echo("\n".join(lines))


def register(app: typer.Typer) -> None:
    """Add ``qscale formats`` to the CLI."""
    app.command("formats")(formats)

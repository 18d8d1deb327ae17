"""``qscale corpora``: list the packaged corpora with their sizes per split."""

from __future__ import annotations

import typer


def corpora_command(
    path: str = typer.Argument(None, help="Optional: a .txt file (documents separated by blank lines)."),
) -> None:
    """List the packaged corpora: bytes, documents and words per split, and licence."""
    from rich.console import Console
    from rich.table import Table

    from qscale.corpora.text import SPLITS, CorpusError, corpus_info, corpus_names, read_split

    names = [path] if path else corpus_names()
    table = Table(title="qscale corpora (documents / words per split)")
    for col in ("corpus", "bytes", "docs", *(f"{s} docs/words" for s in SPLITS), "licence"):
        table.add_column(col, justify="left" if col in ("corpus", "licence") else "right")
    for name in names:
        try:
            info = corpus_info(name)
            cells = []
            for s in SPLITS:
                docs = read_split(name, s)
                cells.append(f"{len(docs):,} / {sum(len(d.split()) for d in docs):,}")
        except CorpusError as err:
            raise typer.BadParameter(str(err)) from err
        table.add_row(info.name, f"{info.bytes:,}", f"{info.n_docs:,}", *cells, info.licence)
    console = Console()
    console.width = max(console.width, 150)
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("corpora")(corpora_command)

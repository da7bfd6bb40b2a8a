"""Commands about the library itself: `info` and the `db` group (schema, integrity)."""

from __future__ import annotations

import click

from ..ann.spec import SearchParams
from ..connect import Location
from ..errors import LibraryError
from ..library import SpaceSelector
from ..upgrade import schema_status, upgrade_schema
from . import output
from .options import (
    db_option,
    db_path,
    json_option,
    open_library,
    refuse_ambiguous,
    search_options,
    space_option,
)
from .progress import progress_bar


@click.command()
@click.option("--failed", is_flag=True, help="List the files that could not be indexed.")
@click.option(
    "--recall",
    is_flag=True,
    help="Measure recall@10 of a space's index against exact search on stored vectors.",
)
@space_option("With --recall: the space (fingerprint prefix, id or label).")
@click.option(
    "--sample",
    default=200,
    show_default=True,
    type=click.IntRange(min=1),
    help="With --recall: stored vectors used as queries.",
)
@search_options
@json_option
@db_option
@click.pass_context
def info(
    ctx: click.Context,
    failed: bool,
    recall: bool,
    space: SpaceSelector | None,
    sample: int,
    params: SearchParams,
    as_json: bool,
) -> None:
    """Show the library: spaces, image counts and index state."""
    with open_library(ctx) as lib:
        if recall:
            refuse_ambiguous(lib, space)
            output.recall_report(
                lib.space(space).recall(sample=sample, params=params), as_json=as_json
            )
        elif failed:
            output.failures(lib.failures(), as_json=as_json)
        else:
            output.library_info(lib.info(), as_json=as_json)


@click.group()
def db() -> None:
    """Inspect, migrate or copy the library database."""


@db.command()
@db_option
@click.pass_context
def current(ctx: click.Context) -> None:
    """Show the schema revision of the library (without changing it)."""
    output.schema(schema_status(db_path(ctx)))


@db.command()
@db_option
@click.pass_context
def upgrade(ctx: click.Context) -> None:
    """Migrate the library to the newest schema (opening a library does this too)."""
    output.schema(upgrade_schema(db_path(ctx)))


@db.command()
@db_option
@click.pass_context
def check(ctx: click.Context) -> None:
    """Verify the library (SQLite integrity, image states, index against store)."""
    with open_library(ctx) as lib:
        report = lib.check()
    output.check_report(report)
    if not report.ok:
        raise click.ClickException(f"{len(report.problems)} problems found")


def _location(ctx: click.Context, param: click.Parameter, value: str) -> Location:
    try:
        return Location.parse(value)
    except LibraryError as err:
        raise click.BadParameter(str(err), ctx=ctx, param=param) from None


@db.command()
@click.argument("source", metavar="SRC", callback=_location)
@click.argument("destination", metavar="DST", callback=_location)
@click.option(
    "--chunk",
    default=5000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Rows read and written at a time.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@json_option
def copy(source: Location, destination: Location, chunk: int, quiet: bool, as_json: bool) -> None:
    """Copy the library at SRC into DST, each a SQLite file or a server's URL
    (postgresql+psycopg://user:password@host:5432/db), either way.

    DST is created (a file) or must be an empty database; a destination that holds a library
    is refused. Every row keeps its id. At the end the row counts of each table and a
    checksum of each space's vectors are compared, and each space's index is rebuilt from
    the copied vectors, so that the copy answers searches at once.
    """
    from ..transfer import CopyMismatch, copy_library

    with progress_bar("copying", show=not (quiet or as_json)) as progress:
        try:
            report = copy_library(source, destination, progress, chunk=chunk)
        except CopyMismatch as err:
            output.copy_report(err.report, as_json=as_json)
            raise
    output.copy_report(report, as_json=as_json)

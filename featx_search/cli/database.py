"""Commands about the library itself: `info` and the `db` group (schema, integrity)."""

from __future__ import annotations

import click

from ..ann.spec import SearchParams
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
    """Inspect or migrate the library database schema."""


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

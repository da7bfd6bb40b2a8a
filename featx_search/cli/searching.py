"""Commands that list the nearest images: `search` (from image files) and `similar` (from
indexed images)."""

from __future__ import annotations

from pathlib import Path

import click

from ..library import SpaceSelector
from ..options import Query
from ..space import StoredImage
from . import output
from .options import db_option, open_library, output_options, query_options, refuse_ambiguous
from .output import ListingOutput


@click.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@query_options(
    "Space to search (fingerprint prefix, id or label); needed when the library has several."
)
@output_options
@db_option
@click.pass_context
def search(
    ctx: click.Context,
    images: tuple[Path, ...],
    query: Query,
    space: SpaceSelector | None,
    out: ListingOutput,
) -> None:
    """Show the indexed images most similar to each of IMAGES (any image files).

    Filters (--under, --glob, --after, --before) are applied inside the index search, so -k
    results come back whenever that many images pass them.
    """
    with open_library(ctx) as lib:
        refuse_ambiguous(lib, space)
        target = lib.space(space)
        results = target.search(list(images), query)
        names = [str(image) for image in images]
        files = [[name] for name in names]
        output.matches("featx-search search", names, files, results, out, combined=query.combine)
        # Once per space: the next search in a fresh process skips torch (docs/guide.md).
        if target.save_query_model() is not None:
            output.note("saved this space's query model: later searches start faster")
        if query.copies and target.save_local_model() is not None:
            output.note("saved this space's local model: later copy searches check ties faster")


@click.command()
@click.argument("images", nargs=-1, required=True, metavar="IMAGE...")
@query_options("Space to search (fingerprint prefix, id or label).")
@output_options
@db_option
@click.pass_context
def similar(
    ctx: click.Context,
    images: tuple[str, ...],
    query: Query,
    space: SpaceSelector | None,
    out: ListingOutput,
) -> None:
    """Show the images most similar to each IMAGE, an indexed file (path) or image id.

    Starts from the stored vectors, so no model is loaded: fast even on a cold start. Each
    image comes first in its own results unless --exclude-self.
    """
    targets: list[StoredImage] = [
        int(image) if image.isdigit() and not Path(image).exists() else image for image in images
    ]
    with open_library(ctx) as lib:
        refuse_ambiguous(lib, space)
        results = lib.similar(targets, query, space=space)
        files = [[lib.image_path(t)] for t in targets]
    output.matches("featx-search similar", images, files, results, out, combined=query.combine)

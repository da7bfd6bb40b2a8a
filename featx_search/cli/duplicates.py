"""The `dups` command: groups of duplicate images with a suggested keeper."""

from __future__ import annotations

import click

from ..dups import DEFAULT_DUP_THRESHOLD, DUP_METHODS, DupMethod
from ..library import SpaceSelector
from . import output
from .options import db_option, open_library, output_options, refuse_ambiguous, space_option
from .output import ListingOutput
from .progress import progress_bar


@click.command()
@click.option(
    "--threshold",
    type=click.FloatRange(-1.0, 1.0),
    default=DEFAULT_DUP_THRESHOLD,
    show_default=True,
    help="Cosine score from which two images count as near-duplicates.",
)
@click.option(
    "--exact",
    is_flag=True,
    help="Only byte-identical files (same SHA-256); needs no space and no index.",
)
@click.option(
    "--decisions",
    is_flag=True,
    help="List the decisions recorded on duplicate groups (in the web app) instead: each "
    "image with its part (keep, duplicate, distinct), to act on with other tools.",
)
@click.option(
    "--candidates",
    type=click.Choice(DUP_METHODS),
    default="auto",
    show_default=True,
    help="How pairs to compare are found: all (every pair; exact, slow past 100,000 images), "
    "ann (a range search over an inverted-file index of the vectors; grows with N, can miss "
    "a few pairs) or auto (ann from 200,000 images).",
)
@click.option(
    "--copies",
    is_flag=True,
    help="Also link images through their copy views (crops, smaller, compressed or turned "
    "copies of one another); the space must be indexed with --copies.",
)
@space_option("Space to compare in (fingerprint prefix, id or label).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@output_options
@db_option
@click.pass_context
def dups(
    ctx: click.Context,
    threshold: float,
    exact: bool,
    decisions: bool,
    candidates: DupMethod,
    copies: bool,
    space: SpaceSelector | None,
    quiet: bool,
    out: ListingOutput,
) -> None:
    """List groups of duplicate images, largest group first, the suggested keeper first.

    The keeper is the image with the most pixels, then the oldest (date taken, else file
    time). Near-duplicates are found by a range search over the space's vectors (no model is
    loaded); identical files always group. `same` marks files identical to the keeper.
    Nothing is ever deleted or moved.
    """
    if decisions:
        with open_library(ctx) as lib:
            output.decisions("featx-search dups --decisions", lib.decisions(), out)
        return
    with open_library(ctx) as lib, progress_bar("comparing", show=not quiet) as bar:
        if not exact:
            refuse_ambiguous(lib, space)
        groups = lib.duplicates(
            threshold,
            exact=exact,
            space=space,
            candidates=candidates,
            progress=bar,
            copies=copies,
        )
    output.duplicates("featx-search dups", groups, out)

"""The ``featx-search`` command line: each command is one API call plus formatting (click).

The group and the entry point live here; the commands live in modules by concern
(:mod:`.indexing`, :mod:`.searching`, :mod:`.duplicates`, :mod:`.database`, :mod:`.models`),
the flags they share in :mod:`.options` and :mod:`.index_options`, and everything they print
in :mod:`.output`.
"""

from __future__ import annotations

import click

from .. import __version__
from . import database, duplicates, indexing, models, searching
from .errors import FeatxGroup
from .options import group_db_option
from .process import log_to_stderr, prepare_environment

__all__ = ["cli", "main"]


@click.group(cls=FeatxGroup, context_settings={"help_option_names": ["-h", "--help"]})
@group_db_option
@click.option("-v", "--verbose", is_flag=True, help="Log what happens (to stderr).")
@click.version_option(__version__, prog_name="featx-search")
def cli(verbose: bool) -> None:
    """Find similar images in a photo library, using features from any layer of a vision model.

    \b
    featx-search index ~/Pictures          embed every image under a folder
    featx-search search photo.jpg -k 5     the 5 most similar indexed images
    featx-search similar photo.jpg --html r.html   the same from an indexed image, as a page
    featx-search dups                      groups of duplicate photos
    featx-search layers resnet50           which layers a model offers
    """
    log_to_stderr(verbose)


for _command in (
    indexing.index,
    indexing.whiten,
    indexing.reindex,
    searching.search,
    searching.similar,
    duplicates.dups,
    database.info,
    database.db,
    models.layers,
    models.eval_command,
):
    cli.add_command(_command)


def main() -> None:
    prepare_environment()  # before anything imports torch
    cli(prog_name="featx-search")

"""Commands for the shards route: `embed` (files to Parquet shards, no library) and `ingest`
(shards into a library)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..config import ExtractorSpec
from ..library import SpaceSelector
from ..options import SyncOptions
from . import index_options as flags
from . import output
from .options import db_option, json_option, open_library, space_option
from .process import stop_on_interrupt
from .progress import progress_bar

if TYPE_CHECKING:
    from ..ingest import Engine


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--out",
    "-o",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder of the shards (made if needed; a folder of the same space's shards is added "
    "to, skipping the files it holds).",
)
@flags.builds_embed_options
@flags.spec_options
@flags.batch_size_option
@flags.micro_batch_option
@flags.workers_option
@flags.engine_options
@flags.threads_option
@flags.device_option
@flags.precision_option
@flags.graph_options
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no summary.")
@json_option
@click.pass_context
def embed(
    ctx: click.Context,
    paths: tuple[Path, ...],
    out: Path,
    spec: ExtractorSpec | None,
    options: SyncOptions,
    engine: Engine | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """Embed the images under PATHS into Parquet shards in --out, without a library.

    For machines (a Ray cluster) that cannot reach the library: each shard holds path, size,
    mtime, content hash and vector of its files (failures with their reason), and
    manifest.json the space's fingerprint and spec. The space comes from the model options,
    as for `index` with the same options (default: the default model); load the shards with
    `featx-search ingest`. Run again after an interruption to resume.
    """
    from ..extract import load_extractor
    from ..shards import write_shards

    extractor = load_extractor(spec or ExtractorSpec(), options.compute)
    show = not (quiet or as_json)
    with progress_bar("embedding", show=show, rate=True) as bar, stop_on_interrupt() as stop:
        report = write_shards(
            paths, extractor, out, options, engine=engine, progress=bar, stop=stop
        )
    output.index_report(report, None, as_json=as_json, quiet=quiet, verbose=False)
    if report.interrupted:
        output.interrupted(report)
        ctx.exit(130)


@click.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--map",
    "mapping",
    multiple=True,
    metavar="FROM=TO",
    help="Paths under FROM in the shards are stored under TO (repeatable), e.g. "
    "/mnt/cluster/photos=/home/me/Pictures.",
)
@space_option("The space to load into (must be the shards' space)  [default: the shards' space]")
@click.option(
    "--new-space",
    is_flag=True,
    help="Add the shards' space to a library that holds other spaces.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no summary.")
@click.option("--verbose", "-v", is_flag=True, help="Also list every file added or updated.")
@json_option
@db_option
@click.pass_context
def ingest(
    ctx: click.Context,
    folder: Path,
    mapping: tuple[str, ...],
    space: SpaceSelector | None,
    new_space: bool,
    quiet: bool,
    verbose: bool,
    as_json: bool,
) -> None:
    """Load the Parquet shards in FOLDER (from `featx-search embed`) into the library.

    Files stored with the same size and mtime are left alone, so ingesting twice changes
    nothing; nothing is removed (run `index` on the folders for that). Shards of another
    space than the library's are refused.
    """
    from ..shards import parse_mapping

    pairs = parse_mapping(mapping)
    show = not (quiet or as_json)
    with (
        open_library(ctx, create=True) as lib,
        progress_bar("ingesting", show=show, rate=True) as bar,
        stop_on_interrupt() as stop,
    ):
        report = lib.ingest(
            folder, space=space, new_space=new_space, mapping=pairs, progress=bar, stop=stop
        )
    output.index_report(report, None, as_json=as_json, quiet=quiet, verbose=verbose)
    if report.interrupted:
        output.interrupted(report)
        ctx.exit(130)

"""Commands that write a space: `index` (sync folders into it), `whiten` and `reindex`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..ann.spec import SearchParams
from ..config import ExtractorSpec
from ..errors import ConfigError
from ..library import SpaceSelector
from ..options import SyncOptions
from . import index_options as flags
from . import output
from .options import (
    db_option,
    index_options,
    json_option,
    open_library,
    refuse_ambiguous,
    space_option,
)
from .process import stop_on_interrupt
from .progress import progress_bar

if TYPE_CHECKING:
    from ..ingest import Engine


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@flags.builds_sync_options
@flags.spec_options
@space_option("Add to this existing space (fingerprint prefix, id or label).")
@flags.batch_size_option
@flags.micro_batch_option
@flags.workers_option
@flags.engine_options
@click.option(
    "--whiten",
    "whiten_dims",
    type=click.IntRange(min=0),
    help="After indexing, learn PCA-whitening to this many dimensions from the space's "
    "vectors (as the `whiten` command does; 0 removes it).",
)
@flags.threads_option
@flags.device_option
@flags.precision_option
@flags.graph_options
@click.option(
    "--dry-run", "-n", is_flag=True, help="List what would be added, updated, moved and removed."
)
@click.option(
    "--copies",
    is_flag=True,
    help="Make the space a copy-mode space: it also keeps views of each image (crops, a "
    "small copy, a compressed copy, turned, grey, mirrored and blurred copies, one with "
    "normalised colours) for `similar --copies` and `dups --copies`; every later index run "
    "keeps them up to date. Costs 31 model runs per image (docs/how-it-works.md#copy-mode).",
)
@flags.retry_failed_option
@flags.prune_empty_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no summary.")
@index_options
@click.option("--verbose", "-v", is_flag=True, help="Also list every file added, moved, ...")
@json_option
@db_option
@click.pass_context
def index(
    ctx: click.Context,
    paths: tuple[Path, ...],
    spec: ExtractorSpec | None,
    space: SpaceSelector | None,
    options: SyncOptions,
    engine: Engine | None,
    whiten_dims: int | None,
    copies: bool,
    dry_run: bool,
    quiet: bool,
    index_spec: str | None,
    max_memory: str | None,
    verbose: bool,
    as_json: bool,
) -> None:
    """Index the images under PATHS (folders, recursively, or single files).

    Only new and changed files are embedded, and moved files keep their vectors. Files that
    cannot be read are recorded as failed (see `info --failed`) and tried again when they
    change. Files gone from a folder are removed, unless the folder cannot be read or is
    empty. Ctrl-C stops after the batches in flight; run the same command again to resume.
    Another --model/--weights/--layer/--pool/--precision makes a second space;
    --micro-batch, --workers, --threads, --device, --channels-last, --freeze and --runtime
    only change the speed.
    """
    whitened = None
    query_model = local_model = None
    with open_library(ctx, create=not dry_run) as lib:
        if spec is None:
            refuse_ambiguous(lib, space)
        if dry_run:
            report = lib.plan(paths, spec, space=space, options=options)
        else:
            if spec is not None:
                target = lib.create_space(spec, compute=options.compute)
            else:
                target = lib.space_for(None, space, compute=options.compute)
            target.configure_index(index_spec, max_memory=max_memory)
            show = not (quiet or as_json)
            with (
                progress_bar("embedding", show=show, rate=True) as bar,
                stop_on_interrupt() as stop,
            ):
                report = target.sync(paths, options, progress=bar, stop=stop, engine=engine)
                if copies and not report.interrupted and not target.copies:
                    target.keep_copies(True, stop=stop)
            if whiten_dims is not None and not report.interrupted:
                try:
                    whitened = target.whiten(whiten_dims)
                except ConfigError as err:
                    raise err.renamed("--whiten") from None
            # Once per space, while its model is at hand: a later `search PHOTO` in a fresh
            # process then skips torch (docs/guide.md#searching).
            if not report.interrupted and (report.added or report.updated):
                query_model = target.save_query_model()
            # And, for a copy-mode space that changed or was asked for, the local model
            # of its copy searches' check (docs/how-it-works.md#copy-mode): the first check
            # then costs no torch either. Not on every run: a model without a local map
            # would be built each time only to find so.
            if (
                not report.interrupted
                and target.copies
                and (report.added or report.updated or copies)
            ):
                local_model = target.save_local_model(build=True)
    output.index_report(report, whitened, as_json=as_json, quiet=quiet, verbose=verbose)
    if query_model is not None and not (quiet or as_json):
        output.note(f"saved the space's query model in {query_model}")
    if local_model is not None and not (quiet or as_json):
        output.note(f"saved the space's local model in {local_model}")
    if report.interrupted:
        output.interrupted(report)
        ctx.exit(130)


@click.command()
@click.argument("dims", type=click.IntRange(min=0))
@space_option("Space to whiten (fingerprint prefix, id or label).")
@json_option
@db_option
@click.pass_context
def whiten(ctx: click.Context, dims: int, space: SpaceSelector | None, as_json: bool) -> None:
    """Learn PCA-whitening to DIMS dimensions from the library's vectors (0 removes it).

    Stored with the space: vectors are whitened as they enter its index and queries before
    they are searched. Stored vectors stay as they are. Learn it again after indexing many
    new images.
    """
    with open_library(ctx) as lib:
        refuse_ambiguous(lib, space)
        report = lib.space(space).whiten(dims)
    output.whiten_report(report, as_json=as_json)


@click.command()
@space_option("The space to rebuild (fingerprint prefix, id or label).")
@index_options
@click.option(
    "--nprobe",
    type=click.IntRange(min=1),
    help="Fix nprobe for this space's searches (instead of the tuned default).",
)
@click.option(
    "--ef-search",
    type=click.IntRange(min=1),
    help="Fix efSearch for this space's searches (instead of the tuned default).",
)
@json_option
@db_option
@click.pass_context
def reindex(
    ctx: click.Context,
    space: SpaceSelector | None,
    index_spec: str | None,
    max_memory: str | None,
    nprobe: int | None,
    ef_search: int | None,
    as_json: bool,
) -> None:
    """Rebuild a space's index from its stored vectors (no image is embedded again).

    With --index the space switches to that index type; later `index` runs add to it.
    """
    params = None
    if nprobe is not None or ef_search is not None:
        params = SearchParams(nprobe=nprobe, ef_search=ef_search)
    with open_library(ctx) as lib:
        refuse_ambiguous(lib, space)
        target = lib.space(space)
        built = target.configure_index(index_spec, max_memory=max_memory, params=params)
        built = built or target.rebuild()
    output.rebuilt(built, as_json=as_json)

"""The ``featx-search`` command line: each command is one API call plus formatting (click)."""

from __future__ import annotations

import json
import logging
import shlex
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click

from . import __version__, output
from .ann.spec import SearchParams, format_bytes
from .compute import (
    CPU_MICRO_BATCH,
    DEVICES,
    FREEZE_MIN_IMAGES,
    FREEZES,
    OPENVINO_MIN_IMAGES,
    RUNTIMES,
    Compute,
    prefer_passive_openmp,
)
from .config import (
    DEFAULT_MODEL,
    DEFAULT_PRECISION,
    DEFAULT_WEIGHTS,
    METHODS,
    POOLS,
    PRECISIONS,
    ExtractorSpec,
)
from .dups import DEFAULT_DUP_THRESHOLD
from .errors import ConfigError, FeatxError
from .evaluate import EDITS, INPUTS, EvalResult, evaluate
from .library import (
    Library,
    SpaceSelector,
    default_db_path,
    list_layers,
    schema_status,
    upgrade_schema,
)
from .options import Progress, Query, SyncOptions
from .output import Listing, dup_listing, match_listing
from .query import Filters, Match, parse_date
from .reports import IndexReport, WhitenReport
from .space import StoredImage

F = TypeVar("F", bound=Callable[..., Any])
DB_HELP = "Library database file (default: $FEATX_DB, else a per-user data directory)."


class _Group(click.Group):
    """Turns featx errors into one clean error line (no traceback) at the CLI edge."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as err:
            raise click.ClickException(str(err.renamed(_flag(err.param)))) from err
        except FeatxError as err:
            raise click.ClickException(str(err)) from err


# Python parameters whose command-line name is not --the-same-words.
_FLAGS = {"k": "-k", "dims": "DIMS", "index": "--index", "vectors": "IMAGES"}


def _flag(param: str | None) -> str:
    """The command-line name of a library parameter named in a :class:`ConfigError`."""
    if param is None:
        return ""
    return _FLAGS.get(param, "--" + param.replace("_", "-"))


def _remember_db(ctx: click.Context, _param: click.Parameter, value: Path | None) -> None:
    if value is not None:
        ctx.ensure_object(dict)["db"] = value


def db_option(func: F) -> F:
    """``--db`` on a command; it wins over the group's ``--db`` and ``$FEATX_DB``."""
    return click.option(
        "--db",
        type=click.Path(dir_okay=False, path_type=Path),
        expose_value=False,
        callback=_remember_db,
        help=DB_HELP,
    )(func)


def json_option(func: F) -> F:
    return click.option(
        "--json",
        "as_json",
        is_flag=True,
        help="Print JSON (one object per line) instead of a table.",
    )(func)


def index_options(func: F) -> F:
    """``--index SPEC`` and ``--max-memory SIZE`` (for ``index`` and ``reindex``)."""
    func = click.option(
        "--max-memory",
        metavar="SIZE",
        help="Memory budget of the space's index for --index auto (e.g. 512M, 2G); "
        "auto compresses vectors (IVF-PQ) when they do not fit.",
    )(func)
    return click.option(
        "--index",
        "index_spec",
        metavar="SPEC",
        help="Index type of the space: auto, or a FAISS factory string such as Flat, HNSW32, "
        "IVF4096,Flat, IVF4096,PQ64  [default: the space's, at first auto]",
    )(func)


def search_options(func: F) -> F:
    """Per-query ``--nprobe`` / ``--ef-search`` / ``--rerank``."""
    func = click.option(
        "--rerank",
        type=click.IntRange(min=0),
        help="PQ/SQ indexes: re-score k x N candidates with the stored vectors (0: off).",
    )(func)
    func = click.option(
        "--ef-search",
        type=click.IntRange(min=1),
        help="HNSW indexes: candidates explored per query  [default: tuned to recall 0.95]",
    )(func)
    return click.option(
        "--nprobe",
        type=click.IntRange(min=1),
        help="IVF indexes: inverted lists visited per query  [default: tuned to recall 0.95]",
    )(func)


def _selector(space: str | None) -> SpaceSelector | None:
    """--space as a space selector: digits are an id, anything else a label or fingerprint."""
    return int(space) if space is not None and space.isdigit() else space


@contextmanager
def _stop_on_interrupt() -> Iterator[threading.Event]:
    """While indexing, the first Ctrl-C asks the run to stop after the batches in flight; a
    second one stops at once (the committed batches are kept either way)."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        click.echo("stopping after the batch in flight (Ctrl-C again to stop now)", err=True)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def _db(ctx: click.Context) -> Path:
    return ctx.ensure_object(dict).get("db") or default_db_path()


def _open(ctx: click.Context, *, create: bool = False) -> Library:
    return Library.open(_db(ctx), create=create)


class _StderrHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"{record.levelname.lower()}: {record.getMessage()}", err=True)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--db",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="FEATX_DB",
    expose_value=False,
    callback=_remember_db,
    help=DB_HELP,
)
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
    logger = logging.getLogger("featx_search")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        logger.addHandler(_StderrHandler())
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
    logger.propagate = False


def _spec(
    model: str | None,
    weights: str | None,
    layers: Sequence[str],
    pool: str | None,
    precision: str | None = None,
    method: str | None = None,
) -> ExtractorSpec | None:
    if (
        model is None
        and weights is None
        and not layers
        and pool is None
        and precision is None
        and method is None
    ):
        return None  # keep the library's space
    return ExtractorSpec(
        model=model or DEFAULT_MODEL,
        weights=weights or DEFAULT_WEIGHTS,
        layers=tuple(layers),
        pool=pool,
        precision=precision or DEFAULT_PRECISION,
        method=method or "auto",
    )


def method_option(func: F) -> F:
    return click.option(
        "--method",
        type=click.Choice(METHODS),
        help="How layers are read: fx (the graph stops at the layer), hook (forward hooks; "
        "the whole network runs), auto (fx, or hook when the model cannot be traced)  "
        "[default: auto]",
    )(func)


def _summary(report: IndexReport) -> str:
    if report.dry_run:
        return (
            f"dry run: would add {report.added}, update {report.updated}, move {report.moved}, "
            f"remove {report.removed}; unchanged {report.unchanged}; "
            f"space {report.space} ({report.label})"
        )
    embedded = report.indexed + report.failed
    rate = (
        f" ({embedded / report.embed_seconds:.1f} img/s while embedding)"
        if embedded and report.embed_seconds > 0
        else ""
    )
    return (
        f"indexed {report.indexed} (added {report.added}, updated {report.updated}), "
        f"moved {report.moved}, unchanged {report.unchanged}, failed {report.failed}, "
        f"removed {report.removed} in {report.seconds:.1f} s{rate}; "
        f"space {report.space} ({report.label})"
    )


class _Bar:
    """The terminal progress bar of `index`: files done of total, images/s and ETA."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.rate = ""

    def __call__(self, p: Progress) -> None:
        if self.bar is None:
            self.bar = click.progressbar(
                length=p.total,
                label="embedding",
                file=sys.stderr,
                show_pos=True,
                show_eta=True,
                item_show_func=lambda _: self.rate,
            )
            self.bar.__enter__()
        if p.elapsed > 0:
            self.rate = f"{p.done / p.elapsed:.1f} img/s" + (
                f", {p.failed} failed" if p.failed else ""
            )
        self.bar.update(p.done - self.bar.pos)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--model",
    "-m",
    help=f"torchvision model name, {DEFAULT_MODEL}, or "
    f"package.module:factory  [default: {DEFAULT_MODEL}, or the library's space]",
)
@click.option(
    "--weights",
    "-w",
    help="Weights name (DEFAULT, IMAGENET1K_V2, ...), 'none' for "
    "seeded random init, or a state-dict file  [default: DEFAULT]",
)
@click.option(
    "--layer",
    "-l",
    "layers",
    multiple=True,
    help="FX node to read (repeatable)  [default: the node feeding the classifier]",
)
@click.option(
    "--pool",
    type=click.Choice(POOLS),
    help="Pooling of feature maps  [default: the model's, gem for efficientnet_lite0, else avg]",
)
@method_option
@click.option("--space", help="Add to this existing space (fingerprint prefix, id or label).")
@click.option(
    "--batch-size",
    default=16,
    show_default=True,
    type=click.IntRange(min=1),
    help="Images per committed transaction (and per step of the progress bar).",
)
@click.option(
    "--micro-batch",
    type=click.IntRange(min=1),
    help="Images per model call  [default: "
    f"{CPU_MICRO_BATCH} on the CPU, which measured fastest; the whole batch on a GPU]",
)
@click.option("--workers", type=click.IntRange(min=1), help="Decoding threads  [default: cores]")
@click.option(
    "--whiten",
    "whiten_dims",
    type=click.IntRange(min=0),
    help="After indexing, learn PCA-whitening to this many dimensions from the space's "
    "vectors (as the `whiten` command does; 0 removes it).",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    help="Threads the model uses (torch intra-op)  [default: cores]",
)
@click.option(
    "--device",
    type=click.Choice(DEVICES),
    default="auto",
    show_default=True,
    help="Where the model runs; auto picks CUDA, else MPS, else the CPU.",
)
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    help="Number format of the model; part of the space, so another one makes a new space  "
    f"[default: {DEFAULT_PRECISION}, or the library's space]",
)
@click.option(
    "--channels-last/--no-channels-last",
    default=None,
    help="NHWC memory layout for convolutions  [default: on for cpu and cuda]",
)
@click.option(
    "--freeze",
    type=click.Choice(FREEZES),
    default="auto",
    show_default=True,
    help="Compile the model graph for inference (TorchScript + oneDNN); auto does so on the "
    f"CPU for runs of {FREEZE_MIN_IMAGES}+ images, keeping it only when it measures faster.",
)
@click.option(
    "--runtime",
    type=click.Choice(RUNTIMES),
    default="auto",
    show_default=True,
    help="What runs the model graph: torch, or OpenVINO (CPU, fp32; the openvino package). "
    f"auto uses OpenVINO for CPU runs of {OPENVINO_MIN_IMAGES}+ images when installed, "
    "if it gives torch's vectors and measures faster.",
)
@click.option(
    "--dry-run", "-n", is_flag=True, help="List what would be added, updated, moved and removed."
)
@click.option("--retry-failed", is_flag=True, help="Try files that failed before again.")
@click.option(
    "--prune-empty",
    is_flag=True,
    help="Remove the stored files of a folder that is now empty (kept by default: an "
    "unmounted drive looks empty).",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no summary.")
@index_options
@click.option("--verbose", "-v", is_flag=True, help="Also list every file added, moved, ...")
@json_option
@db_option
@click.pass_context
def index(
    ctx: click.Context,
    paths: tuple[Path, ...],
    model: str | None,
    weights: str | None,
    layers: tuple[str, ...],
    pool: str | None,
    method: str | None,
    space: str | None,
    batch_size: int,
    micro_batch: int | None,
    workers: int | None,
    whiten_dims: int | None,
    threads: int | None,
    device: str,
    precision: str | None,
    channels_last: bool | None,
    freeze: str,
    runtime: str,
    dry_run: bool,
    retry_failed: bool,
    prune_empty: bool,
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
    bar = _Bar() if not (quiet or as_json or dry_run) and sys.stderr.isatty() else None
    spec = _spec(model, weights, layers, pool, precision, method)
    compute = Compute(
        device=device,
        threads=threads,
        channels_last=channels_last,
        micro_batch=micro_batch,
        freeze=freeze,
        runtime=runtime,
    )
    options = SyncOptions(
        batch_size=batch_size,
        workers=workers,
        retry_failed=retry_failed,
        prune_empty=prune_empty,
        compute=compute,
    )
    whitened = None
    with _open(ctx, create=not dry_run) as lib:
        if dry_run:
            report = lib.plan(paths, spec, space=_selector(space), options=options)
        else:
            if spec is not None:
                target = lib.create_space(spec, compute=compute)
            else:
                target = lib.space_for(None, _selector(space))
            target.configure_index(index_spec, max_memory=max_memory)
            try:
                with _stop_on_interrupt() as stop:
                    report = target.sync(paths, options, progress=bar, stop=stop)
            finally:
                if bar is not None:
                    bar.close()
            if whiten_dims is not None and not report.interrupted:
                whitened = target.whiten(whiten_dims)
    if as_json:
        click.echo(
            json.dumps({**report.to_dict(), **({"whiten": whitened.dims} if whitened else {})})
        )
    elif not quiet:
        if verbose or dry_run:
            for action, path in report.changes:
                click.echo(f"{action:<7}{path}")
        click.echo(_summary(report))
        shown = report.failures if verbose else report.failures[:10]
        for path, error in shown:
            click.echo(f"  failed: {path}: {error}", err=True)
        if len(report.failures) > len(shown):
            click.echo(
                f"  ... {len(report.failures) - len(shown)} more: featx-search info --failed",
                err=True,
            )
        for missing in report.missing:
            click.echo(f"  not found (nothing under it changed): {missing}", err=True)
        if whitened is not None:
            click.echo(_whiten_summary(whitened))
        for warning in report.warnings:
            click.echo(f"  {warning}", err=True)
    if report.interrupted:
        again = " ".join(shlex.quote(a) for a in sys.argv[1:]) or "index ..."
        click.echo(
            f"interrupted: {report.indexed + report.failed} files saved, {report.remaining} "
            f"left; run `featx-search {again}` again to resume",
            err=True,
        )
        ctx.exit(130)


def _whiten_summary(report: WhitenReport) -> str:
    if report.dims == 0:
        return f"whitening removed from space {report.space} ({report.label})"
    return (
        f"whitening to {report.dims} dimensions learned from {report.learned_from} vectors; "
        f"space {report.space} ({report.label})"
    )


@cli.command()
@click.argument("dims", type=click.IntRange(min=0))
@click.option("--space", help="Space to whiten (fingerprint prefix, id or label).")
@json_option
@db_option
@click.pass_context
def whiten(ctx: click.Context, dims: int, space: str | None, as_json: bool) -> None:
    """Learn PCA-whitening to DIMS dimensions from the library's vectors (0 removes it).

    Stored with the space: vectors are whitened as they enter its index and queries before
    they are searched. Stored vectors stay as they are. Learn it again after indexing many
    new images.
    """
    with _open(ctx) as lib:
        report = lib.space(_selector(space)).whiten(dims)
    click.echo(json.dumps(report.to_dict()) if as_json else _whiten_summary(report))


def output_options(func: F) -> F:
    """The output formats every listing command offers (see :mod:`featx_search.output`)."""
    options = [
        click.option(
            "--json", "fmt", flag_value="json", help="One JSON object per line (per result)."
        ),
        click.option("--csv", "fmt", flag_value="csv", help="CSV with a header line."),
        click.option(
            "--paths", "fmt", flag_value="paths", help="Only the paths, one per line (for pipes)."
        ),
        click.option(
            "--table",
            "fmt",
            flag_value="table",
            default=True,
            help="A readable table  [default]",
        ),
        click.option(
            "--html",
            "html_file",
            type=click.Path(dir_okay=False, path_type=Path),
            help="Also write a self-contained HTML page with thumbnails to this file.",
        ),
        click.option(
            "--montage",
            "montage_file",
            type=click.Path(dir_okay=False, path_type=Path),
            help="Also write a contact sheet image (.jpg, .png or .webp) to this file.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _emit(listing: Listing, fmt: str, html_file: Path | None, montage_file: Path | None) -> None:
    for line in output.text(listing, fmt):
        click.echo(line)
    if html_file is not None:
        click.echo(f"wrote {output.write_html(listing, html_file)}", err=True)
    if montage_file is not None:
        click.echo(f"wrote {output.write_montage(listing, montage_file)}", err=True)


def query_options(func: F) -> F:
    """Result count, cut-off, filters and query handling shared by `search` and `similar`."""
    options = [
        click.option(
            "-k",
            default=10,
            show_default=True,
            type=click.IntRange(min=1),
            help="Results per query.",
        ),
        click.option(
            "--threshold",
            type=click.FloatRange(-1.0, 1.0),
            help="Drop results whose cosine score is below this.",
        ),
        click.option(
            "--combine",
            is_flag=True,
            help="Search once with the average of all query images instead of once per image.",
        ),
        click.option(
            "--exclude-self", is_flag=True, help="Never list a query image itself as a result."
        ),
        click.option(
            "--under",
            type=click.Path(file_okay=False, path_type=Path),
            help="Only images in this folder (recursively).",
        ),
        click.option(
            "--glob",
            help="Only images whose file name (or, with a /, whole path) matches this pattern.",
        ),
        click.option(
            "--after",
            metavar="DATE",
            help="Only images taken (EXIF, else file time) on or after DATE (YYYY-MM-DD...).",
        ),
        click.option("--before", metavar="DATE", help="Only images taken before DATE."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _filters(
    under: Path | None, glob: str | None, after: str | None, before: str | None
) -> Filters:
    return Filters(
        under=None if under is None else str(under),
        glob=glob,
        after=None if after is None else parse_date(after, "after"),
        before=None if before is None else parse_date(before, "before"),
    )


def _query(options: dict[str, Any]) -> Query:
    """The :class:`Query` that the values of :func:`query_options` and :func:`search_options`
    ask for."""
    return Query(
        k=options["k"],
        filters=_filters(options["under"], options["glob"], options["after"], options["before"]),
        threshold=options["threshold"],
        exclude_self=options["exclude_self"],
        combine=options["combine"],
        params=SearchParams(
            nprobe=options["nprobe"], ef_search=options["ef_search"], rerank=options["rerank"]
        ),
    )


def _emit_matches(
    command: str,
    names: list[str],
    files: list[list[str]],
    results: list[list[Match]],
    options: dict[str, Any],
    fmt: str,
    html_file: Path | None,
    montage_file: Path | None,
) -> None:
    if options["combine"]:  # one result list for all the queries together
        names, files = [" + ".join(names)], [[f[0] for f in files]]
    _emit(match_listing(command, names, results, files), fmt, html_file, montage_file)


@cli.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@query_options
@click.option(
    "--space",
    help="Space to search (fingerprint prefix, id or label); needed when the library has several.",
)
@search_options
@output_options
@db_option
@click.pass_context
def search(
    ctx: click.Context,
    /,
    images: tuple[Path, ...],
    space: str | None,
    fmt: str,
    html_file: Path | None,
    montage_file: Path | None,
    **options: Any,
) -> None:
    """Show the indexed images most similar to each of IMAGES (any image files).

    Filters (--under, --glob, --after, --before) are applied inside the index search, so -k
    results come back whenever that many images pass them.
    """
    query = _query(options)
    with _open(ctx) as lib:
        results = lib.search(list(images), query, space=_selector(space))
    names = [str(image) for image in images]
    files = [[name] for name in names]
    _emit_matches(
        "featx-search search", names, files, results, options, fmt, html_file, montage_file
    )


@cli.command()
@click.argument("images", nargs=-1, required=True, metavar="IMAGE...")
@query_options
@click.option("--space", help="Space to search (fingerprint prefix, id or label).")
@search_options
@output_options
@db_option
@click.pass_context
def similar(
    ctx: click.Context,
    /,
    images: tuple[str, ...],
    space: str | None,
    fmt: str,
    html_file: Path | None,
    montage_file: Path | None,
    **options: Any,
) -> None:
    """Show the images most similar to each IMAGE, an indexed file (path) or image id.

    Starts from the stored vectors, so no model is loaded: fast even on a cold start. Each
    image comes first in its own results unless --exclude-self.
    """
    targets: list[StoredImage] = [
        int(image) if image.isdigit() and not Path(image).exists() else image for image in images
    ]
    query = _query(options)
    with _open(ctx) as lib:
        results = lib.similar(targets, query, space=_selector(space))
        files = [[lib.image_path(t)] for t in targets]
    _emit_matches(
        "featx-search similar", list(images), files, results, options, fmt, html_file, montage_file
    )


@cli.command()
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
@click.option("--space", help="Space to compare in (fingerprint prefix, id or label).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@output_options
@db_option
@click.pass_context
def dups(
    ctx: click.Context,
    threshold: float,
    exact: bool,
    space: str | None,
    quiet: bool,
    fmt: str,
    html_file: Path | None,
    montage_file: Path | None,
) -> None:
    """List groups of duplicate images, largest group first, the suggested keeper first.

    The keeper is the image with the most pixels, then the oldest (date taken, else file
    time). Near-duplicates are found by a range search over the space's vectors (no model is
    loaded); identical files always group. `same` marks files identical to the keeper.
    """
    bar: Any = None

    def progress(p: Progress) -> None:
        nonlocal bar
        if bar is None:
            bar = click.progressbar(length=p.total, label="comparing", file=sys.stderr)
            bar.__enter__()
        bar.update(p.done - bar.pos)

    show_bar = not quiet and sys.stderr.isatty()
    with _open(ctx) as lib:
        try:
            groups = lib.duplicates(
                threshold,
                exact=exact,
                space=_selector(space),
                progress=progress if show_bar else None,
            )
        finally:
            if bar is not None:
                bar.__exit__(None, None, None)
    _emit(dup_listing("featx-search dups", groups), fmt, html_file, montage_file)


@cli.command()
@click.option("--failed", is_flag=True, help="List the files that could not be indexed.")
@click.option(
    "--recall",
    is_flag=True,
    help="Measure recall@10 of a space's index against exact search on stored vectors.",
)
@click.option("--space", help="With --recall: the space (fingerprint prefix, id or label).")
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
    space: str | None,
    sample: int,
    nprobe: int | None,
    ef_search: int | None,
    rerank: int | None,
    as_json: bool,
) -> None:
    """Show the library: spaces, image counts and index state."""
    if recall:
        with _open(ctx) as lib:
            override = SearchParams(nprobe=nprobe, ef_search=ef_search, rerank=rerank)
            report = lib.space(_selector(space)).recall(sample=sample, params=override)
        if as_json:
            click.echo(json.dumps(report.to_dict()))
            return
        params = " ".join(f"{k}={v}" for k, v in sorted(report.params.items())) or "exact"
        click.echo(
            f"space {report.space}  index={report.spec} ({params})  vectors={report.count}\n"
            f"recall@{report.k} = {report.recall:.3f} against exact search "
            f"({report.queries} stored vectors as queries, {report.seconds:.1f} s)"
        )
        return
    with _open(ctx) as lib:
        if failed:
            rows = lib.failures()
            for path, error in rows:
                click.echo(
                    json.dumps({"path": path, "error": error}) if as_json else f"{path}: {error}"
                )
            return
        summary = lib.info()
    if as_json:
        click.echo(json.dumps(summary.to_dict()))
        return
    click.echo(f"library: {summary.path}")
    click.echo(f"schema:  {summary.revision}")
    counts = ", ".join(f"{n} {state}" for state, n in sorted(summary.images.items())) or "none"
    click.echo(f"images:  {counts}")
    if not summary.spaces:
        click.echo("spaces:  none (run `featx-search index PATH`)")
    for s in summary.spaces:
        state = "current" if s.index_current else "stale (rebuilt on next use)"
        click.echo(
            f"space {s.fingerprint}  {s.label}  weights={s.weights}  dim={s.dim}  "
            f"vectors={s.count}  index={state}"
            + (f" {s.index_kind}" if s.index_kind else "")
            + ("" if s.index_spec == "auto" else f" (spec {s.index_spec})")
            + (f"  whitened={s.whitened}" if s.whitened else "")
        )


@cli.command()
@click.option("--space", help="The space to rebuild (fingerprint prefix, id or label).")
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
    space: str | None,
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
    with _open(ctx) as lib:
        target = lib.space(_selector(space))
        built = target.configure_index(index_spec, max_memory=max_memory, params=params)
        built = built or target.rebuild()
    if as_json:
        click.echo(json.dumps(built.to_dict()))
        return
    params_text = " ".join(f"{k}={v}" for k, v in sorted(built.params.to_dict().items()))
    click.echo(
        f"rebuilt {built.spec} index of {built.count} vectors in {built.seconds:.1f} s "
        f"({format_bytes(built.nbytes)}{', ' + params_text if params_text else ''})"
    )


@cli.command()
@click.argument("model")
@click.option(
    "--weights",
    "-w",
    default="none",
    show_default=True,
    help="Weights to build the model with; layer names and shapes do not depend on them, "
    "so the default needs no download.",
)
@click.option(
    "--filter",
    "pattern",
    help="Only layers whose name contains this text, or matches it as a glob "
    "(e.g. 'layer4*', '*.conv2').",
)
@method_option
@json_option
@db_option
def layers(
    model: str, weights: str, pattern: str | None, method: str | None, as_json: bool
) -> None:
    """List every layer (FX node) of MODEL: output shape, channels, spatial size, and the cost
    of extracting up to it as a share of the whole network's FLOPs; * marks the default."""
    spec = ExtractorSpec(model=model, weights=weights, method=method or "auto")
    rows = list_layers(spec, pattern=pattern)
    width = max(len(r.name) for r in rows)
    if not as_json:
        click.echo(f"  {'layer':<{width}}  {'shape':<16} {'channels':>8}  {'spatial':<10} cost")
    for r in rows:
        shape = "x".join(str(d) for d in r.shape) if r.shape is not None else "-"
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "name": r.name,
                        "shape": list(r.shape or ()) or None,
                        "channels": r.channels,
                        "spatial": r.spatial,
                        "cost": r.cost,
                        "default": r.is_default,
                    }
                )
            )
        else:
            cost = f"{100 * r.cost:5.1f}%" if r.cost is not None else "    -"
            channels = str(r.channels) if r.channels is not None else "-"
            click.echo(
                f"{'*' if r.is_default else ' '} {r.name:<{width}}  {shape:<16} "
                f"{channels:>8}  {r.spatial:<10} {cost}"
            )
    if not as_json:
        click.echo(
            "* default layer (--layer NAME picks another); cost: share of the network's "
            "FLOPs computed to extract that layer",
            err=True,
        )


@cli.command("eval")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option(
    "--model", "-m", "models", multiple=True, help=f"Model (repeatable)  [default: {DEFAULT_MODEL}]"
)
@click.option("--weights", "-w", default=DEFAULT_WEIGHTS, show_default=True, help="Weights.")
@click.option(
    "--layer",
    "-l",
    "layer_sets",
    multiple=True,
    help="Layer to try (repeatable); join layers with + to concatenate them, e.g. "
    "layer3+layer4  [default: the model's default layer]",
)
@click.option(
    "--pool", "pools", multiple=True, type=click.Choice(POOLS), help="Pooling to try (repeatable)."
)
@click.option(
    "--input",
    "inputs",
    multiple=True,
    type=click.Choice(INPUTS),
    help="Input handling to try (repeatable): crop = resize and centre crop as the weights "
    "expect, full = the whole frame squashed to the input size  [default: the model's]",
)
@click.option(
    "--copies",
    is_flag=True,
    help="Also search with edited copies of each image (crop, jpeg15, down, rotate, grey, "
    "blur, flip) and report recall@1 per edit.",
)
@method_option
@json_option
def eval_command(
    folder: Path,
    models: tuple[str, ...],
    weights: str,
    layer_sets: tuple[str, ...],
    pools: tuple[str, ...],
    inputs: tuple[str, ...],
    copies: bool,
    method: str | None,
    as_json: bool,
) -> None:
    """Score extraction settings on FOLDER, which holds one subfolder of images per class.

    Every image queries the others: mAP, P@1 and P@10 count images of its class. Every
    combination of --model, --layer, --pool and --input is scored. No library is used.
    """
    specs = [
        ExtractorSpec(
            model=model,
            weights=weights,
            layers=tuple(part for part in layer.split("+") if part) if layer else (),
            pool=pool,
            method=method or "auto",
        )
        for model in models or (DEFAULT_MODEL,)
        for layer in layer_sets or ("",)
        for pool in pools or (None,)
    ]

    def show(r: EvalResult) -> None:
        if as_json:
            click.echo(json.dumps(r.to_dict()))
            return
        line = (
            f"{r.model:<18} {'+'.join(r.layers):<22} {r.pool:<4} {r.input:<5} {r.dim:>5}  "
            f"{r.map:.3f} {r.p1:.3f} {r.p10:.3f}"
        )
        if r.copies:
            line += "  " + " ".join(f"{r.copies[k]:.2f}".rjust(max(4, len(k))) for k in EDITS)
            line += f"  {r.copy_recall:.3f}"
        click.echo(line)

    if not as_json:
        header = (
            f"{'model':<18} {'layers':<22} {'pool':<4} {'input':<5} {'dim':>5}  mAP   P@1   P@10"
        )
        if copies:
            header += "   " + " ".join(k.rjust(4) for k in EDITS) + "  copies@1"
        click.echo(header)
    results = evaluate(folder, specs, inputs=inputs or (None,), copies=copies, progress=show)
    if not as_json and results:
        r = results[0]
        click.echo(
            f"{r.images} images, {r.queries} queries with another image of their class", err=True
        )


@cli.group()
def db() -> None:
    """Inspect or migrate the library database schema."""


@db.command()
@db_option
@click.pass_context
def current(ctx: click.Context) -> None:
    """Show the schema revision of the library (without changing it)."""
    status = schema_status(_db(ctx))
    state = "up to date" if status.up_to_date else f"behind head {status.head}"
    click.echo(f"{status.path}: revision {status.current or '(empty)'} ({state})")


@db.command()
@db_option
@click.pass_context
def upgrade(ctx: click.Context) -> None:
    """Migrate the library to the newest schema (opening a library does this too)."""
    status = upgrade_schema(_db(ctx))
    click.echo(f"{status.path}: revision {status.current} (up to date)")


@db.command()
@db_option
@click.pass_context
def check(ctx: click.Context) -> None:
    """Verify the library (SQLite integrity, image states, index against store)."""
    with _open(ctx) as lib:
        report = lib.check()
    for note in report.notes:
        click.echo(f"note: {note}")
    for problem in report.problems:
        click.echo(f"problem: {problem}", err=True)
    if not report.ok:
        raise click.ClickException(f"{len(report.problems)} problems found")
    click.echo("ok")


def main() -> None:
    prefer_passive_openmp()  # before anything imports torch
    cli(prog_name="featx-search")

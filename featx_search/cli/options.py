"""Options shared by commands; the group decorators turn their flags into the typed values the
API takes (:class:`Query`, :class:`SearchParams`, a space selector, :class:`ListingOutput`), so
that commands never handle loose flags. The flags of `index` are in :mod:`.index_options`."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from ..ann.spec import SearchParams
from ..connect import Location
from ..errors import LibraryError, SpaceError
from ..library import Library, SpaceSelector, default_location, parse_selector
from ..options import MAX_EXPAND, Query
from ..query import Filters
from .output import ListingOutput

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def builds(name: str, build: Callable[..., Any], keys: Sequence[str]) -> Decorator:
    """Wrap a command callback so that the values of the flags ``keys`` arrive as the one
    keyword argument ``name``, ``build(**values)``. Stacked builders run from the top one
    down, so a builder may consume what a builder above it made."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)  # keeps the click parameters already attached to func
        def command(*args: Any, **kwargs: Any) -> Any:
            values = {key: kwargs.pop(key) for key in keys}
            return func(*args, **kwargs, **{name: build(**values)})

        return command

    return decorate


def apply(func: Callable[..., Any], options: Sequence[Decorator]) -> Callable[..., Any]:
    """``options`` on ``func`` in the order listed (as if written as decorators)."""
    for option in reversed(options):
        func = option(func)
    return func


# -- the library and the space ---------------------------------------------------------------

DB_HELP = (
    "Library database: a file (SQLite) or a server's URL, "
    "postgresql+psycopg://user:password@host:5432/db "
    "(default: $FEATX_DB, else a per-user data directory)."
)


def _remember_db(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is None:
        return
    try:
        location = Location.parse(value)
    except LibraryError as err:
        raise click.BadParameter(str(err), ctx=ctx, param=param) from None
    ctx.ensure_object(dict)["db"] = location


def _remember_index_dir(ctx: click.Context, _param: click.Parameter, value: Path | None) -> None:
    if value is not None:
        ctx.ensure_object(dict)["index_dir"] = value


group_db_option = click.option(
    "--db",
    metavar="PATH|URL",
    envvar="FEATX_DB",
    expose_value=False,
    callback=_remember_db,
    help=DB_HELP,
)
"""``--db`` on the group, defaulting to ``$FEATX_DB``."""

group_index_dir_option = click.option(
    "--index-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="FEATX_INDEX_DIR",
    expose_value=False,
    callback=_remember_index_dir,
    help="Folder of this machine's index files (default: beside a SQLite file; for a server "
    "library, a folder of the per-user cache named after the database).",
)
"""``--index-dir`` on the group, defaulting to ``$FEATX_INDEX_DIR``."""

db_option = click.option(
    "--db",
    metavar="PATH|URL",
    expose_value=False,
    callback=_remember_db,
    help=DB_HELP,
)
"""``--db`` on a command; it wins over the group's ``--db`` and ``$FEATX_DB``."""


def db_path(ctx: click.Context) -> Location:
    """The library that ``--db`` (command, then group), ``$FEATX_DB`` or the default names,
    with ``--index-dir`` when given."""
    state = ctx.ensure_object(dict)
    location: Location = state.get("db") or default_location()
    index_dir: Path | None = state.get("index_dir")
    return location if index_dir is None else location.with_local_dir(index_dir)


def open_library(ctx: click.Context, *, create: bool = False) -> Library:
    return Library.open(db_path(ctx), create=create)


def refuse_ambiguous(lib: Library, space: SpaceSelector | None) -> None:
    """The command line never guesses a space: with no --space, a library of several spaces
    is an error listing them (Python's ``Library.space()`` takes the newest)."""
    if space is not None:
        return
    spaces = lib.spaces()
    if len(spaces) > 1:
        raise SpaceError(
            f"library {lib.location} has {len(spaces)} spaces; choose one with --space",
            hint="spaces: "
            + "; ".join(f"{s.id}: {s.fingerprint} ({s.label}, {s.count} images)" for s in spaces),
        )


def selector(space: str | None) -> SpaceSelector | None:
    """--space as a space selector: digits are an id, anything else a label or fingerprint."""
    return parse_selector(space)


def space_option(help: str) -> Decorator:
    """``--space`` (with this help), arriving as a :data:`SpaceSelector` or None."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        func = builds("space", selector, ["space"])(func)
        return click.option("--space", help=help)(func)

    return decorate


json_option = click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print JSON (one object per line) instead of a table.",
)


def index_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--index SPEC`` and ``--max-memory SIZE`` (for ``index`` and ``reindex``)."""
    return apply(
        func,
        [
            click.option(
                "--index",
                "index_spec",
                metavar="SPEC",
                help="Index type of the space: auto, or a FAISS factory string such as Flat, "
                "HNSW32, IVF4096,Flat, IVF4096,PQ64; ondisk:IVF4096,Flat keeps the inverted lists "
                "in a memory-mapped file  [default: the space's, at first auto]",
            ),
            click.option(
                "--max-memory",
                metavar="SIZE",
                help="Memory budget of the space's index for --index auto (e.g. 512M, 2G) "
                "[default: half of this machine's memory]; when the vectors do not fit, auto "
                "keeps them on disk (ondisk:IVF...,Flat, memory-mapped, built in chunks).",
            ),
        ],
    )


# -- queries ---------------------------------------------------------------------------------

_SEARCH_PARAM_OPTIONS = [
    click.option(
        "--nprobe",
        type=click.IntRange(min=1),
        help="IVF indexes: inverted lists visited per query  [default: tuned to recall 0.95]",
    ),
    click.option(
        "--ef-search",
        type=click.IntRange(min=1),
        help="HNSW indexes: candidates explored per query  [default: tuned to recall 0.95]",
    ),
    click.option(
        "--rerank",
        type=click.IntRange(min=0),
        help="PQ/SQ indexes: re-score k x N candidates with the stored vectors (0: off).",
    ),
]
_builds_params = builds("params", SearchParams, ["nprobe", "ef_search", "rerank"])


def search_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Per-query ``--nprobe`` / ``--ef-search`` / ``--rerank``, arriving as ``params``, a
    :class:`SearchParams`."""
    return apply(_builds_params(func), _SEARCH_PARAM_OPTIONS)


_QUERY_OPTIONS = [
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
    click.option(
        "--trim/--no-trim",
        default=True,
        show_default=True,
        help="search: cut away the dark or bright bars around a query picture (screenshots, "
        "letterboxes) before embedding it.",
    ),
    click.option(
        "--copies",
        is_flag=True,
        help="Look for copies (crops, smaller, compressed, turned or recoloured copies): each "
        "image scores the best of its copy views (search: one more model run per picture, "
        "for its normalised colours); the space must be indexed with --copies.",
    ),
    click.option(
        "--verify/--no-verify",
        default=True,
        show_default=True,
        help="search --copies: tell results that tie with the first (within 0.02) apart by "
        "local features that agree in place (with the local model index --copies saves).",
    ),
    click.option(
        "--qe",
        "expand",
        default=0,
        type=click.IntRange(0, MAX_EXPAND),
        help="Query expansion: mix each query with its first N results and search again "
        "(off: 0; see docs/guide.md).",
    ),
    click.option(
        "--dba",
        "augment",
        default=0,
        type=click.IntRange(0, MAX_EXPAND),
        help="Database-side augmentation: score the first 100 results against each one mixed "
        "with its N nearest images (off: 0; see docs/guide.md).",
    ),
]


def _query(
    *,
    k: int,
    threshold: float | None,
    combine: bool,
    exclude_self: bool,
    under: Path | None,
    glob: str | None,
    after: str | None,
    before: str | None,
    expand: int,
    augment: int,
    trim: bool,
    copies: bool,
    verify: bool,
    params: SearchParams,
) -> Query:
    filters = Filters.from_text(under=under, glob=glob, after=after, before=before)
    return Query(
        k=k,
        filters=filters,
        threshold=threshold,
        exclude_self=exclude_self,
        combine=combine,
        params=params,
        expand=expand,
        augment=augment,
        trim=trim,
        copies=copies,
        verify=verify,
    )


def query_options(space_help: str) -> Decorator:
    """Result count, cut-off, filters and query handling, ``--space`` (with this help) and the
    search parameters, shared by `search` and `similar`: they arrive as ``query``, a
    :class:`Query`, and ``space``, a :data:`SpaceSelector` or None."""
    keys = [
        "k",
        "threshold",
        "combine",
        "exclude_self",
        "under",
        "glob",
        "after",
        "before",
        "expand",
        "augment",
        "trim",
        "copies",
        "verify",
    ]

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        func = builds("query", _query, [*keys, "params"])(func)
        func = apply(_builds_params(func), _SEARCH_PARAM_OPTIONS)
        func = space_option(space_help)(func)
        return apply(func, _QUERY_OPTIONS)

    return decorate


# -- listings --------------------------------------------------------------------------------

_OUTPUT_OPTIONS = [
    click.option("--json", "fmt", flag_value="json", help="One JSON object per line (per result)."),
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


def output_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The output formats every listing command offers (see :mod:`featx_search.output`),
    arriving as ``out``, a :class:`ListingOutput`."""
    func = builds("out", ListingOutput, ["fmt", "html_file", "montage_file"])(func)
    return apply(func, _OUTPUT_OPTIONS)

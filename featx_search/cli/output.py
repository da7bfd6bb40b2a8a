"""Everything the command line prints: listings, summaries and tables, as text or JSON.

Commands hand their results to the functions here and print nothing themselves. Listings of
images (search results, duplicate groups) are rendered by :mod:`featx_search.output`, which
knows no terminal; this module decides what goes to stdout and what to stderr.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from .. import output as listings
from ..ann.spec import format_bytes
from ..decisions import Decision
from ..dups import DupGroup
from ..evaluation import EDITS, EvalResult
from ..query import Match
from ..reports import CheckReport, IndexReport, LibraryInfo, RecallReport, WhitenReport

if TYPE_CHECKING:
    from .. import BuildInfo, Layer
    from ..extract.catalog import ModelCard
    from ..transfer import CopyReport
    from ..upgrade import SchemaStatus


def _echo(line: str = "", *, err: bool = False) -> None:
    click.echo(line, err=err)


def _json(obj: object) -> None:
    click.echo(json.dumps(obj))


# -- listings (search, similar, dups) --------------------------------------------------------


@dataclass(frozen=True)
class ListingOutput:
    """Where a listing goes: ``fmt`` (one of :data:`featx_search.output.FORMATS`) on stdout,
    and optionally an HTML page and a contact sheet written to files."""

    fmt: str = "table"
    html_file: Path | None = None
    montage_file: Path | None = None


def listing(items: listings.Listing, out: ListingOutput) -> None:
    for line in listings.text(items, out.fmt):
        _echo(line)
    if out.html_file is not None:
        _echo(f"wrote {listings.write_html(items, out.html_file)}", err=True)
    if out.montage_file is not None:
        _echo(f"wrote {listings.write_montage(items, out.montage_file)}", err=True)


def matches(
    command: str,
    names: Sequence[str],
    files: Sequence[Sequence[str]],
    results: Sequence[Sequence[Match]],
    out: ListingOutput,
    *,
    combined: bool,
) -> None:
    """Search results, one section per query (``names[i]`` from the image files
    ``files[i]``); ``combined``: one result list for all the queries together."""
    if combined:
        names, files = [" + ".join(names)], [[f[0] for f in files]]
    listing(listings.match_listing(command, names, results, files), out)


def duplicates(command: str, groups: Sequence[DupGroup], out: ListingOutput) -> None:
    listing(listings.dup_listing(command, groups), out)


def decisions(command: str, recorded: Sequence[Decision], out: ListingOutput) -> None:
    listing(listings.decision_listing(command, recorded), out)


# -- index, whiten, reindex ------------------------------------------------------------------


def _index_summary(report: IndexReport) -> str:
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
        f"space {report.space} ({report.label}"
        + (f", computed in {report.precision})" if report.precision else ")")
    )


def _whiten_summary(report: WhitenReport) -> str:
    if report.dims == 0:
        return f"whitening removed from space {report.space} ({report.label})"
    return (
        f"whitening to {report.dims} dimensions learned from {report.learned_from} vectors; "
        f"space {report.space} ({report.label})"
    )


def index_report(
    report: IndexReport,
    whitened: WhitenReport | None,
    *,
    as_json: bool,
    quiet: bool,
    verbose: bool,
) -> None:
    """What `index` did: a JSON object, or a summary line with the changes (``verbose`` or a
    dry run), failures, missing paths and warnings; ``quiet`` prints nothing but JSON."""
    if as_json:
        _json({**report.to_dict(), **({"whiten": whitened.dims} if whitened else {})})
    elif not quiet:
        if verbose or report.dry_run:
            for action, path in report.changes:
                _echo(f"{action:<7}{path}")
        _echo(_index_summary(report))
        shown = report.failures if verbose else report.failures[:10]
        for path, error in shown:
            _echo(f"  failed: {path}: {error}", err=True)
        if len(report.failures) > len(shown):
            _echo(
                f"  ... {len(report.failures) - len(shown)} more: featx-search info --failed",
                err=True,
            )
        for missing in report.missing:
            _echo(f"  not found (nothing under it changed): {missing}", err=True)
        if whitened is not None:
            _echo(_whiten_summary(whitened))
        for warning in report.warnings:
            _echo(f"  {warning}", err=True)


def interrupted(report: IndexReport) -> None:
    """How far an interrupted `index` got, and the command that resumes it."""
    again = " ".join(shlex.quote(a) for a in sys.argv[1:]) or "index ..."
    _echo(
        f"interrupted: {report.indexed + report.failed} files saved, {report.remaining} "
        f"left; run `featx-search {again}` again to resume",
        err=True,
    )


def note(text: str) -> None:
    """A remark on stderr, after the results (stdout stays the listing alone)."""
    _echo(text, err=True)


def stopping() -> None:
    _echo("stopping after the batch in flight (Ctrl-C again to stop now)", err=True)


def whiten_report(report: WhitenReport, *, as_json: bool) -> None:
    _echo(json.dumps(report.to_dict()) if as_json else _whiten_summary(report))


def rebuilt(built: BuildInfo, *, as_json: bool) -> None:
    if as_json:
        _json(built.to_dict())
        return
    params = " ".join(f"{k}={v}" for k, v in sorted(built.params.to_dict().items()))
    _echo(
        f"rebuilt {built.spec} index of {built.count} vectors in {built.seconds:.1f} s "
        f"({format_bytes(built.nbytes)}{', ' + params if params else ''})"
    )


# -- info, db --------------------------------------------------------------------------------


def recall_report(report: RecallReport, *, as_json: bool) -> None:
    if as_json:
        _json(report.to_dict())
        return
    params = " ".join(f"{k}={v}" for k, v in sorted(report.params.items())) or "exact"
    _echo(
        f"space {report.space}  index={report.spec} ({params})  vectors={report.count}\n"
        f"recall@{report.k} = {report.recall:.3f} against exact search "
        f"({report.queries} stored vectors as queries, {report.seconds:.1f} s)"
    )


def failures(rows: Sequence[tuple[str, str]], *, as_json: bool) -> None:
    for path, error in rows:
        _echo(json.dumps({"path": path, "error": error}) if as_json else f"{path}: {error}")


def library_info(summary: LibraryInfo, *, as_json: bool) -> None:
    if as_json:
        _json(summary.to_dict())
        return
    _echo(f"library: {summary.path}")
    _echo(f"schema:  {summary.revision}")
    counts = ", ".join(f"{n} {state}" for state, n in sorted(summary.images.items())) or "none"
    _echo(f"images:  {counts}")
    if summary.indexing is not None:
        run = summary.indexing
        _echo(
            f"indexing: {run.phase}, {run.done} of {run.total} images "
            f"(process {run.pid}, since {run.started:%H:%M:%S} UTC)"
        )
    if not summary.spaces:
        _echo("spaces:  none (run `featx-search index PATH`)")
    for s in summary.spaces:
        state = "current" if s.index_current else "stale (rebuilt on next use)"
        _echo(
            f"space {s.fingerprint}  {s.label}  weights={s.weights}  dim={s.dim}  "
            f"precision={s.precision}  "
            f"vectors={s.count}  index={state}"
            + (f" {s.index_kind}" if s.index_kind else "")
            + ("" if s.index_spec == "auto" else f" (spec {s.index_spec})")
            + (f"  whitened={s.whitened}" if s.whitened else "")
        )


def schema(status: SchemaStatus) -> None:
    state = "up to date" if status.up_to_date else f"behind head {status.head}"
    _echo(f"{status.path}: revision {status.current or '(empty)'} ({state})")


def copy_report(report: CopyReport, *, as_json: bool) -> None:
    """Rows per table and vector checksums on both sides, then the indexes rebuilt."""
    if as_json:
        _json(report.to_dict())
        return
    _echo(f"copied {report.source} -> {report.destination} in {report.seconds:.1f} s")
    _echo(f"{'table':<22}{'source':>12}{'copy':>12}")
    for t in report.tables:
        mark = "" if t.ok else "  MISMATCH"
        _echo(f"{t.table:<22}{t.source:>12,}{t.destination:>12,}{mark}")
    for c in report.checksums:
        mark = "equal" if c.ok else f"MISMATCH (copy {c.destination[:16] or 'none'})"
        _echo(f"space {c.space_id}: {c.count:,} vectors, sha256 {c.source[:16]}  {mark}")
    for built in report.rebuilt:
        _echo(f"rebuilt {built.spec} index of {built.count:,} vectors in {built.seconds:.1f} s")


def check_report(report: CheckReport) -> None:
    """Notes on stdout, problems on stderr, then ``ok`` when there are none (the caller
    fails the command otherwise)."""
    for note in report.notes:
        _echo(f"note: {note}")
    for problem in report.problems:
        _echo(f"problem: {problem}", err=True)
    if report.ok:
        _echo("ok")


# -- layers, eval ----------------------------------------------------------------------------


def model_table(cards: Sequence[ModelCard], *, as_json: bool) -> None:
    """One line per built-in model, * on the default; JSON: one object per model."""
    if as_json:
        for card in cards:
            _json(card.to_dict())
        return
    names = list(dict.fromkeys(name for card in cards for name in card.scores))
    width = max(len(c.name) for c in cards)
    _echo(
        f"  {'model':<{width}}  input   dim  top-1"
        + "".join(f"  {name}" for name in names)
        + "   img/s  default layers"
    )
    for c in cards:
        dim = str(c.dim) if c.dim is not None else "-"
        top1 = f"{c.imagenet_top1:.3f}" if c.imagenet_top1 is not None else "    -"
        scores = "".join(
            f"  {c.scores[name]:>{len(name)}.3f}" if name in c.scores else f"  {'-':>{len(name)}}"
            for name in names
        )
        speed = f"{c.images_per_s:7.1f}" if c.images_per_s is not None else "      -"
        layers = f"{'+'.join(c.layers) or '(classifier input)'} ({c.pool})"
        _echo(
            f"{'*' if c.default else ' '} {c.name:<{width}}  {c.input_px:>5} {dim:>5}  {top1}"
            f"{scores}  {speed}  {layers}"
        )
        if c.missing:
            _echo(f"    not installed: {c.missing}")
    _echo(
        "* the default model; top-1: published ImageNet accuracy of the weights; scores: "
        "`featx-search eval` with each model's defaults (docs/benchmarks.md); img/s: the "
        "forward pass alone (--speed)",
        err=True,
    )


def layer_table(rows: Sequence[Layer], *, as_json: bool) -> None:
    """One line per layer, * on the default one; JSON: one object per layer."""
    if as_json:
        for r in rows:
            _json(
                {
                    "name": r.name,
                    "shape": list(r.shape or ()) or None,
                    "channels": r.channels,
                    "spatial": r.spatial,
                    "cost": r.cost,
                    "default": r.is_default,
                }
            )
        return
    width = max(len(r.name) for r in rows)
    _echo(f"  {'layer':<{width}}  {'shape':<16} {'channels':>8}  {'spatial':<10} cost")
    for r in rows:
        shape = "x".join(str(d) for d in r.shape) if r.shape is not None else "-"
        cost = f"{100 * r.cost:5.1f}%" if r.cost is not None else "    -"
        channels = str(r.channels) if r.channels is not None else "-"
        _echo(
            f"{'*' if r.is_default else ' '} {r.name:<{width}}  {shape:<16} "
            f"{channels:>8}  {r.spatial:<10} {cost}"
        )
    _echo(
        "* default layer (--layer NAME picks another); cost: share of the network's "
        "FLOPs computed to extract that layer",
        err=True,
    )


def eval_header(*, copies: bool, expansions: bool = False) -> None:
    header = f"{'model':<18} {'layers':<22} {'pool':<4} {'input':<5} {'prec':<4} {'dim':>5}"
    if expansions:
        header += "  qe dba"
    header += "  mAP   P@1   P@10"
    if copies:
        header += "   " + " ".join(k.rjust(4) for k in EDITS) + "  copies@1"
    _echo(header)


def eval_row(r: EvalResult, *, as_json: bool, expansions: bool = False) -> None:
    if as_json:
        _json(r.to_dict())
        return
    line = (
        f"{r.model:<18} {'+'.join(r.layers):<22} {r.pool:<4} {r.input:<5} {r.precision:<4} "
        f"{r.dim:>5}"
    )
    if expansions:
        line += f"  {r.qe:>2} {r.dba:>3}"
    line += f"  {r.map:.3f} {r.p1:.3f} {r.p10:.3f}"
    if r.copies:
        width = len(line)
        line += "  " + " ".join(f"{r.copies[k]:.2f}".rjust(max(4, len(k))) for k in EDITS)
        line += f"  {r.copy_recall:.3f}"
        if r.copy_mode:
            line += "\n" + "copy mode".rjust(width) + "  "
            line += " ".join(f"{r.copy_mode[k]:.2f}".rjust(max(4, len(k))) for k in EDITS)
            line += f"  {r.copy_mode_recall:.3f}"
    _echo(line)


def eval_footer(results: Sequence[EvalResult]) -> None:
    if results:
        r = results[0]
        _echo(f"{r.images} images, {r.queries} queries with another image of their class", err=True)

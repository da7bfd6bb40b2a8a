"""The ``featx-search`` command line: each command is one API call plus formatting (click).

The group and the entry point live here; the commands live in modules by concern
(:mod:`.indexing`, :mod:`.searching`, :mod:`.duplicates`, :mod:`.database`, :mod:`.models`),
the flags they share in :mod:`.options` and :mod:`.index_options`, and everything they print
in :mod:`.output`.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, MutableMapping

import click

from .. import __version__
from .errors import FeatxGroup
from .options import group_db_option, group_index_dir_option
from .process import log_to_stderr, prepare_environment

__all__ = ["cli", "main"]


# Command name -> (module of this package, attribute).
_COMMANDS = {
    "index": ("indexing", "index"),
    "whiten": ("indexing", "whiten"),
    "reindex": ("indexing", "reindex"),
    "embed": ("shards", "embed"),
    "ingest": ("shards", "ingest"),
    "search": ("searching", "search"),
    "similar": ("searching", "similar"),
    "dups": ("duplicates", "dups"),
    "info": ("database", "info"),
    "db": ("database", "db"),
    "models": ("models", "models"),
    "layers": ("models", "layers"),
    "eval": ("models", "eval_command"),
    "serve": ("serving", "serve"),
}


class _Commands(MutableMapping[str, click.Command]):
    """The group's commands, each imported from its module when first looked up: running
    one command does not import what the others need (a cold ``similar`` stays fast)."""

    def __init__(self) -> None:
        self._loaded: dict[str, click.Command] = {}
        self._extra: dict[str, click.Command] = {}

    def __getitem__(self, name: str) -> click.Command:
        if name in self._extra:
            return self._extra[name]
        if name not in self._loaded:
            module, attribute = _COMMANDS[name]
            command = getattr(importlib.import_module(f"{__name__}.{module}"), attribute)
            self._loaded[name] = command
        return self._loaded[name]

    def __setitem__(self, name: str, command: click.Command) -> None:
        self._extra[name] = command

    def __delitem__(self, name: str) -> None:
        del self._extra[name]

    def __iter__(self) -> Iterator[str]:
        yield from _COMMANDS
        yield from (name for name in self._extra if name not in _COMMANDS)

    def __len__(self) -> int:
        return len(set(_COMMANDS) | set(self._extra))


@click.group(
    cls=FeatxGroup,
    commands=_Commands(),
    context_settings={"help_option_names": ["-h", "--help"]},
)
@group_db_option
@group_index_dir_option
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


def main() -> None:
    prepare_environment()  # before anything imports torch
    cli(prog_name="featx-search")

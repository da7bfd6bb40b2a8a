"""Library errors at the command-line edge: one clean error line, naming flags, not parameters."""

from __future__ import annotations

from typing import Any

import click

from ..errors import ConfigError, FeatxError

# Python parameters whose command-line name is not --the-same-words.
_FLAGS = {
    "k": "-k",
    "dims": "DIMS",
    "index": "--index",
    "vectors": "IMAGES",
    "layers": "--layer",
    "out": "--montage",  # the only file a library function names as out
}


def flag(param: str | None) -> str:
    """The command-line name of a library parameter named in a :class:`ConfigError`."""
    if param is None:
        return ""
    return _FLAGS.get(param, "--" + param.replace("_", "-"))


class FeatxGroup(click.Group):
    """Turns featx errors into one clean error line (no traceback) at the CLI edge."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as err:
            raise click.ClickException(str(err.renamed(flag(err.param)))) from err
        except FeatxError as err:
            raise click.ClickException(str(err)) from err

"""Alembic for a library: where the migration scripts are, its config for a database (any
path), the newest revision, and refusing a library written by a newer featx-search."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import LibraryVersionError
from .schema import HEAD_REVISION

if TYPE_CHECKING:
    from sqlalchemy import URL


def migrations_dir() -> Path:
    """Where the Alembic scripts live (``migrations/`` in a checkout, inside the wheel else)."""
    import importlib

    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "migrations" / "env.py").is_file():
        # Even when an editable install maps featx_search.migrations to another checkout.
        return checkout / "migrations"
    package = importlib.import_module("featx_search.migrations")
    return Path(str(package.__file__)).parent


def alembic_config(url: str | URL) -> Any:
    """Alembic's config for the database at ``url``. Its values go through ConfigParser
    interpolation, so every ``%`` (in a path, or an escaped URL) is doubled."""
    from alembic.config import Config

    text = url if isinstance(url, str) else url.render_as_string(hide_password=False)
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()).replace("%", "%%"))
    cfg.set_main_option("sqlalchemy.url", text.replace("%", "%%"))
    return cfg


def alembic_head() -> str:
    """The newest revision among the migration scripts, as Alembic sees it."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    if head is None:
        raise RuntimeError(f"no migrations in {migrations_dir()}")
    return head


def check_known_revision(db: object, current: str | None) -> None:
    """Raise :class:`LibraryVersionError` when ``current`` (the revision of ``db``, a path or
    a :class:`~.connect.Location`, as shown) is one no migration script knows: the library was
    written by a newer featx-search."""
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    if current is None:
        return
    scripts = ScriptDirectory.from_config(alembic_config("sqlite://"))
    try:
        scripts.get_revision(current)
    except CommandError:
        raise LibraryVersionError(
            f"library {db} has schema revision {current!r}, unknown to this featx-search "
            f"(newest known: {HEAD_REVISION})",
            hint="it was written by a newer featx-search: upgrade featx-search to use it",
        ) from None

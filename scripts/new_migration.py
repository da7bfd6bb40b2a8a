#!/usr/bin/env python
"""Write a new Alembic revision by comparing schema.py's tables with a database at the newest
revision, point schema.HEAD_REVISION at it, and regenerate featx_search/sql_sqlite.py.

Usage: .venv/bin/python scripts/new_migration.py "what changed"
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

from alembic import command
from alembic.script import ScriptDirectory

from featx_search import schema
from featx_search.migrate import alembic_config
from featx_search.store import Store


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "head.db"
        scripts = ScriptDirectory.from_config(alembic_config("sqlite://"))
        if scripts.get_current_head() is not None:
            Store.open(db).close()  # a database at head, to diff the models against
        cfg = alembic_config(f"sqlite:///{db}")
        command.revision(cfg, message=sys.argv[1], autogenerate=True)
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    source = Path(schema.__file__)
    text = re.sub(
        r'^HEAD_REVISION = "\w*"$',
        f'HEAD_REVISION = "{head}"',
        source.read_text(),
        count=1,
        flags=re.M,
    )
    source.write_text(text)
    print(f"{source}: HEAD_REVISION = {head!r}")
    # A fresh process, so that it compiles the reads against the schema just written.
    gen_sql = Path(__file__).resolve().parent / "gen_sql.py"
    subprocess.run([sys.executable, str(gen_sql)], check=True)


if __name__ == "__main__":
    main()

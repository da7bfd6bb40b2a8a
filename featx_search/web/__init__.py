"""The web front end: a JSON API over a :class:`~featx_search.Library` (FastAPI), served by
``featx-search serve``. Needs the ``web`` extra (fastapi, uvicorn, python-multipart).

:func:`create_app` builds the ASGI app, for people who mount it in their own server.
"""

from __future__ import annotations

from .app import create_app
from .guard import Guard, check_bind

__all__ = ["Guard", "check_bind", "create_app"]

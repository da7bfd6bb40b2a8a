"""`serve`: the web API over a library (the ``web`` extra)."""

from __future__ import annotations

import secrets
import webbrowser

import click

from ..errors import ConfigError
from .options import db_option, open_library


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--token",
    envvar="FEATX_TOKEN",
    help="Secret every request must carry (Authorization: Bearer, or the cookie set by the "
    "printed link); required for any address but loopback. 'auto' makes one up.",
)
@click.option("--open", "open_browser", is_flag=True, help="Open the printed link in a browser.")
@db_option
@click.pass_context
def serve(ctx: click.Context, host: str, port: int, token: str | None, open_browser: bool) -> None:
    """Serve the library's search page and JSON API (search by upload, similar, browse,
    duplicates, thumbnails).

    Listens on 127.0.0.1 by default and prints the page's address. Images are sent by id only;
    uploads are capped, kept in memory and never indexed. The schema is at /openapi.json, a
    route list at /api/docs.
    """
    try:
        import uvicorn

        from ..web import Guard, check_bind, create_app
    except ImportError as err:
        raise ConfigError(
            f"serve needs the web extra ({err.name} is missing)",
            hint="pip install 'featx-search[web]'",
        ) from None
    if token == "auto":
        token = secrets.token_urlsafe(24)
    check_bind(host, token)
    lib = open_library(ctx)
    names = (host, "127.0.0.1", "localhost", "::1", "[::1]") if host else ()
    app = create_app(lib, guard=Guard(hosts=tuple(dict.fromkeys(names)), token=token))
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
    click.echo(f"featx-search serving {lib.location} at {url}", err=True)
    if open_browser:
        webbrowser.open(url)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        lib.close()

"""``python -m featx_search`` runs the command line."""

from .cli import main

main()

"""Alembic migrations of the library database (shipped as ``featx_search.migrations``)."""

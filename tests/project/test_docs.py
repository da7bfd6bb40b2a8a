"""The docs stay true: docs/cli.md matches the commands' help, every public name is documented
in docs/python-api.md, relative links resolve, the README stays short and keeps the
quickstart that CI proves, and measurements live only in docs/benchmarks.md."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from types import ModuleType

import pytest

import featx_search
from tests.support import load_script

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
README_MAX_BYTES = 10 * 1024

FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _generator() -> ModuleType:
    return load_script("gen_cli_docs")


# -- docs/cli.md -----------------------------------------------------------------------------


def test_cli_md_is_generated_from_the_current_help() -> None:
    page = (DOCS / "cli.md").read_text(encoding="utf-8")
    assert page == _generator().render(), (
        "docs/cli.md is stale: run .venv/bin/python scripts/gen_cli_docs.py"
    )


def test_cli_md_covers_every_command() -> None:
    gen = _generator()
    from featx_search.cli import cli

    page = (DOCS / "cli.md").read_text(encoding="utf-8")
    for path, cmd in gen.walk(cli):
        assert f"## {' '.join(('featx-search', *path))}\n" in page
        assert f"Usage: {' '.join(('featx-search', *path))} " in page
        for param in cmd.params:
            for opt in param.opts:
                if opt.startswith("-"):
                    assert opt in page, f"{opt} of {' '.join(path)} is not in docs/cli.md"


def test_gen_cli_docs_check_fails_on_a_stale_page(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gen = _generator()
    page = tmp_path / "cli.md"
    assert gen.main(["--output", str(page)]) == 0
    assert gen.main(["--check", "--output", str(page)]) == 0
    page.write_text(page.read_text(encoding="utf-8").replace("--threshold", "--limit"))
    assert gen.main(["--check", "--output", str(page)]) == 1
    assert "stale" in capsys.readouterr().err


# -- docs/python-api.md ----------------------------------------------------------------------


def _api_headings() -> set[str]:
    text = (DOCS / "python-api.md").read_text(encoding="utf-8")
    return set(re.findall(r"^### `([A-Za-z_][A-Za-z0-9_]*)`\s*$", text, re.MULTILINE))


def test_python_api_documents_every_public_name() -> None:
    absent = sorted(set(featx_search.__all__) - _api_headings())
    assert not absent, f"docs/python-api.md has no '### `NAME`' section for: {absent}"


def test_python_api_documents_only_public_names() -> None:
    extra = sorted(_api_headings() - set(featx_search.__all__))
    assert not extra, f"docs/python-api.md documents names that are not in __all__: {extra}"


def _python_blocks(page: Path) -> list[str]:
    text = page.read_text(encoding="utf-8")
    return re.findall(r"^```python\n(.*?)^```", text, re.MULTILINE | re.DOTALL)


def test_python_examples_parse_and_import_only_public_names() -> None:
    blocks = [(page, block) for page in PAGES for block in _python_blocks(page)]
    assert any(page == README for page, _ in blocks), "the README has no Python example"
    for page, block in blocks:
        tree = ast.parse(block, filename=str(page))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "featx_search":
                names = [alias.name for alias in node.names]
                private = [n for n in names if n not in featx_search.__all__]
                assert not private, f"{page.name} imports non-public {private}"


# -- links ------------------------------------------------------------------------------------


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower().replace("`", "")
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return {_slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.MULTILINE)}


def _links(page: Path) -> list[str]:
    text = INLINE_CODE.sub("", FENCE.sub("", page.read_text(encoding="utf-8")))
    return LINK.findall(text)


def test_slug_follows_github() -> None:
    assert _slug("Choosing the defaults (`eval`)") == "choosing-the-defaults-eval"
    assert _slug("Index types (`bench_ann`)") == "index-types-bench_ann"
    assert _slug("featx-search db upgrade") == "featx-search-db-upgrade"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in _links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target} (no heading #{anchor})")
    assert not broken, f"{page.relative_to(ROOT)}: {broken}"


def test_docs_pages_are_linked_from_the_readme() -> None:
    linked = {Path(t.partition("#")[0]).name for t in _links(README)}
    unlinked = sorted(p.name for p in DOCS.glob("*.md") if p.name not in linked)
    assert not unlinked, f"README.md links none of: {unlinked}"


# -- the README --------------------------------------------------------------------------------


def test_readme_is_short() -> None:
    size = README.stat().st_size
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes; move detail to docs/"


def test_readme_keeps_the_fresh_machine_quickstart() -> None:
    # CI runs these two commands in a fresh clone (.ci/run); the README must not drift.
    text = README.read_text(encoding="utf-8")
    block = re.search(r"## Quickstart\n\n```bash\n(.*?)```", text, re.DOTALL)
    assert block is not None, "README.md lost its Quickstart block"
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    assert commands == ["scripts/demo", "scripts/test"]
    for script in commands:
        assert (ROOT / script).is_file()


def test_readme_shows_the_result_page() -> None:
    text = README.read_text(encoding="utf-8")
    assert "](docs/result-page.png)" in text
    assert (DOCS / "result-page.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


# -- measurements live in one place ------------------------------------------------------------

MEASUREMENT = re.compile(
    r"\d[\d.,]*\s*(?:img/s|queries/s|MiB|GiB|ms per|x faster|s to build)", re.IGNORECASE
)


@pytest.mark.parametrize(
    "page",
    [p for p in PAGES if p.name != "benchmarks.md"],
    ids=lambda p: p.relative_to(ROOT).as_posix(),
)
def test_measurements_only_in_benchmarks(page: Path) -> None:
    found = MEASUREMENT.findall(page.read_text(encoding="utf-8"))
    assert not found, f"{page.name} quotes measurements {found}; they belong in benchmarks.md"


# -- docs/ARCHITECTURE.md ----------------------------------------------------------------------


def test_architecture_code_map_matches_the_package() -> None:
    text = (DOCS / "ARCHITECTURE.md").read_text(encoding="utf-8")
    package = ROOT / "featx_search"
    modules = {
        f"featx_search/{p.name}" + ("/" if p.is_dir() else "")
        for p in package.iterdir()
        if (p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists()))
    }
    named = set(re.findall(r"`(featx_search/[\w/.]+)`", text))
    unmapped = sorted(m for m in modules if m not in named)
    assert not unmapped, f"docs/ARCHITECTURE.md has no code-map row for: {unmapped}"
    gone = sorted(n for n in named if not (ROOT / n).exists())
    assert not gone, f"docs/ARCHITECTURE.md names paths that do not exist: {gone}"

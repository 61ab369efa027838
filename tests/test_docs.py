"""The README and docs/: a short front page, links that resolve, each result table in one
generated file, and every provenance tag defined in docs/algorithms.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# written by fedkd-compare, fedkd-fuzz, fedkd-leakage and fedkd-bench
GENERATED = sorted(
    [*DOCS.glob("comparison-*.md"), DOCS / "fuzz.md", DOCS / "leakage.md", DOCS / "bench.md"]
)
WRITTEN = [ROOT / "README.md", ROOT / "CONTRIBUTING.md"] + sorted(
    p for p in DOCS.glob("*.md") if p not in GENERATED
)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
TAG = re.compile(r"(?<![\w\])])\[([A-Z][A-Z0-9]+|3P)(?::[^\]]*)?\](?!\()")
# command-line placeholders in usage lines, not provenance tags
PLACEHOLDERS = {"OVERRIDES", "PORT", "APP", "SUPERLINK", "OPTIONS"}


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, flags=re.M)}


def test_the_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move detail into docs/"


@pytest.mark.parametrize("page", WRITTEN + GENERATED, ids=lambda p: p.name)
def test_links_resolve_inside_the_repository(page):
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    for target in LINK.findall(text):
        if re.match(r"[a-z]+://", target):
            continue
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        assert path.is_relative_to(ROOT), f"{page.name}: {target} points outside the repository"
        assert path.exists(), f"{page.name}: {target} does not exist"
        if anchor and path.suffix == ".md":
            assert anchor in anchors(path), f"{page.name}: no heading #{anchor} in {path.name}"


def table_rows(path: Path) -> list[str]:
    return [
        line
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.startswith("| ") and not set(line) <= set("|-: ")
    ]


def test_each_result_table_lives_in_its_generated_file_only():
    header_or_row = {line for path in GENERATED for line in table_rows(path)[1:]}
    assert header_or_row
    for page in WRITTEN:
        copied = [line for line in table_rows(page) if line in header_or_row]
        assert not copied, f"{page.name} copies a generated table row: {copied[0]}"


def test_every_provenance_tag_is_defined_in_algorithms_md():
    algorithms = (DOCS / "algorithms.md").read_text(encoding="utf-8")
    section = algorithms.split("## Provenance tags", 1)[1].split("\n## ", 1)[0]
    defined = set(re.findall(r"^\| `\[([A-Z0-9]+)\]` \|", section, flags=re.M))
    assert {"CODE", "ABS", "3P", "RECALL", "PROPOSED"} <= defined
    sources = [
        *ROOT.glob("configs/**/*.yaml"),
        *(p for d in ("fedkd", "protocol", "clients", "server", "simulations") for p in (ROOT / d).rglob("*.py")),
        *WRITTEN,
    ]  # fmt: skip
    for path in sources:
        text = path.read_text(encoding="utf-8")
        used = set(TAG.findall(text)) - PLACEHOLDERS
        assert used <= defined, f"{path.relative_to(ROOT)} uses undefined tags {used - defined}"
        if used and path.suffix == ".yaml":
            assert "docs/algorithms.md" in text, (
                f"{path.relative_to(ROOT)}: cite docs/algorithms.md"
            )

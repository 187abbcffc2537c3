"""The documentation: the site builds with every link and anchor resolved (MkDocs --strict),
the README's links reach real pages and headings, and the site's home page carries the
README's quick start unchanged."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]
DOCS = ROOT / "docs"


def slug(heading: str) -> str:
    """The anchor MkDocs (Python-Markdown's toc) gives a heading."""
    text = re.sub(r"[^\w\s-]", "", heading).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(page: Path) -> set[str]:
    text = re.sub(r"(?ms)^```.*?^```", "", page.read_text())  # no headings inside code blocks
    return {slug(h) for h in re.findall(r"(?m)^#{1,6} (.+)$", text)}


def section(text: str, title: str) -> str:
    """The body of a ``## title`` section."""
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def test_the_site_builds_with_every_link_and_anchor_resolved(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "site" / "migration" / "index.html").exists()


def test_every_page_is_in_the_navigation():
    nav = (ROOT / "mkdocs.yml").read_text()
    assert sorted(p.name for p in DOCS.glob("*.md")) == sorted(re.findall(r": (\S+\.md)$", nav, re.M))


def test_the_readme_links_reach_pages_and_headings():
    links = re.findall(r"\]\(([^)#\s]+)(?:#([^)\s]+))?\)", (ROOT / "README.md").read_text())
    local = [(path, anchor) for path, anchor in links if not path.startswith(("http://", "https://"))]
    assert local, "the README links to the documentation"
    broken = [
        f"{path}#{anchor}" if anchor else path
        for path, anchor in local
        if not (ROOT / path).exists() or (anchor and anchor not in anchors(ROOT / path))
    ]
    assert broken == []


def test_the_site_home_has_the_readme_quick_start():
    readme, home = (ROOT / "README.md").read_text(), (DOCS / "index.md").read_text()
    assert section(home, "Quick start") == section(readme, "Quick start")

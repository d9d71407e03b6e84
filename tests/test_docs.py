"""The README and docs/ hold together: every relative link in README.md and docs/*.md names a file
that exists and, with a `#anchor`, a heading of that file (GitHub's slugs); the README opens with
the two set-up commands, the second being what CI runs; and the README fits on a screen."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [ROOT / "README.md", *DOCS, ROOT / "bench" / "README.md", *sorted((ROOT / "examples").glob("*/README.md"))]
README_MAX_LINES = 80  # the front page: what runner is, install, demo, a run, resume, exit codes, links

FENCE = re.compile(r"^(```|~~~)")
INLINE_CODE = re.compile(r"(`+).+?\1")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)  # https:, mailto:, ...


def prose_lines(text: str) -> list[str]:
    """The lines of a Markdown text outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.lstrip()):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text lower-cased, punctuation dropped (word
    characters, spaces and hyphens kept), each space a hyphen."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text
    text = text.replace("`", "").replace("*", "")
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file; a repeated heading gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    for line in prose_lines(path.read_text()):
        match = HEADING.match(line)
        if match:
            base = slug(match.group(2))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


def broken_links(page: Path) -> list[str]:
    """The relative links of `page` that name no file, or no heading of the file they name."""
    broken = []
    for line in prose_lines(page.read_text()):
        for target in LINK.findall(INLINE_CODE.sub("", line)):
            if EXTERNAL.match(target):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{target}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{target}: no such heading")
    return broken


@pytest.mark.parametrize("heading, anchor", [
    ("Exit codes", "exit-codes"),
    ("One budget over many processes: `--redis`", "one-budget-over-many-processes---redis"),
    ("The Batch API: `--via batch`", "the-batch-api---via-batch"),
    ("Resume, durability, and one run at a time", "resume-durability-and-one-run-at-a-time"),
    ("Design notes: the packages", "design-notes-the-packages"),
    ("Overnight, from cron: prepare, estimate, run, status, retry",
     "overnight-from-cron-prepare-estimate-run-status-retry"),
    ("Budgets shared by the key's models", "budgets-shared-by-the-keys-models"),
    ("One big file over several processes: `--shard K/N`", "one-big-file-over-several-processes---shard-kn"),
    ("See [the docs](docs/README.md)", "see-the-docs"),
])
def test_anchors_are_githubs_slugs(heading, anchor):
    assert slug(heading) == anchor


def test_a_missing_file_or_heading_is_reported(tmp_path):
    (tmp_path / "other.md").write_text("# Other\n\n## A section: `--flag`\n\n## A section: `--flag`\n")
    page = tmp_path / "page.md"
    page.write_text("# Page\n\n[ok](other.md) [ok](other.md#a-section---flag-1) [ok](#page)\n"
                    "[ok](https://example.com/nowhere.md) `[not a link](nowhere.md)`\n"
                    "```\n[in a code block](nowhere.md)\n```\n"
                    "[gone](nowhere.md) [bad anchor](other.md#nowhere) [bad here](#nowhere)\n")
    assert broken_links(page) == ["nowhere.md: no such file", "other.md#nowhere: no such heading",
                                  "#nowhere: no such heading"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    assert broken_links(page) == []


def test_every_docs_page_is_reachable_from_the_readme():
    """The README links docs/README.md, and some page links each page of docs/."""
    linked = set()
    for page in PAGES:
        for line in prose_lines(page.read_text()):
            for target in LINK.findall(INLINE_CODE.sub("", line)):
                if not EXTERNAL.match(target) and target.partition("#")[0]:
                    linked.add((page.parent / target.partition("#")[0]).resolve())
    assert ROOT / "docs" / "README.md" in linked
    assert [p.name for p in DOCS if p not in linked] == []


def test_the_readme_opens_with_the_demo_and_the_test_command_ci_runs():
    readme = (ROOT / "README.md").read_text()
    first_block = readme.split("```bash\n", 1)[1].split("```", 1)[0]
    assert first_block.splitlines() == ["pip install -e . && runner demo",
                                        "pip install -e '.[test]' && python -m pytest -q"]
    assert readme.index("```bash\n") < readme.index("\n## ")  # before any section
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert first_block.splitlines()[1] in ci


def test_the_readme_fits_on_a_screen():
    assert len((ROOT / "README.md").read_text().splitlines()) <= README_MAX_LINES

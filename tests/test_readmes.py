"""The READMEs a newcomer reads: the root one short and complete about the make targets, every
section moved to a folder's README one link away from it, and no link that leads nowhere."""

import re
from pathlib import Path

import pytest

from conftest import REPO

ROOM_READMES = ["harness/README.md", "studies/README.md", "models/README.md", "tests/README.md"]
ROOT = REPO / "README.md"
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def without_code_blocks(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def headings(path: Path, deepest: int = 6) -> list[str]:
    return [m.group(2) for m in re.finditer(r"^(#{1,%d})\s+(.+?)\s*$" % deepest, without_code_blocks(path.read_text()), re.M)]


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_the_root_readme_is_short():
    assert len(ROOT.read_text().splitlines()) < 300


def test_every_make_target_is_in_the_root_readme():
    targets = re.findall(r"^([a-z][a-z-]*):.*##", (REPO / "Makefile").read_text(), re.M)
    assert len(targets) >= 15
    text = ROOT.read_text()
    assert [t for t in targets if not re.search(rf"\bmake {t}\b(?!-)", text)] == []


@pytest.mark.parametrize("readme", ["README.md", *ROOM_READMES])
def test_every_relative_link_leads_to_a_file_and_a_heading(readme):
    source = REPO / readme
    broken = []
    for target in LINK.findall(without_code_blocks(source.read_text())):
        if re.match(r"^[a-z]+:", target):
            continue
        file_part, _, fragment = target.partition("#")
        dest = (source.parent / file_part).resolve() if file_part else source
        if not dest.exists() or (fragment and fragment not in {anchor(h) for h in headings(dest)}):
            broken.append(target)
    assert broken == []


@pytest.mark.parametrize("readme", ROOM_READMES)
def test_every_section_of_a_folder_readme_is_linked_from_the_root_map(readme):
    linked = set(LINK.findall(ROOT.read_text()))
    sections = [anchor(h) for h in headings(REPO / readme, deepest=2)[1:]]  # its ## sections (the # title is the folder)
    assert sections, f"{readme} has no sections"
    assert [s for s in sections if f"{readme}#{s}" not in linked] == []

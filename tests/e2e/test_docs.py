"""Citations of the project's docs resolve (pure Python: no torch, no modelcdr binary).

Code comments cite format facts as ``docs/FORMATS.md §N`` and other docs as ``docs/NAME.md``.
These tests fail when a cited FORMATS.md section (or a numbered item of one) is missing from
docs/FORMATS.md, when a cited ``docs/...`` path does not exist, or when a comment points at a
document outside the repository (the team's shared reference copies).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

REPO = Path(__file__).resolve().parents[2]
FORMATS = REPO / "docs" / "FORMATS.md"
SCANNED_DIRS = ("src", "include", "tests", "fuzz", "bench", "scripts", "examples", "docs")
SCANNED_FILES = ("README.md", "CMakeLists.txt")
SUFFIXES = {".cpp", ".hpp", ".h", ".cc", ".c", ".py", ".md", ".sh", ".txt", ".cmake", ".toml", ".cfg", ".ini"}
THIS_FILE = Path(__file__).resolve()

SECTION = r"§\s*(\d+(?:\.\d+)*)(?:\s*[-–]\s*(\d+(?:\.\d+)*))?"
# "FORMATS.md" then the rest of its line; a citation may continue on the next comment line
# ("(docs/FORMATS.md\n// §5.4)"). Section refs end at the next mention of another .md file.
CITATION = re.compile(r"FORMATS\.md(?P<tail>[^\n]*(?:\n[ \t]*(?://|#|\*)[ \t]*§[^\n]*)?)")
ITEM = re.compile(SECTION + r"\s+item\s+(\d+)")
DOC_PATH = re.compile(r"(?<![\w./-])docs/[\w./-]*?\.md\b")
# Documents that exist only outside the repository: a citation of one must say docs/...
OUTSIDE = re.compile(r"shared/docs|(?<!docs/)\b(?:FORMATS|ARCHITECTURE|STYLE)\.md\b")


def tree_files() -> Iterator[Path]:
    for d in SCANNED_DIRS:
        for p in sorted((REPO / d).rglob("*")):
            # a virtual environment (bench/.venv-scanners) holds other projects' files, not ours
            if any(part.startswith(".venv") for part in p.relative_to(REPO).parts):
                continue
            if p.is_file() and p.suffix in SUFFIXES and p.resolve() != THIS_FILE:
                yield p
    for f in SCANNED_FILES:
        if (REPO / f).is_file():
            yield REPO / f


def formats_sections(text: str) -> Dict[str, str]:
    """Section number -> its text (heading to the next heading of any level)."""
    heads = list(re.finditer(r"^#+\s*§(\d+(?:\.\d+)*)\b.*$", text, re.M))
    out = {}
    for i, h in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
        out[h.group(1)] = text[h.start():end]
    return out


def cited_sections(text: str) -> List[Tuple[str, int]]:
    """(section, line) for every FORMATS.md § citation; a range 7.1-7.2 yields both ends."""
    out = []
    for m in CITATION.finditer(text):
        tail = re.split(r"\b\w+\.md\b", m.group("tail"), maxsplit=1)[0]
        line = text.count("\n", 0, m.start()) + 1
        for s in re.finditer(SECTION, tail):
            out.extend((sec, line) for sec in s.groups() if sec)
    return out


def cited_items(text: str) -> List[Tuple[str, str, int]]:
    """(section, item number, line) for citations such as 'FORMATS.md §5.4 item 5'."""
    out = []
    for m in CITATION.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        for it in ITEM.finditer(m.group("tail")):
            out.append((it.group(1), it.group(3), line))
    return out


def missing_citations(files: Dict[str, str], sections: Dict[str, str]) -> List[str]:
    problems = []
    for name, text in files.items():
        for sec, line in cited_sections(text):
            if sec not in sections:
                problems.append(f"{name}:{line}: cites docs/FORMATS.md §{sec}, which has no such section")
        for sec, item, line in cited_items(text):
            body = sections.get(sec, "")
            if not re.search(rf"^{item}\. ", body, re.M):
                problems.append(f"{name}:{line}: cites docs/FORMATS.md §{sec} item {item}, which that section lacks")
    return problems


def read_tree() -> Dict[str, str]:
    return {str(p.relative_to(REPO)): p.read_text(encoding="utf-8", errors="replace") for p in tree_files()}


def test_every_cited_formats_section_exists():
    sections = formats_sections(FORMATS.read_text(encoding="utf-8"))
    files = read_tree()
    n = sum(len(cited_sections(t)) for t in files.values())
    # The code cites about 30 sections today: finding none means the scan itself broke.
    assert n >= 20, f"only {n} FORMATS.md citations found: the pattern no longer matches the comments"
    assert missing_citations(files, sections) == []


def test_checker_reports_a_missing_section_and_item():
    sections = formats_sections("## §2 Zip\n### §2.3 Container\n### §5.4 Profile\n1. one\n2. two\n")
    files = {
        "a.cpp": "// ok (docs/FORMATS.md §2.3), and a range (docs/FORMATS.md §2-2.3)\n",
        "b.hpp": "// Writes (docs/FORMATS.md\n// §9): records\n",
        "c.cpp": "// see docs/FORMATS.md §5.4 item 5, option b; docs/MTD.md §4 is not ours\n",
        "d.py": "# docs/FORMATS.md §7.1-7.2\n",
    }
    assert sorted(missing_citations(files, sections)) == [
        "b.hpp:1: cites docs/FORMATS.md §9, which has no such section",
        "c.cpp:1: cites docs/FORMATS.md §5.4 item 5, which that section lacks",
        "d.py:1: cites docs/FORMATS.md §7.1, which has no such section",
        "d.py:1: cites docs/FORMATS.md §7.2, which has no such section",
    ]


def test_every_section_says_where_it_lives_in_the_code():
    sections = formats_sections(FORMATS.read_text(encoding="utf-8"))
    assert len(sections) >= 30

    def has_line(sec: str) -> bool:
        return "Where in the code:" in sections.get(sec, "")

    lacking = []
    for sec in sections:
        parent = sec.rsplit(".", 1)[0] if "." in sec else None
        subs = [s for s in sections if s.startswith(sec + ".")]
        # The line may sit in the parent section, or in every one of the subsections.
        if not (has_line(sec) or (parent and has_line(parent)) or (subs and all(has_line(s) for s in subs))):
            lacking.append(f"§{sec}")
    assert lacking == [], "sections without a 'Where in the code' line"


def test_cited_code_paths_in_formats_exist():
    text = FORMATS.read_text(encoding="utf-8")
    paths: Set[str] = set(re.findall(r"`((?:src|include|tests)/[\w./{},-]+)`", text))
    missing = []
    for p in paths:
        m = re.match(r"(.*)\{(.*)\}$", p)  # src/pickle/pickle_emitter.{hpp,cpp}
        for q in ([m.group(1) + ext for ext in m.group(2).split(",")] if m else [p]):
            if not (REPO / q).exists():
                missing.append(q)
    assert len(paths) >= 20
    assert missing == []


def test_every_cited_doc_path_exists():
    missing = []
    for name, text in read_tree().items():
        for m in DOC_PATH.finditer(text):
            if not (REPO / m.group(0)).is_file():
                missing.append(f"{name}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)} does not exist")
    assert missing == []


def test_no_comment_cites_a_document_outside_the_repository():
    found = []
    for name, text in read_tree().items():
        for m in OUTSIDE.finditer(text):
            found.append(f"{name}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}")
    assert found == []

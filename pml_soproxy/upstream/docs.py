"""The docs sections: each class's section in PML's alphabetical list of
classes on its docs page, and the loss in ``WeightRegularizerMixin``'s
"Extended by" list."""

from typing import List, Sequence, Tuple

from .tree import UpstreamError


def _headings(lines: Sequence[str]) -> List[Tuple[int, str]]:
    """(line index, name) of the ``## `` headings outside fenced code blocks."""
    headings = []
    in_fence = False
    for index, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("```"):
            in_fence = not in_fence
        elif not in_fence and line.startswith("## "):
            headings.append((index, stripped[3:].strip()))
    return headings


def insert_docs_section(page: str, section: str) -> str:
    """Put ``section`` (starting with ``## Name``) where PML's alphabetical list of
    classes wants it, or replace the section of that name if the page has one."""
    first = section.lstrip("\n").splitlines()[0]
    if not first.startswith("## "):
        raise UpstreamError("a docs section must start with '## Name'")
    name = first[3:].strip()
    body = section.strip("\n") + "\n"
    lines = page.splitlines(keepends=True)
    headings = _headings(lines)
    for position, (index, heading) in enumerate(headings):
        if heading == name:
            if position + 1 < len(headings):
                end = headings[position + 1][0]
                return "".join(lines[:index]) + body + "\n" + "".join(lines[end:])
            return "".join(lines[:index]) + body
    later = [index for index, heading in headings if heading.lower() > name.lower()]
    if later:
        index = later[0]
        before = "".join(lines[:index])
        if before and not before.endswith("\n\n"):
            before += "\n" if before.endswith("\n") else "\n\n"
        return before + body + "\n" + "".join(lines[index:])
    page = page.rstrip("\n")
    return page + "\n\n\n" + body


def add_to_extended_by(page: str, mixin: str, class_name: str, docs_page: str) -> str:
    """Add ``class_name`` to the "Extended by:" list of ``mixin``'s docs section."""
    link = "* [{0}]({1}#{2})".format(class_name, docs_page, class_name.lower())
    lines = page.splitlines(keepends=True)
    headings = _headings(lines)
    for position, (index, heading) in enumerate(headings):
        if heading != mixin:
            continue
        end = headings[position + 1][0] if position + 1 < len(headings) else len(lines)
        items = [
            i
            for i in range(index, end)
            if lines[i].startswith("* [") and "](" in lines[i]
        ]
        if not items or any(lines[i].strip() == link for i in items):
            return page
        insert_at = items[-1] + 1
        for i in items:
            if lines[i][3:].split("]")[0].lower() > class_name.lower():
                insert_at = i
                break
        return "".join(lines[:insert_at]) + link + "\n" + "".join(lines[insert_at:])
    return page

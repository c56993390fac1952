"""What the documentation tests read from the Markdown files: SQL examples, sections, links and anchors."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

# Every user-facing Markdown file: the README, the changelog, docs/ and the package READMEs.
USER_FACING = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted(DOCS.rglob("*.md")),
               ROOT / "webhooks" / "README.md", ROOT / "worker" / "README.md", ROOT / "worker" / "BACKFILL.md"]
# Files whose SQL examples must run against a migrated mirror.
WITH_SQL = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]

_FENCE = re.compile(r"^```.*?^```", flags=re.MULTILINE | re.DOTALL)
_HEADING = re.compile(r"^(#{1,6}) +(.+?) *$", flags=re.MULTILINE)


def sql_blocks(path: Path) -> list[list[str]]:
    """The statements of each ```sql block of ``path``, comment lines dropped."""
    blocks = []
    for block in re.findall(r"^```sql\n(.*?)^```", path.read_text(), flags=re.MULTILINE | re.DOTALL):
        text = "\n".join(line for line in block.splitlines() if not line.strip().startswith("--"))
        statements = [s.strip() for s in text.split(";") if s.strip()]
        if statements:
            blocks.append(statements)
    return blocks


def is_role_statement(statement: str) -> bool:
    """Role management (an operator's example), not a query of the mirror."""
    return statement.upper().startswith(("CREATE ROLE", "ALTER ROLE", "GRANT", "REVOKE"))


def without_code(text: str) -> str:
    return _FENCE.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    for _level, title in _HEADING.findall(without_code(path.read_text())):
        base = slug(title)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def sections(path: Path, level: int) -> dict[str, str]:
    """Heading text -> body, for headings of exactly ``level``. A heading with an empty body (several headings
    over one shared body) gets the next body."""
    text = path.read_text()
    matches = [m for m in _HEADING.finditer(text) if len(m.group(1)) <= level]
    parts: list[tuple[str, int, str]] = []
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        parts.append((match.group(2), len(match.group(1)), text[match.end():end].strip()))
    result: dict[str, str] = {}
    for i, (title, depth, body) in enumerate(parts):
        if depth != level:
            continue
        j = i
        while not body and j + 1 < len(parts) and parts[j + 1][1] == level:
            j += 1
            body = parts[j][2]
        result[title] = body
    return result


def links(path: Path) -> list[str]:
    """Relative link targets of ``path`` (outside code blocks)."""
    targets = re.findall(r"\]\(([^)\s]+)\)", without_code(path.read_text()))
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]

"""Fail when a built page loads a script or style sheet from the network: the site must read
offline (its math too: MathJax is served from ``_static/mathjax``). ``nox -s docs`` runs it
after the HTML build: ``python docs/_ext/offline.py docs/_build/html``."""

from __future__ import annotations

import re
import sys
from pathlib import Path

#: A <script src=...> or <link href=...> that leaves the site.
REMOTE = re.compile(r"<(?:script[^>]*\ssrc|link[^>]*\shref)=\"(https?:)?//[^\"]+\"")


def remote_assets(site: Path) -> list[str]:
    """``page: tag`` for each remote script or style sheet of the built site."""
    found = []
    for page in sorted(site.rglob("*.html")):
        for match in REMOTE.finditer(page.read_text(encoding="utf-8")):
            found.append(f"{page.relative_to(site)}: {match.group(0)}")
    return found


def main(site: str) -> int:
    root = Path(site)
    if not (root / "_static" / "mathjax" / "tex-chtml.js").is_file():
        print(f"{root}/_static/mathjax/tex-chtml.js is missing: the math would not render")
        return 1
    found = remote_assets(root)
    for line in found:
        print(line)
    if found:
        print(f"{len(found)} remote scripts or style sheets: the site would not read offline")
        return 1
    print(f"{root}: every script and style sheet is local")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:]))

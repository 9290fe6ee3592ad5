"""``report.html``: the study's report as one page a person opens without the UI — the results
table beside the paper's, the notes, and the figures (PNG files beside it in ``reports/``).

The sections are the markdown the assets already write for Dagster's metadata; this module turns the
small subset they use (pipe tables, ``-`` lists, ``![alt](file.png)`` images, paragraphs) into HTML.
"""

from __future__ import annotations

import html
import re

STYLE = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:13px;margin:0.5em 0}td,th{border:1px solid #ccc;padding:3px 6px}
th{background:#f0f0f0}td.num{text-align:right}img{max-width:100%;border:1px solid #ddd;margin:0.5em 0}
h2{border-bottom:1px solid #ddd;padding-bottom:0.2em}.meta{color:#666;font-size:13px}"""
IMAGE = re.compile(r"^!\[([^\]]*)\]\(([^)]+)\)$")


def _inline(text: str) -> str:
    escaped = html.escape(text)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)


def _table(lines: list[str]) -> str:
    def cells(line: str) -> list[str]:
        return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]

    head, body = cells(lines[0]), [cells(line) for line in lines[2:]]
    numeric = re.compile(r"^[+\-–]?[\d.,]+( ?%)?( ± [\d.]+)?$")
    out = ["<table><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr>"]
    for row in body:
        out.append(
            "<tr>" + "".join(f"<td{' class=num' if numeric.match(c) else ''}>{_inline(c)}</td>" for c in row) + "</tr>"
        )
    return "\n".join(out) + "</table>"


def markdown_to_html(text: str) -> str:
    """The markdown subset of the assets' reports as HTML."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        line = lines[i].rstrip()
        if not line:
            i += 1
        elif line.startswith("|"):
            table = []
            while i < len(lines) and lines[i].startswith("|"):
                table.append(lines[i])
                i += 1
            blocks.append(_table(table))
        elif line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{_inline(lines[i][2:])}</li>")
                i += 1
            blocks.append("<ul>" + "".join(items) + "</ul>")
        elif IMAGE.match(line):
            alt, src = IMAGE.match(line).groups()
            blocks.append(f'<img alt="{html.escape(alt)}" src="{html.escape(src)}">')
            i += 1
        else:
            blocks.append(f"<p>{_inline(line)}</p>")
            i += 1
    return "\n".join(blocks)


def report_html(title: str, subtitle: str, sections: list[tuple[str, str]]) -> str:
    """A whole page: ``sections`` are (heading, markdown)."""
    body = "\n".join(f"<h2>{html.escape(heading)}</h2>\n{markdown_to_html(text)}" for heading, text in sections)
    return (
        f"<!doctype html>\n<html><head><meta "
        f"charset=utf-8><title>{html.escape(title)}</title><style>{STYLE}</style></head>\n"
        f"<body><h1>{html.escape(title)}</h1><p class=meta>{html.escape(subtitle)}</p>\n{body}\n</body></html>\n"
    )

"""A single-file HTML report: the Markdown summary rendered to HTML, with the plots embedded."""

from __future__ import annotations

import base64
import html
import re
from typing import Any

from npcompile.report.document import render_markdown

__all__ = ["render_html"]

_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}td,th{border:1px solid #ccc;padding:.25em .6em}
th{background:#f3f3f3}td:not(:first-child){text-align:right}img{max-width:100%}
blockquote{color:#555;border-left:3px solid #ccc;margin:0;padding-left:1em}code{background:#f3f3f3}"""


def _inline(text: str) -> str:
    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def _markdown_to_html(md: str, images: dict[str, bytes]) -> str:
    out: list[str] = []
    lines = md.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{_inline(line[level:].strip())}</h{level}>")
        elif line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                rows.append([c.strip() for c in lines[i].strip("|").split("|")])
                i += 1
            head, body = rows[0], [r for r in rows[1:] if not all(set(c) <= set("-:") for c in r)]
            out.append("<table><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in body]
            out.append("</table>")
            continue
        elif line.startswith("!["):
            m = re.match(r"!\[(.*?)\]\((.*?)\)", line)
            if m and m.group(2) in images:
                data = base64.b64encode(images[m.group(2)]).decode()
                out.append(f'<p><img alt="{html.escape(m.group(1))}" src="data:image/png;base64,{data}"></p>')
        elif line.startswith("- "):
            out.append("<ul>")
            while i < len(lines) and lines[i].startswith("- "):
                out.append(f"<li>{_inline(lines[i][2:])}</li>")
                i += 1
            out.append("</ul>")
            continue
        elif line.startswith("> "):
            out.append(f"<blockquote>{_inline(line[2:])}</blockquote>")
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
        i += 1
    return "\n".join(out)


def render_html(report: dict[str, Any], images: dict[str, bytes]) -> str:
    """One self-contained HTML page for ``report``."""
    body = _markdown_to_html(render_markdown(report, list(images)), images)
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>npcompile report</title>"
            f"<style>{_CSS}</style></head><body>\n{body}\n</body></html>\n")

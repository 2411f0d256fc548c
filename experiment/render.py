"""Report blocks rendered as Markdown and as one self-contained HTML page (PNGs inlined as
base64), from the same list of blocks so the two never disagree."""

from __future__ import annotations

import base64
import html
import re
from typing import Any

# A block is ("h1"|"h2"|"h3"|"p", text) | ("ul", [text]) | ("table", (header, rows))
# | ("img", (path, alt)); text uses `code`, **bold** and *em* only.
Block = tuple[str, Any]


def markdown(blocks: list[Block]) -> str:
    lines: list[str] = []
    for kind, content in blocks:
        if kind in ("h1", "h2", "h3"):
            lines += [f"{'#' * int(kind[1])} {content}", ""]
        elif kind == "p":
            lines += [content, ""]
        elif kind == "ul":
            lines += [f"- {item}" for item in content] + [""]
        elif kind == "table":
            header, rows = content
            lines.append("| " + " | ".join(header) + " |")
            lines.append("|" + "---|" * len(header))
            lines += ["| " + " | ".join(row) + " |" for row in rows]
            lines.append("")
        elif kind == "img":
            path, alt = content
            lines += [f"![{alt}](plots/{path.name})", ""]
    return "\n".join(lines)


def _inline(text: str) -> str:
    """The little markdown the blocks use (`code`, **bold**, *em*) as HTML."""
    text = html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    text = re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", text)
    return re.sub(r"\*([^*]+)\*", r"<i>\1</i>", text)


def html_page(blocks: list[Block], title_text: str) -> str:
    body: list[str] = []
    for kind, content in blocks:
        if kind in ("h1", "h2", "h3", "p"):
            body.append(f"<{kind}>{_inline(content)}</{kind}>")
        elif kind == "ul":
            body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in content) + "</ul>")
        elif kind == "table":
            header, rows = content
            head = "".join(f"<th>{_inline(h)}</th>" for h in header)
            cells = "".join(
                "<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in row) + "</tr>" for row in rows
            )
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>")
        elif kind == "img":
            path, alt = content
            data = base64.b64encode(path.read_bytes()).decode()
            body.append(
                f'<figure><img alt="{html.escape(alt)}" '
                f'src="data:image/png;base64,{data}"></figure>'
            )
    title = html.escape(title_text)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
th {{ background: #f3f3f3; }}
.better {{ color: #1a7f1a; font-weight: 600; }} .worse {{ color: #c62828; font-weight: 600; }}
img {{ max-width: 100%; }} code {{ background: #f3f3f3; padding: 0 0.2em; }}
</style></head><body>
{chr(10).join(body)}
</body></html>
"""


def _cell(text: str) -> str:
    css = "better" if text.endswith(" better") else "worse" if text.endswith(" worse") else ""
    inner = _inline(text)
    return f'<span class="{css}">{inner}</span>' if css else inner

"""Static HTML reports that open from disk: an evaluation's or a reproduce run's.

An evaluation (`evaluation.write_report`) or a reproduce run (`launch.reproduce`): the markdown
tables (gates, Table 2, metrics), a per-scan table and the figures (Bland-Altman, overlays). A
reproduce report opens with a one-screen summary (`summary_html`): the gates as pass/fail marks,
the gap share, a figure of F1 per column and the overlays of one CCTA test scan; the full tables
follow.

Images are linked by paths relative to the HTML file, so the report folder can be opened,
zipped or moved as a whole; nothing is fetched from the network. A few lines of inline script
count images that failed to load into `<body data-broken-images="N">` and record where the
summary ends (`data-summary-bottom`, CSS pixels), what the headless-browser test reads (harmless
for readers). Nothing here prints.
"""

from __future__ import annotations

from collections.abc import Sequence
import html
import os
import re

from cac_jax import atomic

NOTICE = "Research use only; not a medical device."

_CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:0.9em}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}thead{background:#f0f0f0}figure{margin:1.5em 0}
img{max-width:100%;border:1px solid #ddd}figcaption{font-size:0.9em;color:#555}
.notice{background:#fff3cd;border:1px solid #e0c36b;padding:0.5em 1em}code{background:#f4f4f4;padding:0 3px}
td.text{text-align:left}#summary{border:1px solid #ccc;padding:0.5em 1em;margin:1em 0}
ul.gates{list-style:none;padding:0}ul.gates li{margin:0.3em 0}.mark{font-weight:bold;display:inline-block;width:4.5em}
.pass .mark{color:#1a7f37}.fail .mark{color:#c62828}.reading .mark{color:#666}
.side{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}.side>div,.side figure{margin:0;flex:1 1 380px}"""

_CHECK_IMAGES = """<script>
window.addEventListener("load", function () {
  var summary = document.getElementById("summary");
  if (summary) {
    var bottom = summary.getBoundingClientRect().bottom + window.scrollY;
    document.body.setAttribute("data-summary-bottom", String(Math.round(bottom)));
  }
  var broken = 0;
  for (var i = 0; i < document.images.length; i++) {
    var img = document.images[i];
    if (!img.complete || img.naturalWidth === 0) { broken++; }
  }
  document.body.setAttribute("data-broken-images", String(broken));
});
</script>"""


# A cell that reads as a number ("0.41", "0.41 (0.05)", "12.5 [3.1, 20]", "n/a"): right-aligned;
# text cells are left-aligned.
_NUMBER = re.compile(r"^\s*(-?[\d.]+(e-?\d+)?|n/a)(\s|$)")


def _inline(text: str) -> str:
  """Escape, then `code` and **bold**."""
  out = html.escape(text)
  out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
  return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)


def _cells(line: str) -> list[str]:
  return [c.strip() for c in line.strip().strip("|").split("|")]


def markdown_to_html(md: str) -> str:
  """The markdown this project writes (headings, pipe tables, paragraphs, - lists) as HTML."""
  out: list[str] = []
  lines = md.splitlines()
  i = 0
  while i < len(lines):
    line = lines[i]
    if line.startswith("#"):
      level = min(len(line) - len(line.lstrip("#")), 6)
      out.append(f"<h{level}>{_inline(line[level:].strip())}</h{level}>")
      i += 1
    elif line.strip().startswith("|"):
      block = []
      while i < len(lines) and lines[i].strip().startswith("|"):
        block.append(lines[i])
        i += 1
      rows = [_cells(b) for b in block if not re.fullmatch(r"\|?[\s:|-]+\|?", b.strip())]
      out.append(table_html(rows[0], rows[1:], escape=False, inline=True))
    elif line.strip().startswith("- "):
      items = []
      while i < len(lines) and lines[i].strip().startswith("- "):
        items.append(f"<li>{_inline(lines[i].strip()[2:])}</li>")
        i += 1
      out.append("<ul>" + "".join(items) + "</ul>")
    elif line.strip():
      para = []
      while i < len(lines) and lines[i].strip() and not lines[i].startswith(("#", "|", "- ")):
        para.append(lines[i].strip())
        i += 1
      out.append(f"<p>{_inline(' '.join(para))}</p>")
    else:
      i += 1
  return "\n".join(out)


def table_html(
  header: Sequence, rows: Sequence[Sequence], escape: bool = True, inline: bool = False
) -> str:
  """An HTML table that scrolls sideways when wide.

  Floats >= 100 with one decimal, others with 3 significant digits; numbers right-aligned, text
  left-aligned."""

  def cell(v) -> str:
    if isinstance(v, float):
      v = f"{v:.1f}" if abs(v) >= 100 else f"{v:.3g}"
    v = str(v)
    return _inline(v) if inline else (html.escape(v) if escape else v)

  def td(k: int, v) -> str:  # the first column is left-aligned by the style sheet
    numeric = k == 0 or isinstance(v, (int, float)) or bool(_NUMBER.match(str(v)))
    return f"<td>{cell(v)}</td>" if numeric else f'<td class="text">{cell(v)}</td>'

  head = "".join(f"<th>{cell(h)}</th>" for h in header)
  body = "".join("<tr>" + "".join(td(k, v) for k, v in enumerate(r)) + "</tr>" for r in rows)
  return f'<div style="overflow-x:auto"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def figure_html(image_path: str, html_path: str, caption: str) -> str:
  """An <img> linked relative to the report file, with a caption."""
  rel = os.path.relpath(os.path.abspath(image_path), os.path.dirname(os.path.abspath(html_path)))
  src = html.escape(rel.replace(os.sep, "/"), quote=True)
  alt, text = html.escape(caption, quote=True), html.escape(caption)
  return f'<figure><img src="{src}" alt="{alt}"><figcaption>{text}</figcaption></figure>'


def write_html(path: str, title: str, parts: Sequence[str]) -> str:
  """Write a self-contained page (title, research-use notice, `parts` HTML) atomically."""
  doc = (
    '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
    f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n"
    f'<h1>{html.escape(title)}</h1>\n<p class="notice">{NOTICE}</p>\n'
    + "\n".join(parts)
    + f"\n{_CHECK_IMAGES}\n</body></html>\n"
  )
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  atomic.write_text(path, doc)
  return path


def image_sources(html_text: str) -> list[str]:
  """The src of every <img> in a page (for checks that every image resolves)."""
  return [html.unescape(s) for s in re.findall(r'<img[^>]*\ssrc="([^"]*)"', html_text)]


def gate_items(gates: Sequence) -> str:
  """Gates (`evaluation.gates.Gate`) as a list of marks.

  Each mark: PASS / FAIL (or "reading"), name, what it measures, the measured values with their
  intervals and the pass rule."""
  items = []
  for g in gates:
    kind = "reading" if g.passed is None else ("pass" if g.passed else "fail")
    mark = {"pass": "✔ PASS", "fail": "✘ FAIL", "reading": "reading"}[kind]
    items.append(
      f'<li class="{kind}"><span class="mark">{mark}</span> <strong>{html.escape(g.name)}</strong> '
      f"{html.escape(g.what)}: {html.escape(g.value)} <small>(pass if {html.escape(g.rule)})</small></li>"
    )
  return '<ul class="gates">' + "".join(items) + "</ul>"


def summary_html(
  path: str,
  gates: Sequence,
  gates_caption: str,
  gap_share: str,
  f1_figure: tuple[str, str] | None,
  overlays: dict[str, str],
) -> str:
  """The one-screen summary that opens a reproduce report (`<section id="summary">`).

  Args:
    path: the report's HTML file (images are linked relative to it).
    gates: the deciding gates (`evaluation.gates.Gate`), shown as pass/fail marks.
    gates_caption: which gates they are (seed, set).
    gap_share: the line on the share of the oracle gap closed, with its interval.
    f1_figure: (PNG, caption) of F1 per column with intervals (`plots.interval_plot`), or None.
    overlays: {caption: PNG} shown side by side (e.g. reference, no adaptation, adapted).
  """
  parts = [
    '<section id="summary"><h2>Summary</h2><div class="side"><div>',
    f"<p>{_inline(gates_caption)}</p>",
    gate_items(gates),
    f'<p class="gap-share">{_inline(gap_share)}</p></div>',
  ]
  if f1_figure:
    parts.append(figure_html(f1_figure[0], path, f1_figure[1]))
  parts.append("</div>")
  if overlays:
    parts.append(
      '<div class="side">'
      + "".join(figure_html(p, path, caption) for caption, p in overlays.items())
      + "</div>"
    )
  return "\n".join(parts + ["</section>"])


def reproduce_report(
  path: str,
  markdown: str,
  figures: dict[str, str],
  per_scan: dict[str, list[dict]],
  columns: Sequence[str] | None = None,
  summary: str = "",
) -> str:
  """The HTML report of a reproduce run: summary, markdown tables, per-scan table, figures.

  `summary` (`summary_html`) first, then `markdown` (gates, Table 2, ...), a per-scan table of
  total coronary volume (reference and each column's prediction, mm³, first seed) and the
  figures ({name: png path})."""
  columns = list(columns or per_scan)
  parts = [summary, "<h2>Full tables</h2>"] if summary else []
  parts.append(markdown_to_html(markdown))
  by_role: dict[tuple, list[str]] = {}
  for c in columns:  # columns scored on the same test scans share a table
    by_role.setdefault(tuple(s["id"] for s in per_scan[c]), []).append(c)
  for ids, cols in by_role.items():
    rows = [
      [cid, per_scan[cols[0]][k]["ref_mm3"], *(per_scan[c][k]["pred_mm3"] for c in cols)]
      for k, cid in enumerate(ids)
    ]
    parts += [
      "<h2>Per scan: total coronary calcium volume (mm³)</h2>",
      table_html(["scan", "reference", *cols], rows),
    ]
  parts += ["<h2>Figures</h2>"] + [
    figure_html(p, path, name.replace("_", " ")) for name, p in figures.items()
  ]
  return write_html(path, "Table 2 on phantoms: reproduce run", parts)

"""The report's style sheet (inline in the page: the report needs no network and no other file).

Wide screens get a table with one column per candidate; below 760 px each
image becomes a card with the answers stacked; print drops the colours that
waste ink and keeps an image's answers on one page.
"""

from __future__ import annotations

__all__ = ["CSS"]

CSS = """
:root { --ok: #1b7a3d; --bad: #b3261e; --muted: #5f6368; --line: #dadce0; --mark: #fff0b3; }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 1400px; padding: 16px; color: #202124; background: #fff;
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", sans-serif; }
h1 { font-size: 1.5em; margin: 0 0 4px; }
h2 { font-size: 1.2em; margin: 28px 0 8px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
.meta, .note { color: var(--muted); font-size: 0.9em; }
.prompt { white-space: pre-wrap; background: #f6f8fa; border-left: 3px solid var(--line); padding: 6px 10px;
  margin: 8px 0; font-size: 0.92em; }
.scroll { overflow-x: auto; -webkit-overflow-scrolling: touch; }
table { border-collapse: collapse; width: 100%; }
th, td { border: 1px solid var(--line); padding: 6px 8px; vertical-align: top; text-align: left; }
th { background: #f1f3f4; font-weight: 600; }
table.summary td.num, table.summary th.num { text-align: right; font-variant-numeric: tabular-nums;
  white-space: nowrap; }
table.summary { font-size: 0.9em; }
table.summary .ci { color: var(--muted); font-size: 0.82em; display: block; white-space: nowrap; }
table.summary td.errors { min-width: 14em; max-width: 24em; }
table.summary .path { min-width: 11em; }
tr.failed-candidate td { background: #fdecea; }
.error { color: var(--bad); }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(min(100%, 520px), 1fr)); gap: 16px; }
figure { margin: 0; }
figcaption { color: var(--muted); font-size: 0.85em; }
svg.chart { width: 100%; height: auto; font-size: 13px; }
svg .chart-title { font-weight: 600; font-size: 14px; fill: #202124; }
svg .grid { stroke: #e8eaed; }
svg .tick, svg .value { fill: var(--muted); }
svg .label { fill: #202124; }
svg .whisker { stroke: #444; stroke-width: 1.5; }
table.grid td.thumb { width: 170px; }
table.grid img { display: block; max-width: 150px; max-height: 150px; border-radius: 3px; }
.path { font-size: 0.8em; color: var(--muted); word-break: break-all; margin-top: 4px; }
td.answer .text { white-space: pre-wrap; overflow-wrap: anywhere; }
td.answer .stats { color: var(--muted); font-size: 0.8em; margin-top: 6px; }
td.answer.failed { background: #fdecea; }
td.answer .cand { display: none; font-weight: 600; font-size: 0.85em; }
mark { background: var(--mark); padding: 0 1px; }
.missing { width: 160px; height: 90px; background: #f1f3f4; color: var(--muted); display: flex;
  align-items: center; justify-content: center; font-size: 0.8em; }
@media (max-width: 760px) {
  body { padding: 10px; font-size: 14px; }
  table.grid thead { display: none; }
  table.grid, table.grid tbody, table.grid tr, table.grid td { display: block; width: 100%; }
  table.grid tr { border: 1px solid var(--line); margin-bottom: 14px; border-radius: 6px; }
  table.grid td { border: none; border-top: 1px solid var(--line); }
  table.grid td.thumb { width: 100%; border-top: none; }
  td.answer .cand { display: block; }
}
@media print {
  body { max-width: none; padding: 0; font-size: 10pt; }
  .scroll { overflow: visible; }
  th { background: none; }
  td.answer.failed, tr.failed-candidate td { background: none; }
  mark { background: none; text-decoration: underline; }
  table.grid tr, figure { break-inside: avoid; page-break-inside: avoid; }
  h2 { break-after: avoid; }
}
"""

"""The comparison report: one self-contained HTML page, and the same numbers as JSON.

The page needs nothing else to be read (styles inline, charts inline SVG,
thumbnails as ``data:`` URLs), runs no script, and forbids scripts outright
with a Content-Security-Policy, so model text that holds markup stays text
(every text is HTML-escaped too).  It is made from the result records alone:
the same records give the same page, byte for byte, apart from the
"generated" time.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

from ..outputs import atomic_write_bytes, dumps_json
from .stats import CandidateStats, Quantile, candidate_stats, error_kind
from .style import CSS
from .svg import bar_chart, distribution_chart
from .thumbs import load_thumbnails

__all__ = ["Comparison", "render_html", "summary_json", "write_report"]
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
_WORD = re.compile(r"\S+\s*")
_DASH = "\u2013"
_DOT = " \u00b7 "


class Comparison:
    """The records of a comparison, grouped by candidate, and their statistics.

    Attributes:
        records: Candidate name -> its records, in the order they were written.
        stats: One ``CandidateStats`` per candidate, in the same order.
        images: Every image, in order of first appearance.
    """

    def __init__(self, records: Mapping[str, Sequence[Mapping[str, Any]]]) -> None:
        self.records = {name: list(rs) for name, rs in records.items()}
        self.stats = [candidate_stats(name, rs) for name, rs in self.records.items()]
        self.images = list(dict.fromkeys(str(r["image"]) for rs in self.records.values() for r in rs))
        self._shown: dict[tuple[str, str], Mapping[str, Any]] = {}
        for name, rs in self.records.items():
            for r in rs:
                key = (name, str(r["image"]))
                if key not in self._shown or (r.get("repeat") or 0) < (self._shown[key].get("repeat") or 0):
                    self._shown[key] = r

    def answer(self, candidate: str, image: str) -> Mapping[str, Any] | None:
        """The record shown in the grid: the first repeat's answer, else its first record."""
        return self._shown.get((candidate, image))

    def prompts(self) -> list[str]:
        return list(
            dict.fromkeys(str(r["prompt"]) for rs in self.records.values() for r in rs if r.get("prompt"))
        )


# ------------------------------------------------------------------ numbers as text


def _num(value: float | None, digits: str = ".2f", unit: str = "") -> str:
    return "\u2013" if value is None else f"{value:{digits}}{unit}"


def _q(q: Quantile | None) -> str:
    if q is None:
        return "\u2013"
    ci = ""
    if q.low is not None and q.high is not None:
        ci = f'<span class="ci">95% CI {q.low:.3f}\u2013{q.high:.3f}</span>'
    return f"{q.value:.3f}{ci}"


def _summary_table(stats: Sequence[CandidateStats]) -> str:
    head = (
        "<tr><th>Candidate</th><th>Backend / model</th><th class=num>OK</th><th class=num>Failed</th>"
        "<th>Errors</th>"
        "<th class=num>Wall s</th><th class=num>Images/s</th><th class=num>Output tokens/s</th>"
        "<th class=num>Latency p50 s</th><th class=num>Latency p95 s</th><th class=num>TTFT p50 s</th>"
        "<th class=num>TTFT p95 s</th><th class=num>Mean words</th><th class=num>Mean tokens</th></tr>"
    )
    rows = []
    for s in stats:
        errors = ", ".join(f"{escape(k)} \u00d7{v}" for k, v in s.errors.items())
        if s.first_error:
            shown = s.first_error if len(s.first_error) <= 160 else s.first_error[:159] + "\u2026"
            errors += f'<div class="error" title="{escape(s.first_error)}">{escape(shown)}</div>'
        wall = _num(s.wall_s) + (" (est.)" if s.wall_estimated and s.wall_s is not None else "")
        where = " / ".join(escape(x) for x in (s.backend, s.model) if x) or "\u2013"
        if s.base_url:
            where += f'<div class="path">{escape(s.base_url)}</div>'
        cls = ' class="failed-candidate"' if s.ok == 0 else ""
        rows.append(
            f"<tr{cls}><th scope=row>{escape(s.name)}</th><td>{where}</td><td class=num>{s.ok}</td>"
            f"<td class=num>{s.failed}</td><td class=errors>{errors or _DASH}</td>"
            f"<td class=num>{wall}</td><td class=num>{_num(s.images_per_s)}</td>"
            f"<td class=num>{_num(s.tokens_per_s, '.1f')}</td><td class=num>{_q(s.latency_p50)}</td>"
            f"<td class=num>{_q(s.latency_p95)}</td><td class=num>{_q(s.ttft_p50)}</td>"
            f"<td class=num>{_q(s.ttft_p95)}</td><td class=num>{_num(s.mean_words, '.1f')}</td>"
            f"<td class=num>{_num(s.mean_tokens, '.1f')}</td></tr>"
        )
    body = "".join(rows)
    table = f'<table class="summary"><thead>{head}</thead><tbody>{body}</tbody></table>'
    return f'<div class="scroll">{table}</div>'


def _charts(stats: Sequence[CandidateStats]) -> str:
    figures = [
        (
            "chart-throughput",
            bar_chart([(s.name, s.images_per_s) for s in stats], title="Throughput", unit="images/s"),
            "Answers per second of wall time (warm-up excluded).",
        ),
        (
            "chart-latency",
            distribution_chart([(s.name, s.latencies) for s in stats], title="Server latency", unit="s"),
            "Each dot is one answer; box p25\u2013p75, bar the median, whiskers p5\u2013p95.",
        ),
    ]
    if any(s.ttfts for s in stats):
        figures.append(
            (
                "chart-ttft",
                distribution_chart([(s.name, s.ttfts) for s in stats], title="Time to first token", unit="s"),
                "Streamed answers only.",
            )
        )
    return "".join(
        f'<figure id="{fid}">{svg}<figcaption>{escape(caption)}</figcaption></figure>'
        for fid, svg, caption in figures
    )


def _marked(text: str, reference: str | None) -> str:
    """*text* escaped, its runs of words that are not in *reference* marked."""
    if reference is None or reference == text:
        return escape(text)
    lead = text[: len(text) - len(text.lstrip())]
    mine, theirs = _WORD.findall(text), _WORD.findall(reference)
    matcher = difflib.SequenceMatcher(
        None, [w.rstrip() for w in theirs], [w.rstrip() for w in mine], autojunk=False
    )
    out = [escape(lead)]
    for op, _i1, _i2, j1, j2 in matcher.get_opcodes():
        run = "".join(mine[j1:j2])
        if op == "equal" or not run:
            out.append(escape(run))
            continue
        body = run.rstrip()
        out.append(f"<mark>{escape(body)}</mark>{escape(run[len(body) :])}")
    return "".join(out)


def _answer_cell(name: str, record: Mapping[str, Any] | None, reference: str | None) -> str:
    label = f'<div class="cand">{escape(name)}</div>'
    if record is None:
        return f'<td class="answer failed">{label}<span class="error">not run</span></td>'
    if record.get("error") is not None:
        kind = escape(error_kind(record) or "error")
        return (
            f'<td class="answer failed">{label}<div class="error"><b>{kind}</b>: '
            f"{escape(str(record['error']))}</div></td>"
        )
    usage = record.get("usage") if isinstance(record.get("usage"), Mapping) else {}
    bits = [f"{float(record.get('processing_time') or 0):.2f} s"]
    if isinstance(record.get("ttft"), int | float):
        bits.append(f"first token {float(record['ttft']):.2f} s")
    if usage and usage.get("completion_tokens") is not None:
        bits.append(f"{usage['completion_tokens']} tokens")
    text = str(record.get("description") or "")
    return (
        f'<td class="answer ok">{label}<div class="text">{_marked(text, reference)}</div>'
        f'<div class="stats">{escape(_DOT.join(bits))}</div></td>'
    )


def _grid(comparison: Comparison, thumbs: Mapping[str, str | None]) -> str:
    names = [s.name for s in comparison.stats]
    head = "<tr><th>Image</th>" + "".join(f"<th>{escape(n)}</th>" for n in names) + "</tr>"
    rows = []
    for image in comparison.images:
        url = thumbs.get(image)
        img = (
            f'<img src="{url}" alt="{escape(image)}" loading="lazy">'
            if url
            else '<div class="missing">no thumbnail</div>'
        )
        cells = [f'<td class="thumb">{img}<div class="path">{escape(image)}</div></td>']
        reference = None
        for name in names:
            record = comparison.answer(name, image)
            cells.append(_answer_cell(name, record, reference))
            if reference is None and record is not None and record.get("error") is None:
                reference = str(record.get("description") or "")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="grid"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'


def render_html(
    comparison: Comparison, *, thumbs: Mapping[str, str | None], generated: str, title: str
) -> str:
    """The report page."""
    prompts = comparison.prompts()
    prompt_html = "".join(f'<div class="prompt">{escape(p)}</div>' for p in prompts[:3])
    if len(prompts) > 3:
        prompt_html += f'<p class="note">and {len(prompts) - 3} more prompts</p>'
    count = f"{len(comparison.images)} images \u00d7 {len(comparison.stats)} candidates"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head>\n<body>"
        f'<header><h1>{escape(title)}</h1><p class="meta">{count} \u00b7 generated '
        f'<time id="generated">{escape(generated)}</time></p>{prompt_html}</header>\n'
        f'<section id="summary"><h2>Summary</h2>{_summary_table(comparison.stats)}'
        '<p class="note">Latency: the server\'s time for the answering try. TTFT: time to first token '
        "(streamed answers). CI: 95% confidence interval of the percentile (from 8 answers).</p></section>\n"
        '<section id="charts"><h2>Charts</h2>'
        f'<div class="charts">{_charts(comparison.stats)}</div></section>\n'
        '<section id="answers"><h2>Answers</h2><p class="note">Words that differ from the first '
        f"candidate's answer are marked.</p>{_grid(comparison, thumbs)}</section>\n"
        "</body></html>\n"
    )


def summary_json(comparison: Comparison, *, generated: str) -> dict[str, Any]:
    """The machine-readable summary (``summary.json``)."""
    return {
        "generated": generated,
        "images": len(comparison.images),
        "candidates": [s.as_dict() for s in comparison.stats],
    }


def write_report(
    comparison: Comparison, out_dir: Path, *, generated: str, title: str, thumb_dirs: Sequence[Path] = ()
) -> tuple[Path, Path]:
    """Write ``report.html`` and ``summary.json`` into *out_dir* (each replaced atomically).

    Thumbnails come from *thumb_dirs* (a live run's ``thumbs/``), else from the image files.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    thumbs = load_thumbnails(comparison.images, thumb_dirs)
    page = render_html(comparison, thumbs=thumbs, generated=generated, title=title)
    html_path, json_path = out_dir / "report.html", out_dir / "summary.json"
    atomic_write_bytes(html_path, page.encode("utf-8"))
    atomic_write_bytes(
        json_path,
        (dumps_json(summary_json(comparison, generated=generated), indent=2) + "\n").encode("utf-8"),
    )
    return html_path, json_path

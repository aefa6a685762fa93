"""The report page: one self-contained `index.html`, readable offline, usable at 10,000 images.

Safety: every piece of text from outside (file names, explanations, model output, errors) is either
HTML-escaped (`html.escape`) in the static part, or travels as JSON inside
`<script type="application/json">` with `<`, `>` and `&` written as `\\u003c` etc. (so `</script>`
cannot close the block) and is put on the page with `textContent`, never `innerHTML`. A
Content-Security-Policy with a per-page nonce lets only the page's own script run.

Scale: the static part (summary, histogram, breakdowns, failed inputs) is small; the table and the
cards are drawn by a few lines of plain JS one page at a time (sortable, filterable), with thumbnails
from `thumbs/` loaded lazily. Full-size overlays are only links.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from html import escape
from pathlib import Path
from typing import Any

from agent.report.files import atomic_write_text
from agent.report.store import Row

HIST_BINS = 20
MAX_STATIC_FAILURES = 1000
# defect word -> pattern that finds it (and its inflections) in an explanation: every word the rule
# brain's measurements give (`tools.regions.DEFECT_WORDS`) and the words a model brain often uses
DEFECT_WORDS: dict[str, str] = {
    "crack": r"crack",
    "scratch": r"scratch",
    "hole": r"holes?\b",
    "spot": r"spots?\b",
    "stain": r"stain",
    "uneven surface": r"uneven",
    "fray": r"fray",
    "broken area": r"broken",
    "dent": r"dent(s|ed)?\b",
    "discolouration": r"discolou?r",
    "contamination": r"contaminat",
    "chip": r"chip(s|ped)?\b",
    "missing": r"missing",
    "deformation": r"deform",
    "burn": r"burn",
}
_WORD_PATTERNS = {w: re.compile(r"\b" + pat, re.IGNORECASE) for w, pat in DEFECT_WORDS.items()}


def _e(value: Any) -> str:
    return escape(str(value), quote=True)


def json_for_script(data: Any) -> str:
    """JSON safe to place inside a <script type="application/json"> block."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


#: sort order of the verdicts, worst last (failed inputs below good)
SEVERITY = {"good": 0, "review": 1, "defective": 2}


# ---------------------------------------------------------------------------------------------- summary
def summarize(rows: Sequence[Row]) -> dict[str, Any]:
    """Counts, defect rate, score histogram and breakdowns by region shape and defect words."""
    done = [r for r in rows if r.ok and r.record is not None]
    failed = [r for r in rows if not r.ok]
    defective = [r for r in done if r.record and r.record.get("pred_label")]
    review = [r for r in done if r.record and r.record.get("verdict") == "review"]
    bins_good, bins_bad = [0] * HIST_BINS, [0] * HIST_BINS
    for r in done:
        score = float(r.record.get("pred_score", 0.0))
        b = min(HIST_BINS - 1, max(0, int(score * HIST_BINS)))
        (bins_bad if r.record.get("pred_label") else bins_good)[b] += 1
    thresholds = sorted(float(r.record.get("threshold", 0.5)) for r in done)
    detectors = Counter(str(r.record.get("detector")) for r in done if r.record.get("detector"))
    shape_regions: Counter[str] = Counter()
    shape_images: Counter[str] = Counter()
    for r in defective:
        shapes = [str(g.get("shape") or "unknown") for g in r.record.get("regions") or []]
        shape_regions.update(shapes)
        shape_images.update(set(shapes))
    words: Counter[str] = Counter()
    for r in defective:
        text = str(r.record.get("explanation") or "")
        words.update(w for w, pat in _WORD_PATTERNS.items() if pat.search(text))
    return {
        "inputs": len(rows),
        "inspected": len(done),
        "defective": len(defective),
        "review": len(review),
        "good": len(done) - len(defective) - len(review),
        "failed": len(failed),
        "defect_rate": (len(defective) / len(done)) if done else None,
        "hist_good": bins_good,
        "hist_defective": bins_bad,
        "threshold": thresholds[len(thresholds) // 2] if thresholds else None,
        "shape_regions": dict(shape_regions.most_common()),
        "shape_images": dict(shape_images.most_common()),
        "defect_words": dict(words.most_common()),
        "detectors": [name for name, _ in detectors.most_common()],
    }


def histogram_svg(good: Sequence[int], bad: Sequence[int], threshold: float | None) -> str:
    """Stacked bar histogram of scores on [0, 1] as inline SVG (no script, no external files)."""
    w, h, pad_l, pad_b, pad_t = 640, 180, 36, 28, 10
    n = len(good)
    top = max([g + b for g, b in zip(good, bad, strict=True)] + [1])
    bw = (w - pad_l - 10) / n
    ph = h - pad_b - pad_t
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" '
        'role="img" aria-label="score histogram">'
    ]
    for i, (g, b) in enumerate(zip(good, bad, strict=True)):
        x = pad_l + i * bw
        lo, hi = i / n, (i + 1) / n
        for count, below, cls in ((g, 0, "g"), (b, g, "d")):
            if count:
                y1 = pad_t + ph * (1 - (below + count) / top)
                bh = ph * count / top
                parts.append(
                    f'<rect class="{cls}" x="{x + 1:.1f}" y="{y1:.1f}" width="{bw - 2:.1f}" height="{bh:.1f}">'
                    f"<title>{lo:.2f}-{hi:.2f}: {count} {'good' if cls == 'g' else 'defective'}</title></rect>"
                )
    parts.append(f'<line x1="{pad_l}" y1="{h - pad_b}" x2="{w - 10}" y2="{h - pad_b}" stroke="#555"/>')
    for t in (0.0, 0.25, 0.5, 0.75, 1.0):
        x = pad_l + t * (w - pad_l - 10)
        parts.append(f'<text x="{x:.1f}" y="{h - 10}" text-anchor="middle">{t:.2f}</text>')
    parts.append(f'<text x="4" y="{pad_t + 10}">{top}</text><text x="4" y="{h - pad_b}">0</text>')
    if threshold is not None:
        x = pad_l + min(max(threshold, 0.0), 1.0) * (w - pad_l - 10)
        parts.append(
            f'<line x1="{x:.1f}" y1="{pad_t}" x2="{x:.1f}" y2="{h - pad_b}" stroke="#000" stroke-dasharray="4 3"/>'
            f'<text x="{x + 4:.1f}" y="{pad_t + 10}">threshold {threshold:.2f}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _row_data(i: int, r: Row) -> dict[str, Any]:
    rec = r.record or {}
    regions = rec.get("regions") or []
    return {
        "i": i,
        "p": r.display_path,
        "v": rec.get("verdict", "good") if r.ok else "failed",
        "w": SEVERITY.get(rec.get("verdict", "good"), 0) if r.ok else -1,
        "s": rec.get("pred_score") if r.ok else None,
        "n": len(regions) if r.ok else None,
        "sh": sorted({str(g.get("shape") or "") for g in regions} - {""}),
        "rg": [
            f"({g.get('number') or k}) {g.get('location', '')} {g.get('kind') or g.get('shape', '')}, "
            f"{100 * float(g.get('area_fraction', 0)):.2f}% of the image, score {float(g.get('max_score', 0)):.2f}"
            for k, g in enumerate(regions[:10], start=1)
        ],
        "e": rec.get("explanation", "") if r.ok else "",
        "err": r.error or "",
        "th": r.files.get("thumbnail", ""),
        "ov": r.files.get("overlay", ""),
        "rj": r.files.get("record", ""),
    }


def _table(title: str, counts: dict[str, int]) -> str:
    if not counts:
        return f"<h3>{_e(title)}</h3><p class=muted>none</p>"
    body = "".join(f"<tr><td>{_e(k)}</td><td class=num>{int(v)}</td></tr>" for k, v in counts.items())
    return f"<h3>{_e(title)}</h3><table class=small><tbody>{body}</tbody></table>"


def render_html(rows: Sequence[Row], meta: dict[str, Any]) -> str:
    """The whole page as a string."""
    s = summarize(rows)
    nonce = secrets.token_urlsafe(16)
    rate = "n/a" if s["defect_rate"] is None else f"{100 * s['defect_rate']:.1f}%"
    failures = [r for r in rows if not r.ok]
    fail_items = "".join(
        f"<li><code>{_e(r.display_path)}</code>: {_e(r.error or 'unknown error')}</li>"
        for r in failures[:MAX_STATIC_FAILURES]
    )
    if len(failures) > MAX_STATIC_FAILURES:
        fail_items += f"<li>... and {len(failures) - MAX_STATIC_FAILURES} more (see results.csv)</li>"
    settings = meta.get("settings") or {}
    data = [_row_data(i, r) for i, r in enumerate(rows)]
    return _PAGE.format(
        nonce=nonce,
        title=_e(meta.get("title") or "LookTwice report"),
        generated=_e(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())),
        detector=_e(_detector_line(s["detectors"], str(settings.get("detector", "")))),
        brain=_e(settings.get("brain", "")),
        n_refs=_e(len(settings.get("references") or [])),
        settings=_e(json.dumps(settings, indent=1, ensure_ascii=False)),
        inputs=s["inputs"],
        inspected=s["inspected"],
        defective=s["defective"],
        review=s["review"],
        good=s["good"],
        failed=s["failed"],
        rate=_e(rate),
        histogram=histogram_svg(s["hist_good"], s["hist_defective"], s["threshold"]),
        shapes=_table("Regions by shape (defective images)", s["shape_regions"])
        + _table("Defective images with each region shape", s["shape_images"]),
        words=_table("Defect words in explanations (defective images)", s["defect_words"]),
        failures=(f"<ul>{fail_items}</ul>" if failures else "<p class=muted>none</p>"),
        data=json_for_script(data),
    )


def _detector_line(ran: Sequence[str], asked: str) -> str:
    """The detector(s) that ran, as the records say, and what was asked for when that differs ('auto')."""
    if not ran:
        return asked
    line = ", ".join(ran)
    return line if asked in ("", *ran) else f"{line} (asked: {asked})"


def write_html(rows: Iterable[Row], meta: dict[str, Any], out_dir: Path) -> Path:
    path = out_dir / "index.html"
    atomic_write_text(path, render_html(list(rows), meta))
    return path


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; script-src 'nonce-{nonce}'; \
style-src 'unsafe-inline'; img-src 'self' file: data:">
<title>{title}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1400px}}
h1{{margin:0 0 .2em}} .muted{{color:#777}} code{{word-break:break-all}}
.tiles{{display:flex;gap:.8em;flex-wrap:wrap;margin:1em 0}}
.tile{{border:1px solid #ddd;border-radius:6px;padding:.5em 1em;min-width:7em}}
.tile b{{display:block;font-size:1.6em}}
.row{{display:flex;gap:2em;flex-wrap:wrap;align-items:flex-start}}
svg text{{font-size:11px;fill:#333}} svg rect.g{{fill:#6aa84f}} svg rect.d{{fill:#cc4125}}
table{{border-collapse:collapse}} td,th{{padding:.25em .6em;border-bottom:1px solid #eee;text-align:left;vertical-align:top}}
th{{cursor:pointer;user-select:none;background:#f6f6f6}} td.num{{text-align:right}}
table.small td{{padding:.1em .6em}}
.controls{{display:flex;gap:.6em;flex-wrap:wrap;align-items:center;margin:.8em 0}}
.cards{{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:.8em}}
.card{{border:1px solid #ddd;border-radius:6px;padding:.5em;overflow-wrap:anywhere}}
.card img{{width:192px;height:auto;display:block;background:#eee}}
.v-defective{{color:#cc4125;font-weight:600}} .v-review{{color:#b45f06;font-weight:600}} .v-good{{color:#38761d;font-weight:600}} .v-failed{{color:#999;font-weight:600}}
details pre{{white-space:pre-wrap;font-size:.85em}}
</style>
</head>
<body>
<h1>{title}</h1>
<p class=muted>generated {generated} &middot; detector <b>{detector}</b> &middot; brain <b>{brain}</b>
&middot; {n_refs} reference image(s)</p>
<details><summary>settings</summary><pre>{settings}</pre></details>
<div class=tiles>
<div class=tile>inputs<b>{inputs}</b></div>
<div class=tile>inspected<b>{inspected}</b></div>
<div class=tile>defective<b>{defective}</b></div>
<div class=tile>review<b>{review}</b></div>
<div class=tile>good<b>{good}</b></div>
<div class=tile>failed<b>{failed}</b></div>
<div class=tile>defect rate<b>{rate}</b></div>
</div>
<div class=row>
<div><h3>Score histogram</h3>{histogram}</div>
<div>{shapes}</div>
<div>{words}</div>
</div>
<h2>Results</h2>
<noscript><p>The interactive table needs JavaScript; all results are also in results.csv and
results.jsonl, overlays in images/.</p></noscript>
<div class=controls>
<input id=q type=search placeholder="filter: path, explanation, error" size=36>
<select id=verdict><option value="">all verdicts</option><option>defective</option><option>review</option><option>good</option>
<option>failed</option></select>
<select id=shape><option value="">any region shape</option><option>elongated</option><option>compact</option>
<option>diffuse</option></select>
<select id=sort><option value="i">input order</option><option value="w-">verdict, defective first</option><option value="s-">score, high first</option>
<option value="s+">score, low first</option><option value="p">path</option><option value="n-">regions</option></select>
<select id=view><option value="cards">cards</option><option value="table">table</option></select>
<select id=psize><option>24</option><option selected>48</option><option>100</option><option>500</option></select>
<span id=count class=muted></span>
</div>
<div class=controls><button id=prev>&larr; previous</button><span id=pageinfo></span>
<button id=next>next &rarr;</button></div>
<div id=results></div>
<h2>Failed inputs</h2>
{failures}
<script type="application/json" id="report-data">{data}</script>
<script nonce="{nonce}">
(function () {{
  "use strict";
  var rows = JSON.parse(document.getElementById("report-data").textContent);
  var st = {{q: "", verdict: "", shape: "", sort: "i", view: "cards", page: 0, size: 48}};
  var shown = rows;
  function $(id) {{ return document.getElementById(id); }}
  function el(tag, text, cls) {{
    var n = document.createElement(tag);
    if (text !== undefined && text !== null) n.textContent = String(text);
    if (cls) n.className = cls;
    return n;
  }}
  function fmt(s) {{ return s === null || s === undefined ? "" : Number(s).toFixed(3); }}
  function link(href, text) {{ var a = el("a", text); a.href = encodeURI(href); a.target = "_blank"; return a; }}
  function apply() {{
    var q = st.q.toLowerCase();
    shown = rows.filter(function (r) {{
      if (st.verdict && r.v !== st.verdict) return false;
      if (st.shape && r.sh.indexOf(st.shape) < 0) return false;
      if (q && (r.p + "\\n" + r.e + "\\n" + r.err).toLowerCase().indexOf(q) < 0) return false;
      return true;
    }});
    var k = st.sort.charAt(0), desc = st.sort.charAt(1) === "-";
    shown.sort(function (a, b) {{
      var x = a[k], y = b[k];
      if (x === null || x === undefined) x = desc ? -Infinity : Infinity;
      if (y === null || y === undefined) y = desc ? -Infinity : Infinity;
      var c = x < y ? -1 : x > y ? 1 : a.i - b.i;
      return desc ? -c : c;
    }});
    st.page = 0;
    draw();
  }}
  function table(page) {{
    var t = el("table"), head = el("tr");
    [["i", "#"], ["p", "image"], ["v", "verdict"], ["s", "score"], ["n", "regions"], ["e", "explanation / error"]]
      .forEach(function (c) {{
        var th = el("th", c[1]);
        th.addEventListener("click", function () {{
          st.sort = c[0] + (st.sort === c[0] + "-" ? "+" : "-");
          if (c[0] === "i" || c[0] === "p") st.sort = c[0];
          apply();
        }});
        head.appendChild(th);
      }});
    t.appendChild(head);
    page.forEach(function (r) {{
      var tr = el("tr");
      tr.appendChild(el("td", r.i + 1, "num"));
      var td = el("td"); td.appendChild(r.ov ? link(r.ov, r.p) : el("span", r.p)); tr.appendChild(td);
      tr.appendChild(el("td", r.v, "v-" + r.v));
      tr.appendChild(el("td", fmt(r.s), "num"));
      tr.appendChild(el("td", r.n === null ? "" : r.n, "num"));
      tr.appendChild(el("td", r.v === "failed" ? r.err : r.e));
      t.appendChild(tr);
    }});
    return t;
  }}
  function cards(page) {{
    var box = el("div", null, "cards");
    page.forEach(function (r) {{
      var c = el("div", null, "card");
      if (r.th) {{
        var img = el("img"); img.loading = "lazy"; img.alt = "overlay of " + r.p; img.src = encodeURI(r.th);
        var a = link(r.ov || r.th); a.appendChild(img); c.appendChild(a);
      }}
      c.appendChild(el("div", r.p));
      var line = el("div");
      line.appendChild(el("span", r.v, "v-" + r.v));
      if (r.s !== null) line.appendChild(el("span", " score " + fmt(r.s)));
      c.appendChild(line);
      if (r.v === "failed") c.appendChild(el("p", r.err));
      else c.appendChild(el("p", r.e));
      if (r.rg.length) {{
        var ul = el("ul");
        r.rg.forEach(function (g) {{ ul.appendChild(el("li", g)); }});
        c.appendChild(ul);
      }}
      if (r.rj) c.appendChild(link(r.rj, "record (JSON)"));
      box.appendChild(c);
    }});
    return box;
  }}
  function draw() {{
    var pages = Math.max(1, Math.ceil(shown.length / st.size));
    st.page = Math.min(Math.max(0, st.page), pages - 1);
    var page = shown.slice(st.page * st.size, (st.page + 1) * st.size);
    var out = $("results");
    while (out.firstChild) out.removeChild(out.firstChild);
    out.appendChild(st.view === "table" ? table(page) : cards(page));
    $("count").textContent = shown.length + " of " + rows.length + " shown";
    $("pageinfo").textContent = " page " + (st.page + 1) + " of " + pages + " ";
    $("prev").disabled = st.page === 0;
    $("next").disabled = st.page >= pages - 1;
  }}
  $("q").addEventListener("input", function () {{ st.q = this.value; apply(); }});
  $("verdict").addEventListener("change", function () {{ st.verdict = this.value; apply(); }});
  $("shape").addEventListener("change", function () {{ st.shape = this.value; apply(); }});
  $("sort").addEventListener("change", function () {{ st.sort = this.value; apply(); }});
  $("view").addEventListener("change", function () {{ st.view = this.value; draw(); }});
  $("psize").addEventListener("change", function () {{ st.size = Number(this.value); st.page = 0; draw(); }});
  $("prev").addEventListener("click", function () {{ st.page -= 1; draw(); window.scrollTo(0, $("results").offsetTop - 80); }});
  $("next").addEventListener("click", function () {{ st.page += 1; draw(); window.scrollTo(0, $("results").offsetTop - 80); }});
  apply();
}})();
</script>
</body>
</html>
"""

"""The leaderboard as a web page (``leaderboard/index.html``) and a pull request's summary of it.

Both are written from the rows of ``leaderboard.json`` (``leaderboard.data_rows``) and nothing else
(the page adds the links to the plots). The page is static and self-contained: one HTML file with
inline CSS and vanilla JavaScript (no CDN), its tables in rank order without JavaScript; with it,
the tables sort by any column and filter by tier, dataset, model and dtype. The state lives in the
URL's fragment (``index.html#sort=mean&dir=desc&model=qwen2.5-0.5b``), so a sorted, filtered view
can be linked, and clicking a header or choosing a filter only rewrites the fragment.

Links are relative to the page's folder (the rows' ``result`` and ``submission_link`` already
are), so they work on GitHub Pages served from the repository root and in a checkout alike. A
folder has no index page on GitHub Pages, so a submission links to its ``submission.yaml``.

Every string from a result file goes through :func:`_text` (``html.escape`` on one line) or
:func:`_href` (URL-quoted, then escaped); the script and the style hold no data.
"""

from __future__ import annotations

import html
import json
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from ..protocol.spec import SpecError
from .figures import FIGURES

PAGE_HTML = "index.html"
FILTERS = ("tier", "dataset", "model", "dtype")  # row fields a visitor can filter groups by
DASH = "–"


def _text(value) -> str:
    """A string from a result file as HTML text or attribute value: whitespace runs (newlines
    included) become one space, ``& < > " '`` become entities."""
    return html.escape(" ".join(str(value).split()), quote=True)


def _href(link: str) -> str:
    """A relative link as an ``href``: characters that would end or redirect it are %-quoted
    (existing %XX escapes are kept), then the result is escaped for the attribute."""
    return _text(urllib.parse.quote(str(link), safe="/%"))


def _score(x, signed: bool = False) -> str:
    if x is None:
        return DASH
    return f"{x:+.1f}" if signed else f"{x:.1f}"


def _ci(lo, hi, signed: bool = False) -> str:
    return DASH if lo is None or hi is None else f"[{_score(lo, signed)}, {_score(hi, signed)}]"


def _versus(diff, lo, hi) -> str:
    return DASH if diff is None else f"{_score(diff, True)} {_ci(lo, hi, True)}"


def group_key(row: dict) -> tuple[str, str, str, str]:
    return row["tier"], row["dataset"], row["model"], row["dtype"]


def _groups(rows: list[dict]) -> dict[tuple, list[dict]]:
    """Rows by group, groups and rows in the order of ``rows`` (the leaderboard's order)."""
    out: dict[tuple, list[dict]] = {}
    for row in rows:
        out.setdefault(group_key(row), []).append(row)
    return out


# ---------------------------------------------------------------- the page


@dataclass(frozen=True)
class Column:
    key: str  # the row field the column shows and sorts by; the fragment's ``sort=`` value
    label: str
    numeric: bool = True
    first_dir: str = "desc"  # the direction of a first click: best first for scores


def _rank_cell(row: dict) -> tuple[str, str]:
    if row["rank"] is None:
        return "", f'<abbr title="{_text(row["unranked_reason"])}">unranked</abbr>'
    return str(row["rank"]), str(row["rank"])


def _submission_cell(row: dict) -> tuple[str, str]:
    return _text(row["submission"]), (f'<a href="{_href(row["submission_link"] + "submission.yaml")}">'
                                      f'{_text(row["submission"])}</a>')


def _files_cell(row: dict) -> tuple[str, str]:
    return _text(row["result"]), (f'<a href="{_href(row["result"])}">result</a> · '
                                  f'<a href="{_href(row["submission_link"] + "submission.yaml")}">submission</a>')


def _sort_value(x) -> str:
    """A number as the cell's sort value; none as empty (sorted last either way)."""
    return "" if x is None else repr(x)


def _number(key: str):
    return lambda row: (_sort_value(row[key]), _score(row[key]))


def _ci_cell(row: dict) -> tuple[str, str]:
    return _sort_value(row["mean_ci95_lo"]), _ci(row["mean_ci95_lo"], row["mean_ci95_hi"])


def _versus_cell(row: dict) -> tuple[str, str]:
    return _sort_value(row["vs_top"]), _versus(row["vs_top"], row["vs_top_ci95_lo"], row["vs_top_ci95_hi"])


def _count_cell(row: dict) -> tuple[str, str]:
    return _sort_value(row["questions"]), str(row["questions"])


def _plain(key: str):
    return lambda row: (_text(row[key]), _text(row[key]))


# (column, cell): cell(row) -> (the sort value, the cell's HTML)
COLUMNS = [
    (Column("rank", "#", first_dir="asc"), _rank_cell),
    (Column("submission", "submission", numeric=False, first_dir="asc"), _submission_cell),
    (Column("mean", "mean 0<ρ<1"), _number("mean")),
    (Column("mean_ci95_lo", "95% CI"), _ci_cell),
    (Column("vs_top", "vs #1 (95% CI)"), _versus_cell),
    (Column("base_mean", "base mean 0<ρ<1"), _number("base_mean")),
    (Column("rho0", "ρ=0"), _number("rho0")),
    (Column("rho1", "ρ=1"), _number("rho1")),
    (Column("headline_condition", "headline condition", numeric=False, first_dir="asc"), _plain("headline_condition")),
    (Column("compressor", "compressor", numeric=False, first_dir="asc"), _plain("compressor")),
    (Column("adapter", "adapter", numeric=False, first_dir="asc"), _plain("adapter")),
    (Column("hardware", "hardware", numeric=False, first_dir="asc"), _plain("hardware")),
    (Column("questions", "questions"), _count_cell),
    (Column("date", "date", numeric=False), _plain("date")),
    (Column("rerun", "re-run by verify", numeric=False, first_dir="asc"), _plain("rerun")),
    (Column("result", "files", numeric=False, first_dir="asc"), _files_cell),
]


def _head() -> str:
    cells = []
    for col, _ in COLUMNS:
        sort = ' aria-sort="ascending"' if col.key == "rank" else ""
        cells.append(f'<th data-key="{col.key}" data-type="{"num" if col.numeric else "text"}" '
                     f'data-first="{col.first_dir}"{sort}><button type="button">{html.escape(col.label)}</button></th>')
    return "<thead><tr>" + "".join(cells) + "</tr></thead>"


def _row(row: dict, order: int) -> str:
    """A table row; ``order``: its place in the group (0 is the first ranked entry when there is one)."""
    cells = []
    for col, cell in COLUMNS:
        value, shown = cell(row)
        if col.key == "vs_top" and order == 0 and row["rank"] is not None:
            value = "0"  # the first's difference with itself: sorts among the others, not with the empty cells
        cells.append(f'<td data-value="{value}">{shown}</td>')
    cls = ' class="unranked"' if row["rank"] is None else ""
    return f'<tr data-order="{order}"{cls}>' + "".join(cells) + "</tr>"


def _slug(key: tuple) -> str:
    return "g-" + "-".join("".join(c if c.isalnum() or c in "._" else "_" for c in part) for part in key)


#: plot kind -> what it shows (its images' alt text), in the order the page shows them
PLOTS = {"rho": "ROUGE-L vs ρ", "memory": "ROUGE-L vs memory", **{k: what for k, (_, what) in FIGURES.items()}}


def _group_section(key: tuple, rows: list[dict], plots: dict[str, str]) -> str:
    title = " · ".join(key)
    attrs = " ".join(f'data-{f}="{_text(v)}"' for f, v in zip(FILTERS, key))
    out = [f'<section class="group" id="{_text(_slug(key))}" {attrs}>',
           f"<h2>{_text(title)}</h2>",
           f"<p>Model: {_text(rows[0]['model_name'])}; spec "
           f"{_text(', '.join(sorted({r['spec_version'] for r in rows})))}.</p>",
           f'<table class="board">{_head()}<tbody>',
           *(_row(r, i) for i, r in enumerate(rows)),
           "</tbody></table>"]
    apart = [r for r in rows if r["rank"] is None]
    if apart:
        out.append("<p>Not ranked:</p><ul>" + "".join(
            f"<li>{_text(r['submission'])}: {_text(r['unranked_reason'])}</li>" for r in apart) + "</ul>")
    if plots:
        out.append('<p class="plots">' + "".join(
            f'<a href="{_href(plots[kind])}"><img src="{_href(plots[kind])}" alt="{_text(f"{alt}, {title}")}"></a>'
            for kind, alt in PLOTS.items() if kind in plots) + "</p>")
    out.append("</section>")
    return "\n".join(out)


def _filters(rows: list[dict]) -> str:
    out = ['<form id="filters" hidden>']
    for f in FILTERS:
        options = "".join(f'<option value="{_text(v)}">{_text(v)}</option>' for v in sorted({r[f] for r in rows}))
        out.append(f'<label>{f} <select data-filter="{f}"><option value="">all</option>{options}</select></label>')
    out.append('<output id="shown"></output></form>')
    return "\n".join(out)


STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 1.5em auto; max-width: 100em; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: .5em 0 1em; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: .25em .5em; text-align: left; vertical-align: top; }
th button { font: inherit; font-weight: bold; background: none; border: 0; padding: 0; cursor: pointer; }
th[aria-sort=ascending] button::after { content: " ▲"; }
th[aria-sort=descending] button::after { content: " ▼"; }
tr.unranked { color: #777; }
tbody tr:nth-child(even) { background: #f6f6f6; }
#filters label { margin-right: 1em; }
.plots img { width: 32em; max-width: 48%; }
"""

SCRIPT = """
(function () {
  "use strict";
  var tables = document.querySelectorAll("table.board");
  var groups = document.querySelectorAll("section.group");
  var selects = document.querySelectorAll("select[data-filter]");

  function state() { return new URLSearchParams(location.hash.slice(1)); }

  function compare(a, b, i, numeric, dir) {
    var x = a.cells[i].getAttribute("data-value"), y = b.cells[i].getAttribute("data-value");
    var order = Number(a.getAttribute("data-order")) - Number(b.getAttribute("data-order"));
    if (x === "" || y === "") { return x === y ? order : (x === "" ? 1 : -1); }  // empty cells last
    var c = numeric ? Number(x) - Number(y) : (x < y ? -1 : x > y ? 1 : 0);
    return c * dir || order;
  }

  function sortTable(table, key, dir) {
    var heads = table.tHead.rows[0].cells, i = -1;
    for (var j = 0; j < heads.length; j++) {
      heads[j].removeAttribute("aria-sort");
      if (heads[j].getAttribute("data-key") === key) { i = j; }
    }
    if (i < 0) { return; }
    heads[i].setAttribute("aria-sort", dir > 0 ? "ascending" : "descending");
    var numeric = heads[i].getAttribute("data-type") === "num";
    var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) { return compare(a, b, i, numeric, dir); });
    rows.forEach(function (r) { body.appendChild(r); });
  }

  function apply() {
    var s = state(), key = s.get("sort") || "rank", dir = s.get("dir") === "desc" ? -1 : 1;
    tables.forEach(function (t) { sortTable(t, key, dir); });
    var shown = 0;
    groups.forEach(function (g) {
      var hide = false;
      selects.forEach(function (sel) {
        var f = sel.getAttribute("data-filter"), want = s.get(f) || "";
        if (want && g.getAttribute("data-" + f) !== want) { hide = true; }
      });
      g.hidden = hide;
      shown += hide ? 0 : 1;
    });
    selects.forEach(function (sel) { sel.value = s.get(sel.getAttribute("data-filter")) || ""; });
    document.getElementById("shown").textContent = shown + " of " + groups.length + " groups shown";
  }

  tables.forEach(function (t) {
    Array.prototype.forEach.call(t.tHead.rows[0].cells, function (th) {
      th.querySelector("button").addEventListener("click", function () {
        var s = state(), key = th.getAttribute("data-key");
        var dir = s.get("sort") === key ? (s.get("dir") === "desc" ? "asc" : "desc") : th.getAttribute("data-first");
        s.set("sort", key);
        s.set("dir", dir);
        location.hash = s.toString();
      });
    });
  });
  selects.forEach(function (sel) {
    sel.addEventListener("change", function () {
      var s = state();
      var f = sel.getAttribute("data-filter");
      if (sel.value) { s.set(f, sel.value); } else { s.delete(f); }
      location.hash = s.toString();
    });
  });
  window.addEventListener("hashchange", apply);
  document.getElementById("filters").hidden = false;
  apply();
  document.body.setAttribute("data-ready", "1");
})();
"""

INTRO = """<p>Generated by <code>lorakv-bench leaderboard</code> from the result files in
<code>leaderboard/results/</code> only; the same rows as data: <a href="leaderboard.json">leaderboard.json</a>,
<a href="leaderboard.csv">leaderboard.csv</a>.</p>
<p><strong>ρ</strong> is the fraction of the document's KV entries the compressor evicts.
<strong>mean 0&lt;ρ&lt;1</strong>: ROUGE-L (0-100) of the submission's headline condition over the ρ values where
the compressor acts, the ranking key, with its document-clustered 95% CI. <strong>#</strong>: entries whose paired
difference with the first (<strong>vs #1</strong>, paired bootstrap over the same questions) has a 95% CI holding 0
share its rank. <strong>base mean</strong>: the same compressor without an adapter. Results in different dtypes are
never ranked together. Click a column's header to sort by it; the address keeps the view.</p>"""


def render_page(rows: list[dict], plot_links: dict[tuple, dict[str, str]]) -> str:
    """The page for ``rows`` (``leaderboard.data_rows``); ``plot_links``: group -> {"rho": link,
    "memory": link}, relative to the page's folder."""
    groups = _groups(rows)
    body = [_filters(rows)] if rows else []
    body += [_group_section(key, group, plot_links.get(key, {})) for key, group in groups.items()]
    if not rows:
        body.append("<p><em>No results yet.</em></p>")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            "<title>lorakv-bench leaderboard</title>\n"
            "<!-- Generated by `lorakv-bench leaderboard` from leaderboard/results/ only; do not edit by hand. -->\n"
            f"<style>{STYLE}</style>\n</head>\n<body>\n<h1>lorakv-bench leaderboard</h1>\n{INTRO}\n"
            + "\n".join(body) + f"\n<script>{SCRIPT}</script>\n</body>\n</html>\n")


def write_page(folder: Path, rows: list[dict], plot_links: dict[tuple, dict[str, str]]) -> Path:
    path = Path(folder) / PAGE_HTML
    path.write_text(render_page(rows, plot_links), encoding="utf-8")
    return path


# ---------------------------------------------------------------- a pull request's summary

#: fields of a row that belong to its result file alone (rank and "vs #1" move when others change)
_OWN_FIELDS = ("mean", "mean_ci95_lo", "mean_ci95_hi", "base_mean", "rho0", "rho1", "headline_condition",
               "compressor", "adapter", "documents", "questions", "spec_version", "date", "hardware", "unranked_reason")


def _entry_key(row: dict) -> tuple:
    return (row["submission"], *group_key(row))


def load_rows(path: str | Path) -> list[dict]:
    """The rows of a ``leaderboard.json``; a one-line error naming the file when it is not one."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        rows = doc["rows"]
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise TypeError("rows is not a list of objects")
        missing = {f for r in rows for f in ("submission", *FILTERS, *_OWN_FIELDS, "rank", "vs_top") if f not in r}
        if missing:
            raise KeyError(", ".join(sorted(missing)))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SpecError(f"{path}: not a leaderboard.json ({type(e).__name__}: {e})") from None
    return rows


def _leader_versus(row: dict, group: list[dict], previous_leader: str | None) -> tuple[str, str]:
    """(the leader this entry is compared with, the paired difference entry − leader with its CI).
    Rows carry "vs #1" = this entry − the group's first; for the first itself, the difference with
    another entry E is −(E's "vs #1"): E is the leader before the change, or else the runner-up."""
    ranked = [r for r in group if r["rank"] is not None]
    if row["rank"] is None:
        return DASH, f"unranked: {row['unranked_reason']}"
    if ranked[0] is not row:
        return ranked[0]["submission"], _versus(row["vs_top"], row["vs_top_ci95_lo"], row["vs_top_ci95_hi"])
    others = [r for r in ranked[1:] if r["submission"] == previous_leader] or ranked[1:2]
    if not others:
        return DASH, "the only ranked entry"
    o = others[0]
    diff = _versus(_neg(o["vs_top"]), _neg(o["vs_top_ci95_hi"]), _neg(o["vs_top_ci95_lo"]))  # entry − o
    return o["submission"], f"now first: {diff}"


def _neg(x):
    return None if x is None else -x


def summary_markdown(base_rows: list[dict], head_rows: list[dict]) -> str:
    """What a change to the result files does to the leaderboard, for a pull request's job summary:
    each new or changed entry (by its result-file fields) with its rank, mean, and paired difference
    with its group's leader: the entry ranked first after the change (the rows' "vs #1"), or, for an
    entry that is now first itself, the entry that was first before (else the runner-up).
    An HTML table (GitHub renders it in Markdown) whose strings are escaped by :func:`_text`."""
    base = {_entry_key(r): r for r in base_rows}
    base_leaders = {key: g[0]["submission"] for key, g in _groups(base_rows).items()
                    if g and g[0]["rank"] is not None}
    head_groups = _groups(head_rows)
    changed = []
    for key, group in head_groups.items():
        for row in group:
            old = base.get(_entry_key(row))
            status = "new" if old is None else "changed" if any(old[f] != row[f] for f in _OWN_FIELDS) else None
            if status:
                changed.append((status, row, *_leader_versus(row, group, base_leaders.get(key))))
    heads = {_entry_key(r) for r in head_rows}
    gone = [r for r in base_rows if _entry_key(r) not in heads]
    out = ["## Leaderboard changes", ""]
    if not changed and not gone:
        out.append("No entry of the leaderboard is new or changed.")
        return "\n".join(out) + "\n"
    if changed:
        out.append("<table>")
        out.append("<tr><th>group</th><th>submission</th><th>status</th><th>#</th><th>mean 0&lt;ρ&lt;1 (95% CI)</th>"
                   "<th>leader</th><th>entry − leader (paired 95% CI)</th></tr>")
        for status, row, leader, diff in changed:
            ranked = sum(r["rank"] is not None for r in head_groups[group_key(row)])
            rank = DASH if row["rank"] is None else f"{row['rank']} of {ranked}"
            out.append(f"<tr><td>{_text(' · '.join(group_key(row)))}</td><td>{_text(row['submission'])}</td>"
                       f"<td>{status}</td><td>{rank}</td>"
                       f"<td>{_score(row['mean'])} {_ci(row['mean_ci95_lo'], row['mean_ci95_hi'])}</td>"
                       f"<td>{_text(leader)}</td><td>{_text(diff)}</td></tr>")
        out.append("</table>")
    if gone:
        out.append("<p>No longer on the leaderboard:</p><ul>" + "".join(
            f"<li>{_text(r['submission'])} ({_text(' · '.join(group_key(r)))})</li>" for r in gone) + "</ul>")
    return "\n".join(out) + "\n"

"""The leaderboard's web page (leaderboard/index.html) and a pull request's summary of it.

The page is checked as HTML (escaping, links, ``--check``) and in a real browser: headless
Chromium (Debian's ``chromium``) loads it, runs its script, and the rendered tables are read back
and compared with leaderboard.json, sorted and filtered through the URL fragment, and sorted by
clicking a header through the DevTools protocol. Without Chromium the browser tests are skipped.
"""

from __future__ import annotations

import fcntl
import html
import json
import os
import re
import select
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from test_leaderboard import write_result

from benchmark import cli
from benchmark.board import leaderboard, page

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "leaderboard"
EVIL = '<script>alert(1)</script>"\'&<img src=x onerror=alert(2)>'
# Debian's chromium first; Chrome takes the same flags (GitHub's Ubuntu runners have it)
CHROMIUM = next((p for name in ("chromium", "chromium-browser", "google-chrome") if (p := shutil.which(name))), None)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no chromium, chromium-browser or google-chrome on PATH (Debian: apt-get install chromium)")

SCORES = {
    "alpha": {"base": [80, 50, 10], "base_kv_adapter_decode": [90, 70, 40]},
    "gamma": {"base": [70, 40, 10], "adapter_all": [95, 90, 80]},
    "beta": {"base": [85, 9, 5]},  # a mean under 10: a text sort would put it after 70
}


def _write_results(root: Path) -> None:
    write_result(root, "alpha", "base_kv_adapter_decode", SCORES["alpha"])
    write_result(root, "gamma", "adapter_all", SCORES["gamma"])
    write_result(root, "beta", "base", SCORES["beta"])
    write_result(root, "alpha", "base_kv_adapter_decode", SCORES["alpha"], dataset="mini-health", model="qwen2.5-0.5b")
    # a result whose strings try to reach the page as markup
    evil = write_result(root, EVIL, "base_kv_adapter_decode",
                        {"base": [60, 30, 0], "base_kv_adapter_decode": [70, 60, 30]},
                        env={"device": "cuda", "gpu_name": EVIL, "dtype": "float32"})
    data = json.loads(evil.read_text())
    data["model"]["name"] = EVIL
    data["submission"]["compressor"] = {"press": EVIL, "kwargs": {"x": EVIL}}
    evil.write_text(json.dumps(data, indent=1) + "\n")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """A leaderboard folder (results/ inside, as in the repository) rendered once."""
    lb = tmp_path_factory.mktemp("site") / "leaderboard"
    _write_results(lb / "results")
    leaderboard.render(lb / "results", lb / "README.md", lb / "plots")
    return lb


def _args(lb: Path) -> list[str]:
    """`lorakv-bench leaderboard` on the layout ``lb/results``, ``lb/README.md``, ``lb/plots``."""
    return ["leaderboard", "--results", str(lb / "results"), "--out", str(lb / "README.md"),
            "--plots", str(lb / "plots")]


def _rows(folder: Path) -> list[dict]:
    return json.loads((folder / leaderboard.DATA_JSON).read_text(encoding="utf-8"))["rows"]


# ---------------------------------------------------------------- reading HTML back


class _Page(HTMLParser):
    """Start tags with their attributes, each group section's table (cells as text) and the text."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.sections: list[dict] = []  # {"attrs", "rows": [[cell text]]}
        self.text: list[str] = []
        self._cell: list[str] | None = None
        self._in_body = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "section":
            self.sections.append({"attrs": attrs, "rows": []})
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self.sections[-1]["rows"].append([])
        elif tag == "td" and self._in_body:
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "tbody":
            self._in_body = False
        elif tag == "td" and self._cell is not None:
            self.sections[-1]["rows"][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def _parse(text: str) -> _Page:
    p = _Page()
    p.feed(text)
    p.close()
    return p


COLUMN = {col.key: i for i, (col, _) in enumerate(page.COLUMNS)}


def _table(section: dict) -> list[tuple[str, str, str]]:
    """(submission, #, mean) of each row, in the order shown."""
    return [(r[COLUMN["submission"]], r[COLUMN["rank"]], r[COLUMN["mean"]]) for r in section["rows"]]


def _expected(rows: list[dict]) -> list[tuple[str, str, str]]:
    return [(r["submission"], "unranked" if r["rank"] is None else str(r["rank"]), page._score(r["mean"]))
            for r in rows]


def _groups(rows: list[dict]) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        out.setdefault(page.group_key(r), []).append(r)
    return out


def _section_key(section: dict) -> tuple:
    return tuple(section["attrs"][f"data-{f}"] for f in page.FILTERS)


# ---------------------------------------------------------------- the page as HTML


def test_page_is_written_from_the_data_rows(site):
    doc = _parse((site / page.PAGE_HTML).read_text(encoding="utf-8"))
    groups = _groups(_rows(site))
    assert [_section_key(s) for s in doc.sections] == list(groups)
    for section in doc.sections:
        assert _table(section) == _expected(groups[_section_key(section)])


def test_result_strings_cannot_reach_the_page_as_markup(site):
    text = (site / page.PAGE_HTML).read_text(encoding="utf-8")
    assert text.count("<script") == 1 and "<img src=x" not in text and "alert(1)</script>" not in text
    doc = _parse(text)
    allowed = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "code", "strong", "em", "a", "form",
               "label", "select", "option", "output", "section", "table", "thead", "tbody", "tr", "th", "td",
               "button", "abbr", "ul", "li", "img", "script"}
    assert {tag for tag, _ in doc.tags} <= allowed
    assert not [(tag, a) for tag, attrs in doc.tags for a in attrs if a.startswith("on")]
    assert [a for tag, a in doc.tags if tag == "script"] == [{}]  # the page's own inline script only
    # the strings are all there, as text
    shown = " ".join(doc.text)
    assert shown.count(EVIL) >= 3  # submission name, model name, hardware
    (evil,) = [s for s in doc.sections if s["rows"][0][COLUMN["submission"]] == EVIL]
    assert evil["rows"][0][COLUMN["hardware"]] == EVIL
    assert EVIL in evil["rows"][0][COLUMN["compressor"]]
    # and in links, quoted: nothing ends the attribute or the URL
    hrefs = [attrs["href"] for tag, attrs in doc.tags if tag == "a" and "result" in attrs.get("href", "")]
    assert any(unquote(h).startswith(f"results/{EVIL}") for h in hrefs)
    assert all(not set(h) & set("<>\"' #?") for h in hrefs)


def test_page_links_are_relative_to_its_folder(site):
    """Every result, plot and data link of the page resolves from the page's folder (submission links
    point at ../submissions/, which the synthetic layout has not)."""
    doc = _parse((site / page.PAGE_HTML).read_text(encoding="utf-8"))
    links = [attrs.get("href") or attrs.get("src") for tag, attrs in doc.tags if tag in ("a", "img")]
    local = [unquote(urlsplit(link).path) for link in links if not link.startswith("../submissions/")]
    assert local and all((site / link).is_file() for link in local), [x for x in local if not (site / x).is_file()]
    assert {"leaderboard.json", "leaderboard.csv"} <= set(local)
    # a link and an image per plot: rho, memory and the paper's Fig. 2 and Fig. 3 (each group has an adapted
    # entry, none a QA/NTP pair)
    assert sum(link.startswith("plots/") for link in local) == 2 * 4 * len(doc.sections)
    subs = [link for link in links if link.startswith("../submissions/")]
    assert "../submissions/alpha/submission.yaml" in subs


@pytest.mark.skipif(not (COMMITTED / page.PAGE_HTML).exists(), reason="no committed page")
def test_committed_page_links_resolve_from_the_repository_root():
    """GitHub Pages serves the repository's files from its root: each link of leaderboard/index.html
    names a committed file (a folder has no index page there)."""
    doc = _parse((COMMITTED / page.PAGE_HTML).read_text(encoding="utf-8"))
    links = [attrs.get("href") or attrs.get("src") for tag, attrs in doc.tags if tag in ("a", "img")]
    assert links
    for link in links:
        target = (COMMITTED / unquote(urlsplit(link).path)).resolve()
        assert target.is_file() and ROOT in target.parents, link


def test_page_is_covered_by_check(tmp_path, capsys):
    lb = tmp_path / "leaderboard"
    write_result(lb / "results", "alpha", "base_kv_adapter_decode", SCORES["alpha"])
    args = _args(lb)
    assert cli.main(args) == 0
    assert "index.html" in capsys.readouterr().out
    assert cli.main([*args, "--check"]) == 0
    capsys.readouterr()
    html_path = lb / page.PAGE_HTML
    html_path.write_text(html_path.read_text().replace("<td", "<td ", 1))  # one byte
    assert cli.main([*args, "--check"]) == 1
    assert capsys.readouterr().out.splitlines() == [f"stale: {html_path}"]
    html_path.unlink()
    assert leaderboard.stale_files(lb / "results", lb / "README.md", lb / "plots") == [str(html_path)]


def test_page_without_results(tmp_path):
    leaderboard.render(tmp_path / "none", tmp_path / "lb" / "README.md", tmp_path / "lb" / "plots")
    doc = _parse((tmp_path / "lb" / page.PAGE_HTML).read_text())
    assert doc.sections == [] and "No results yet." in "".join(doc.text)


def test_plots_keep_text_as_text_whatever_the_users_matplotlibrc(tmp_path, monkeypatch):
    """The plots the page shows have their labels as <text> and a <title>, also when the user's
    matplotlib configuration asks for glyph outlines (svg.fonttype: path)."""
    import matplotlib

    monkeypatch.setitem(matplotlib.rcParams, "svg.fonttype", "path")
    write_result(tmp_path / "results", "alpha", "base_kv_adapter_decode", SCORES["alpha"])
    leaderboard.render(tmp_path / "results", tmp_path / "lb" / "README.md", tmp_path / "lb" / "plots")
    doc = _parse((tmp_path / "lb" / page.PAGE_HTML).read_text())
    plots = [attrs["src"] for tag, attrs in doc.tags if tag == "img"]
    assert len(plots) == 4  # rho, memory and the paper's Fig. 2 and Fig. 3
    for src in plots:
        svg = (tmp_path / "lb" / src).read_text()
        assert re.search(r"<title>(ROUGE-L vs (ρ|memory)|KV-only vs \+LoRA over ρ \(Fig\. 2\)|the conditions over ρ "
                         r"\(Fig\. 3\)), mini-narrative · smollm2-135m", svg)
        assert "<text" in svg and 'id="DejaVuSans-' not in svg  # no glyph outlines


# ---------------------------------------------------------------- in a browser


def _dump_dom(path: Path, fragment: str = "") -> _Page:
    """The DOM after the page's script ran, as headless Chromium serialises it."""
    url = path.resolve().as_uri() + (f"#{fragment}" if fragment else "")
    out = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", url],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert 'data-ready="1"' in out, "the page's script did not run to its end"
    return _parse(out)


def _shown(doc: _Page) -> dict[tuple, list[tuple[str, str, str]]]:
    return {_section_key(s): _table(s) for s in doc.sections if "hidden" not in s["attrs"]}


def _sorted_rows(rows: list[dict], key: str, descending: bool) -> list[dict]:
    """The page's sort: values in the direction asked, empty values last, ties in leaderboard order."""
    present = [r for r in rows if r[key] is not None]
    return sorted(present, key=lambda r: r[key], reverse=descending) + [r for r in rows if r[key] is None]


@needs_chromium
@pytest.mark.skipif(not (COMMITTED / page.PAGE_HTML).exists(), reason="no committed page")
def test_committed_page_in_a_browser_shows_leaderboard_json():
    doc = _dump_dom(COMMITTED / page.PAGE_HTML)
    groups = _groups(_rows(COMMITTED))
    assert _shown(doc) == {key: _expected(rows) for key, rows in groups.items()}


@needs_chromium
def test_browser_sorts_and_filters_from_the_address(site):
    rows = _rows(site)
    groups = _groups(rows)
    doc = _dump_dom(site / page.PAGE_HTML, "sort=mean&dir=asc")
    assert _shown(doc) == {k: _expected(_sorted_rows(g, "mean", False)) for k, g in groups.items()}
    narr = next(k for k in groups if k[1] == "mini-narrative" and k[3] == "not recorded")
    assert [name for name, _, _ in _shown(doc)[narr]] == ["beta", "alpha", "gamma"]  # 9.x < 70 < 85: numeric
    heads = [attrs for tag, attrs in doc.tags if tag == "th" and attrs.get("aria-sort")]
    assert {(h["data-key"], h["aria-sort"]) for h in heads} == {("mean", "ascending")}

    doc = _dump_dom(site / page.PAGE_HTML, "sort=submission&dir=desc&model=smollm2-135m")
    shown = _shown(doc)
    assert set(shown) == {k for k in groups if k[2] == "smollm2-135m"} and len(shown) < len(groups)
    assert shown[narr] == _expected(_sorted_rows(groups[narr], "submission", True))
    assert [attrs.get("value") for tag, attrs in doc.tags if tag == "option" and "selected" in attrs] == []
    assert f"{len(shown)} of {len(groups)} groups shown" in " ".join(doc.text)

    # "vs #1" best first: the first entry (no difference with itself) leads, the unranked come last
    doc = _dump_dom(site / page.PAGE_HTML, "sort=vs_top&dir=desc")
    top_first = {k: [{**g[0], "vs_top": 0.0}, *g[1:]] if g[0]["rank"] == 1 else g for k, g in groups.items()}
    assert _shown(doc) == {k: _expected(_sorted_rows(g, "vs_top", True)) for k, g in top_first.items()}


class _DevTools:
    """Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: the
    browser reads commands from its fd 3 and answers on fd 4, messages ending in a NUL byte)."""

    def __init__(self, profile: Path):
        to_child, self._to = os.pipe()
        self._from, from_child = os.pipe()
        # high numbers first, so that placing them at 3 and 4 in the child cannot overwrite one another
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_child, from_child)]
        for fd in (to_child, from_child):
            os.close(fd)

        def place():
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
             f"--user-data-dir={profile}", "--window-size=1600,1200", "about:blank"],
            pass_fds=(3, 4, *high), preexec_fn=place, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for fd in high:
            os.close(fd)
        self._buf, self._id, self.session = b"", 0, None

    def send(self, method: str, params: dict | None = None, timeout: float = 60) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if self.session:
            msg["sessionId"] = self.session
        os.write(self._to, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._id:
                    assert "error" not in reply, reply
                    return reply["result"]
            left = deadline - time.monotonic()
            assert left > 0 and select.select([self._from], [], [], left)[0], f"no answer to {method}"
            chunk = os.read(self._from, 1 << 16)
            assert chunk, "chromium closed the pipe"
            self._buf += chunk

    def open(self, url: str) -> None:
        target = self.send("Target.createTarget", {"url": url})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]

    def js(self, expression: str):
        return self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30):
        deadline = time.monotonic() + timeout
        while not (value := self.js(expression)):
            assert time.monotonic() < deadline, f"timed out waiting for {expression}"
            time.sleep(0.05)
        return value

    def click(self, selector: str) -> None:
        """A left click at the middle of the element, as the mouse would give it."""
        box = self.js(f"(function () {{ var e = document.querySelector({json.dumps(selector)}); e.scrollIntoView();"
                      " var r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", {"type": kind, "x": box[0], "y": box[1], "button": "left",
                                                   "clickCount": 1})

    def close(self) -> None:
        try:
            self.session = None
            self.send("Browser.close", timeout=10)
        finally:
            self.proc.wait(timeout=30)
            os.close(self._to)
            os.close(self._from)


def _equals(expression: str, value: list) -> str:
    """JavaScript: ``expression``'s value once it equals ``value`` (a JSON list), else false."""
    want = json.dumps(json.dumps(value, separators=(",", ":")))
    return f"(function (v) {{ return JSON.stringify(v) === {want} && v; }})({expression})"


@needs_chromium
def test_clicking_a_header_sorts_the_tables(site, tmp_path):
    rows = _groups(_rows(site))
    narr = next(k for k in rows if k[1] == "mini-narrative" and k[3] == "not recorded")
    table = f"#{page._slug(narr)} table"
    order = (f"Array.prototype.map.call(document.querySelectorAll({json.dumps(table + ' tbody tr')}),"
             f" function (tr) {{ return tr.cells[{COLUMN['submission']}].textContent; }})")
    browser = _DevTools(tmp_path / "profile")
    try:
        browser.open((site / page.PAGE_HTML).resolve().as_uri())
        browser.wait_for("document.body && document.body.getAttribute('data-ready') === '1'")
        assert browser.js(order) == [r["submission"] for r in rows[narr]]  # rank order
        browser.click(f'{table} th[data-key="mean"] button')  # first click: best first
        assert browser.wait_for("location.hash") == "#sort=mean&dir=desc"
        want = [r["submission"] for r in _sorted_rows(rows[narr], "mean", True)]
        assert browser.wait_for(_equals(order, want)) == want
        browser.click(f'{table} th[data-key="mean"] button')  # again: the other way
        want = [r["submission"] for r in _sorted_rows(rows[narr], "mean", False)]
        assert browser.wait_for(_equals(order, want)) == want
        assert browser.js("location.hash") == "#sort=mean&dir=asc"
        mean_head = f"document.querySelector('{table} th[data-key=\"mean\"]')"
        assert browser.js(f"{mean_head}.getAttribute('aria-sort')") == "ascending"
    finally:
        browser.close()


# ---------------------------------------------------------------- a pull request's summary


def _summary_rows(text: str) -> dict[str, list[str]]:
    """{submission: cells} of the summary's table."""
    cells: list[list[str]] = []

    class Rows(HTMLParser):
        def __init__(self):
            super().__init__(convert_charrefs=True)
            self.cell = None

        def handle_starttag(self, tag, attrs):
            if tag == "tr":
                cells.append([])
            elif tag == "td":
                self.cell = []

        def handle_endtag(self, tag):
            if tag == "td":
                cells[-1].append("".join(self.cell))
                self.cell = None

        def handle_data(self, data):
            if self.cell is not None:
                self.cell.append(data)

    Rows().feed(text)
    return {c[1]: c for c in cells if c}


def test_summary_lists_new_and_changed_entries_against_the_leader(site, tmp_path, capsys):
    base_json = tmp_path / "base.json"
    shutil.copy(site / leaderboard.DATA_JSON, base_json)
    head = tmp_path / "leaderboard"
    shutil.copytree(site / "results", head / "results")
    # delta takes the lead; alpha's result changes; beta and gamma do not change (their ranks may)
    write_result(head / "results", "delta", "adapter_all", {"base": [70, 40, 10], "adapter_all": [99, 99, 90]})
    write_result(head / "results", "alpha", "base_kv_adapter_decode",
                 {"base": [80, 50, 10], "base_kv_adapter_decode": [90, 75, 40]})
    args = _args(head)
    assert cli.main([*args, "--summary", str(base_json)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("## Leaderboard changes\n") and (head / leaderboard.DATA_JSON).is_file()  # rendered first
    table = _summary_rows(text)
    assert set(table) == {"delta", "alpha"}
    rows = {(r["submission"], r["dataset"], r["model"]): r for r in _rows(head)}
    delta, alpha, gamma = (rows[(n, "mini-narrative", "smollm2-135m")] for n in ("delta", "alpha", "gamma"))
    ranked = sum(r["rank"] is not None for r in rows.values() if page.group_key(r) == page.group_key(delta))
    # delta is first now: its difference is with gamma, the leader before, from gamma's own paired CI
    assert table["delta"][2:6] == ["new", f"1 of {ranked}", f"{delta['mean']:.1f} [{delta['mean_ci95_lo']:.1f}, "
                                   f"{delta['mean_ci95_hi']:.1f}]", "gamma"]
    assert table["delta"][6] == (f"now first: {-gamma['vs_top']:+.1f} [{-gamma['vs_top_ci95_hi']:+.1f}, "
                                 f"{-gamma['vs_top_ci95_lo']:+.1f}]")
    assert table["alpha"][2:4] == ["changed", f"{alpha['rank']} of {ranked}"]
    assert table["alpha"][5:] == ["delta", f"{alpha['vs_top']:+.1f} [{alpha['vs_top_ci95_lo']:+.1f}, "
                                  f"{alpha['vs_top_ci95_hi']:+.1f}]"]
    # against itself: nothing new
    assert cli.main([*args, "--summary", str(head / leaderboard.DATA_JSON)]) == 0
    assert "No entry of the leaderboard is new or changed." in capsys.readouterr().out


def test_summary_escapes_result_strings(site, tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"rows": []}))
    text = page.summary_markdown(page.load_rows(empty), page.load_rows(site / leaderboard.DATA_JSON))
    assert "<script" not in text and "<img" not in text and "\n\n" not in text.split("<table>", 1)[1]
    assert EVIL in _summary_rows(text)  # the name, as text
    assert html.escape(EVIL) in text


def test_summary_bad_base_file(site, tmp_path, capsys):
    bad = tmp_path / "base.json"
    bad.write_text('{"rows": [{"submission": "x"}]}')
    rc = cli.main(["leaderboard", "--out", str(site / "README.md"), "--summary", str(bad)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f"error: {bad}: not a leaderboard.json") and len(err.splitlines()) == 1

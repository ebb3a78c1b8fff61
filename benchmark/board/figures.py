"""The leaderboard's plot style and the paper's figures, drawn from the result files of one
(tier, dataset, model, dtype) group.

* **Fig. 2** (KV-only vs +LoRA): one panel per compressor configuration that some entry adapts;
  the configuration's ``base`` ROUGE-L (KV-only, dashed) and each adapted entry's headline
  condition (+LoRA, solid) over ρ.
* **Fig. 3** (conditions): one panel per adapted entry; every condition it ran over ρ.
* **Training format** (QA vs NTP): ``adapter_all`` over ρ for each pair of a QA and an NTP entry
  with the same setup (the pairs ``leaderboard.qa_ntp_pairs`` finds), drawn only where one exists.

Every curve has its cells' document-clustered 95% CI as a band. The plots use matplotlib's defaults
with text kept as ``<text>`` and a fixed hash salt and no date (:func:`plot_style`,
:func:`save_svg`), so writing them twice gives the same bytes. Entries are read duck-typed
(``leaderboard.Entry``): ``name``, ``compressor``, ``headline``, ``rhos``, ``conditions``,
``rouge(rho, condition)`` and ``rouge_ci(rho, condition)``.
"""

from __future__ import annotations

import contextlib
import math
import textwrap
from pathlib import Path

from ..config import BASE
from ..protocol.spec import CONDITION_HELP

SVG_SALT = "lorakv-bench-leaderboard"
MAX_PANELS = 6  # panels per figure (the top entries of the group): more are too small to read
KV_ONLY = BASE  # the condition without an adapter: the compressor alone
FORMAT_CONDITION = "adapter_all"  # the condition the training-format comparison reads
BAND_ALPHA = 0.18

#: figure kind -> (file suffix, what it shows: the image's alt text)
FIGURES = {
    "fig2": ("fig2_kv_vs_lora.svg", "KV-only vs +LoRA over ρ (Fig. 2)"),
    "fig3": ("fig3_conditions.svg", "the conditions over ρ (Fig. 3)"),
    "format": ("format_qa_vs_ntp.svg", "QA vs NTP training format over ρ"),
}


# ---------------------------------------------------------------- style


@contextlib.contextmanager
def plot_style():
    """matplotlib's defaults (whatever the user's matplotlibrc says) and reproducible SVG ids. Text
    stays text (``<text>`` elements, not glyph outlines), so labels can be searched, selected and
    read by a screen reader."""
    import matplotlib
    import matplotlib.style

    with matplotlib.style.context("default"), matplotlib.rc_context({"svg.hashsalt": SVG_SALT, "svg.fonttype": "none"}):
        yield


def save_svg(fig, path: Path, title: str) -> None:
    """Write ``fig`` with ``title`` as the SVG's ``<title>``; no date and no matplotlib version, so
    the bytes depend on the results only. ``title`` is plot text, whose ``$`` is escaped for mathtext;
    the SVG title is plain text."""
    with plot_style():
        fig.savefig(path, format="svg",
                    metadata={"Title": title.replace("\\$", "$"), "Date": None, "Creator": "lorakv-bench"})


def new_figure(width: float = 6.4, height: float = 4.2):
    from matplotlib.backends.backend_svg import FigureCanvasSVG
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasSVG(fig)
    return fig


def colors(n: int) -> list:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def plot_text(text) -> str:
    """Text from a result file for a plot title or legend: one line, and ``$`` escaped, which
    matplotlib would otherwise read as mathtext (and fail on). The SVG writer escapes XML itself."""
    return " ".join(str(text).split()).replace("$", "\\$")


def band(ax, e, cond: str, color, alpha: float = BAND_ALPHA) -> None:
    """The cells' 95% CI (document-clustered) as a shaded band."""
    pts = [(r, ci) for r in e.rhos if (ci := e.rouge_ci(r, cond)) is not None]
    if len(pts) > 1:
        ax.fill_between([r for r, _ in pts], [ci[0] for _, ci in pts], [ci[1] for _, ci in pts], color=color,
                        alpha=alpha, linewidth=0)


def curve(ax, e, cond: str, color, label: str, dashed: bool = False) -> bool:
    """``cond``'s ROUGE-L over rho with its CI band; False (nothing drawn) when ``e`` has no such cells."""
    pts = [(r, y) for r in e.rhos if (y := e.rouge(r, cond)) is not None]
    if not pts:
        return False
    band(ax, e, cond, color, BAND_ALPHA / 2 if dashed else BAND_ALPHA)
    ax.plot(*zip(*pts), marker="x" if dashed else "o", markersize=4, linestyle="--" if dashed else "-",
            linewidth=1 if dashed else 1.5, color=color, label=label)
    return True


def _rho_axes(ax, ylabel: bool = True) -> None:
    """A panel's axes: rho from 0 to 1, ROUGE-L from 0, small labels."""
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("ρ (evicted)", fontsize=8)
    if ylabel:
        ax.set_ylabel("ROUGE-L (band: 95% CI)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(True, alpha=0.3)


def _panel_title(text: str) -> str:
    return textwrap.fill(plot_text(text), width=40, break_long_words=False, break_on_hyphens=False)


def _panels(n: int):
    """A figure with ``n`` panels (at most three a row) sharing the y axis, and the panels' axes."""
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig = new_figure(max(6.4, 3.2 * cols), 2.9 * rows + 0.9)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(n)]
    for ax in axes[1:]:
        ax.sharey(axes[0])
    return fig, axes


def _suptitle(fig, what: str, title: str, shown: int, total: int) -> None:
    more = "" if shown == total else f": top {shown} of {total}"
    fig.suptitle(f"{what}, {title}{more}", fontsize=10)


# ---------------------------------------------------------------- the figures


def adapted(group: list) -> list:
    """The entries with an adapter (headline other than base), in the group's order."""
    return [e for e in group if e.headline != KV_ONLY and e.rhos]


def kv_vs_lora_panels(group: list) -> list[tuple[str, object, list]]:
    """(compressor label, entry whose base cells are drawn, adapted entries) per configuration that
    some entry adapts, in the order of its best entry in the group. The base cells come from the
    configuration's first entry in the group: entries of one configuration share them."""
    with_adapter = {id(e) for e in adapted(group)}
    panels: dict[str, tuple[object, list]] = {}
    for e in group:
        if e.compressor not in panels:
            panels[e.compressor] = (e, [])
        if id(e) in with_adapter:
            panels[e.compressor][1].append(e)
    return [(label, base, ads) for label, (base, ads) in panels.items() if ads]


def kv_vs_lora_figure(group: list, title: str):
    """Fig. 2: KV-only (dashed) vs +LoRA (solid) over rho, one panel per compressor; None when no
    entry of the group has an adapter."""
    panels = kv_vs_lora_panels(group)
    if not panels:
        return None
    shown = panels[:MAX_PANELS]
    fig, axes = _panels(len(shown))
    for i, (ax, (label, base, ads)) in enumerate(zip(axes, shown)):
        curve(ax, base, KV_ONLY, "black", "KV-only (base)", dashed=True)
        for e, color in zip(ads, colors(len(ads))):
            curve(ax, e, e.headline, color, plot_text(f"+LoRA: {e.name}"))
        ax.set_title(_panel_title(label), fontsize=7)
        _rho_axes(ax, ylabel=i % 3 == 0)
        ax.legend(fontsize=6, loc="best")
    _suptitle(fig, "KV-only vs +LoRA", title, len(shown), len(panels))
    fig.tight_layout()
    return fig


def conditions_figure(group: list, title: str):
    """Fig. 3: each condition over rho, one panel per adapted entry, one legend for the figure;
    None when no entry of the group has an adapter."""
    entries = adapted(group)
    if not entries:
        return None
    shown = entries[:MAX_PANELS]
    conds = [c for c in CONDITION_HELP if any(c in e.conditions for e in shown)]
    color = dict(zip(conds, colors(len(conds))))
    fig, axes = _panels(len(shown))
    for i, (ax, e) in enumerate(zip(axes, shown)):
        for c in conds:
            curve(ax, e, c, color[c], c, dashed=c == KV_ONLY)
        ax.set_title(_panel_title(f"{e.name} (headline: {e.headline})"), fontsize=7)
        _rho_axes(ax, ylabel=i % 3 == 0)
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, fontsize=7, loc="lower center", ncols=min(4, len(labels)))
    _suptitle(fig, "Conditions", title, len(shown), len(entries))
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


def format_figure(pairs: list[tuple], title: str):
    """QA (solid) vs NTP (dashed) adapters of the same setup, ``adapter_all`` over rho; None when
    no pair has those cells."""
    pairs = [(qa, ntp) for qa, ntp in pairs
             if any(qa.rouge(r, FORMAT_CONDITION) is not None for r in qa.rhos)
             and any(ntp.rouge(r, FORMAT_CONDITION) is not None for r in ntp.rhos)]
    if not pairs:
        return None
    fig = new_figure()
    ax = fig.add_subplot()
    for (qa, ntp), color in zip(pairs, colors(len(pairs))):
        curve(ax, qa, FORMAT_CONDITION, color, plot_text(f"QA: {qa.name}"))
        curve(ax, ntp, FORMAT_CONDITION, color, plot_text(f"NTP: {ntp.name}"), dashed=True)
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.set_xlabel("ρ (fraction of document KV entries evicted)")
    ax.set_ylabel(f"ROUGE-L, {FORMAT_CONDITION} (band: 95% CI)")
    ax.set_title(f"Training format: QA vs NTP, {title}", fontsize=10)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def write(group: list, pairs: list[tuple], title: str, plots_dir: Path, stem: str) -> dict[str, str]:
    """Write the group's figures as ``{stem}__{suffix}``; returns {kind: file name} of those written
    (a figure the group's results cannot draw is not written). ``pairs``: the QA/NTP pairs."""
    draw = {"fig2": lambda: kv_vs_lora_figure(group, title), "fig3": lambda: conditions_figure(group, title),
            "format": lambda: format_figure(pairs, title)}
    written = {}
    for kind, (suffix, what) in FIGURES.items():
        with plot_style():
            fig = draw[kind]()
            if fig is not None:
                written[kind] = f"{stem}__{suffix}"
                save_svg(fig, plots_dir / written[kind], f"{what}, {title}")
    return written


def markdown(links: dict[str, str], group_title_md: str) -> list[str]:
    """The page's lines for the figures in ``links`` ({kind: link}); ``group_title_md`` is already
    escaped for Markdown."""
    shown = [k for k in FIGURES if k in links]
    if not shown:
        return []
    images = " ".join(f"![{FIGURES[k][1]}, {group_title_md}]({links[k]})" for k in shown)
    return ["### The paper's figures, from these results\n",
            "KV-only vs +LoRA: each compressor's `base` ROUGE-L (dashed) and its adapted entries' headline "
            "condition (solid). Conditions: every condition of an adapted entry. Training format (where a QA and an "
            "NTP entry share a setup): `adapter_all` of each. Bands: document-clustered 95% CI of each cell.\n",
            images + "\n"]

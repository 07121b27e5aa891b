"""Formatting of results: plain-text and Markdown tables, fractions of the budget, loss curves.

Shared by ``compute-allocator apply`` (a table on the terminal) and
``compute-allocator evaluate`` (``results.md`` and ``curves.png``). Plots use
matplotlib's Agg canvas directly (no pyplot, no global backend change), so they
work on machines without a display.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

NEVER = "never"


def format_number(value: float | None, digits: int = 4) -> str:
    """A loss or J for a table: ``0.2950``; ``-`` for ``None``, ``nan``/``inf`` as such."""
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return f"{value:.{digits}f}"


def format_percent(fraction: float | None) -> str:
    """A fraction of the budget as a percentage (``62 %``); ``never`` for ``math.inf``."""
    if fraction is None:
        return "-"
    if math.isinf(fraction):
        return NEVER
    if math.isnan(fraction):
        return "nan"
    return f"{100 * fraction:.0f} %"


def format_fraction(fraction: float | None, digits: int = 3) -> str:
    """A fraction of the budget as a number (``0.620``); ``never`` for ``math.inf``."""
    if fraction is None:
        return "-"
    if math.isinf(fraction):
        return NEVER
    return format_number(fraction, digits)


def format_flops(flops: float) -> str:
    """FLOPs with an SI prefix: ``1.23 GFLOP``."""
    for prefix, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(flops) >= scale:
            return f"{flops / scale:.3g} {prefix}FLOP"
    return f"{flops:.3g} FLOP"


def saving(subject: float, other: float) -> float:
    """Relative compute saved by needing ``subject`` instead of ``other`` (fractions of the budget).

    ``1 - subject / other``: 0.38 means 38 % less compute; negative means more.
    ``math.inf`` stands for "never reached", so a subject that reaches the
    target where the other never does saves ``nan`` (not a number, reported in
    words), and one that never does saves ``-inf``.
    """
    if math.isinf(subject):
        return -math.inf
    if math.isinf(other) or other <= 0:
        return math.nan
    return 1.0 - subject / other


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A fixed-width table for a terminal: the first column left-aligned, the others right-aligned."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            str(cell).ljust(width) if i == 0 else str(cell).rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths))
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(headers), rule, *(line(row) for row in rows)])


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table, numbers right-aligned."""
    align = ["---"] + ["---:"] * (len(headers) - 1)
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    lines += [
        "| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |" for row in rows
    ]
    return "\n".join(lines)


def _line_style(controller: str, colour: str) -> dict:
    """The policy thick, uniform (the reference) dashed on top, so that both show where they coincide."""
    if controller == "policy":
        return {"color": colour, "linewidth": 2.6, "zorder": 3}
    if controller == "uniform":
        return {"color": colour, "linewidth": 1.2, "linestyle": "--", "zorder": 4}
    return {"color": colour, "linewidth": 1.3, "marker": ".", "markersize": 3, "zorder": 2}


def plot_curves(
    panels: Mapping[str, Mapping[str, Sequence[tuple[float, float]]]],
    path: str | Path,
    targets: Mapping[str, float] | None = None,
    title: str | None = None,
) -> Path:
    """Save validation loss against compute fraction, one panel per job, one line per controller.

    Args:
        panels: ``{job: {controller: curve}}`` with ``curve`` a ``RunResult.curve``.
        path: the image file to write (PNG by its extension).
        targets: ``{job: loss}``, drawn as a dotted horizontal line (uniform's best).
        title: the figure's title.
    """
    from matplotlib import ticker
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(panels)
    columns = min(3, max(1, len(names)))
    rows = max(1, math.ceil(len(names) / columns))
    figure = Figure(figsize=(4.6 * columns, 3.5 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False)
    controllers = list(dict.fromkeys(c for curves in panels.values() for c in curves))
    palette = iter(f"C{i % 10}" for i in range(len(controllers)))
    colours = {c: "black" if c == "uniform" else next(palette) for c in controllers}
    for index, axis in enumerate(axes.flat):
        if index >= len(names):
            axis.set_visible(False)
            continue
        job = names[index]
        for controller, curve in panels[job].items():
            points = [(f, loss) for f, loss in curve if math.isfinite(loss)]
            if not points:
                continue
            fractions, losses = zip(*points)
            axis.plot(
                fractions, losses, label=controller, **_line_style(controller, colours[controller])
            )
        if targets and job in targets and math.isfinite(targets[job]):
            axis.axhline(
                targets[job], color="0.5", linestyle=":", linewidth=1.0, label="uniform's best"
            )
        losses = [
            loss for curve in panels[job].values() for _, loss in curve if math.isfinite(loss)
        ]
        if losses and min(losses) > 0 and max(losses) / min(losses) > 4:
            # a log scale keeps the end of the curves, where controllers differ, readable
            axis.set_yscale("log")
            axis.yaxis.set_major_formatter(ticker.FormatStrFormatter("%.3g"))
            axis.yaxis.set_minor_locator(ticker.LogLocator(base=10, subs=(2.0, 3.0, 5.0)))
            axis.yaxis.set_minor_formatter(ticker.FormatStrFormatter("%.3g"))
        axis.set_title(job, fontsize=10)
        axis.set_xlabel("compute (fraction of budget)")
        axis.set_ylabel("validation loss" + (" (log scale)" if axis.get_yscale() == "log" else ""))
        axis.set_xlim(0.0, 1.02)
        axis.grid(alpha=0.3)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        figure.legend(handles, labels, loc="outside right upper", fontsize=8)
    if title:
        figure.suptitle(title, fontsize=11)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return path

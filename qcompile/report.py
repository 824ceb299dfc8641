"""The card's plots, and the card as one self-contained HTML page.

    sensitivity.png   the ranking of a precision search, most sensitive first: what keeping
                      each candidate in float gains on the budget's metric, coloured by the
                      precision the search chose for it
    tradeoff.png      every configuration the search scored: the metric against the share of
                      weight MACs left in int8, with the floor (and floor + margin) drawn, the
                      configurations that chose calibrators apart from those that did not, and
                      the chosen one starred
    card.html         card.md rendered by python-markdown (tables), the plots inlined as
                      data: URIs, so the one file travels alone

Figures are drawn on matplotlib's Agg canvas directly (no pyplot state), so compiles in
threads do not share a figure.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping

__all__ = ["plots", "render_html"]

_COLOURS = {"float": "#d95f02", "int8": "#1b9e77"}


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _finite(values: list[float]) -> list[float]:
    """Values with ±inf drawn just past the largest finite one (an exact output has infinite SQNR)."""
    finite = [v for v in values if math.isfinite(v)]
    top = max(finite, default=0.0)
    bottom = min(finite, default=0.0)
    reach = max(abs(top), abs(bottom), 1.0) * 0.1
    return [v if math.isfinite(v) else (top + reach if v > 0 else bottom - reach) for v in values]


def sensitivity_png(search: Mapping) -> bytes:
    table = [s for s in search["table"] if not (isinstance(s["gain"], float) and math.isnan(s["gain"]))]
    floats = set(search["float_groups"])
    figure = _figure(7.5, 1.2 + 0.28 * len(table))
    axes = figure.add_subplot()
    names = [s["candidate"][:40] for s in table][::-1]
    gains = _finite([float(s["gain"]) for s in table])[::-1]
    colours = [_COLOURS["float" if set(s["groups"]) <= floats else "int8"] for s in table][::-1]
    axes.barh(range(len(table)), gains, color=colours)
    axes.set_yticks(range(len(table)), names, fontsize=7)
    axes.set_xlabel(f"{search['metric']} gained by keeping it float")
    axes.set_title("Sensitivity (orange: kept float, green: int8)", fontsize=10)
    return _png(figure)


def tradeoff_png(search: Mapping) -> bytes:
    trials = search["trials"]
    figure = _figure(6.0, 4.0)
    axes = figure.add_subplot()
    values = _finite([float(t["value"]) for t in trials])
    shares = [100 * t["int8_share"] for t in trials]
    calibrated = [t["choices"] > 0 for t in trials]
    for chose, label, marker in ((False, "given calibrator", "o"), (True, "calibrators chosen", "s")):
        points = [(x, y) for x, y, c in zip(shares, values, calibrated, strict=True) if c == chose]
        if points:
            axes.scatter(*zip(*points, strict=True), s=14, marker=marker, alpha=0.7, label=label)
    chosen = _finite([float(search["chosen"]), *(float(t["value"]) for t in trials)])[0]
    axes.scatter([100 * search["chosen_int8_share"]], [chosen], s=120, marker="*", color="black", label="chosen")
    if "floor" in search["bound"]:
        axes.axhline(search["bound"]["floor"], color="black", linewidth=1, label="floor")
        axes.axhline(search["bound"]["floor"] + search["margin"], color="black", linestyle="--", linewidth=0.8)
    axes.set_xlabel("weight MACs in int8 (%)")
    axes.set_ylabel(search["metric"])
    axes.set_title(f"{len(trials)} configurations scored", fontsize=10)
    axes.legend(fontsize=7)
    return _png(figure)


def plots(card: Mapping) -> dict[str, bytes]:
    """The PNG plots of `card`'s precision search (none without one, or when it scored nothing)."""
    search = card.get("search")
    if not search or not search.get("trials"):
        return {}
    images = {"tradeoff.png": tradeoff_png(search)}
    if search["table"]:
        images = {"sensitivity.png": sensitivity_png(search), **images}
    return images


def render_html(markdown_text: str, images: Mapping[str, bytes], title: str = "Quantization card") -> str:
    """`markdown_text` as a standalone HTML page, with each image it links to inlined."""
    import markdown

    for name, data in images.items():
        uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        markdown_text = markdown_text.replace(f"]({name})", f"]({uri})")
    body = markdown.markdown(markdown_text, extensions=["tables"])
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;font-size:0.85em}td,th{border:1px solid #ccc;padding:2px 6px}"
        "img{max-width:100%}"
    )
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head>\n<body>\n{body}\n</body></html>\n"
    )

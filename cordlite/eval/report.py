"""Figures and Markdown tables for `cordlite eval` and `cordlite diagnose` (matplotlib, Agg backend).

Every writer is atomic (temp file + os.replace), so an interrupted run never leaves half a PNG.
"""

from __future__ import annotations

import os
from pathlib import Path

from cordlite.files import write_text_atomic  # noqa: F401  (re-exported for the report writers)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)  # files only: no display is needed or wanted
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    os.replace(tmp, path)
    return path


def accuracy_bars(names: list[str], text: list[float | None], audio: list[float | None], path: Path,
                  base_text: list[float | None] | None = None, title: str = "") -> Path:
    """Grouped bars per subset: text-view and audio-view accuracy (and the base's text accuracy
    when a baseline is given: the level CORD's gap is measured against)."""
    plt = _pyplot()
    series = [("text view", text, "#4C72B0"), ("audio view", audio, "#DD8452")]
    if base_text is not None:
        series.append(("base text view", base_text, "#8C8C8C"))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(names) + 2), 3.6))
    for j, (label, values, color) in enumerate(series):
        xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(names))]
        vals = [v if v is not None else 0.0 for v in values]
        bars = ax.bar(xs, vals, width, label=label, color=color)
        for b, v in zip(bars, values):
            ax.annotate("-" if v is None else f"{v:.1f}", (b.get_x() + b.get_width() / 2, b.get_height()),
                        ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(names)), names, rotation=20 if len(names) > 4 else 0, ha="right" if len(names) > 4 else "center")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 110)
    ax.set_title(title or "audio vs text accuracy")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=len(series), frameon=False)
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def divergence_histogram(values: list[float], p80: float, path: Path, bins: int = 50) -> Path:
    """Histogram of per-token reverse KL with its 80th percentile marked (paper: about 0.23 on MMSU)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    ax.hist(values, bins=bins, color="#4C72B0")
    ax.axvline(p80, color="#C44E52", linestyle="--", label=f"80th percentile = {p80:.4g}")
    ax.set_yscale("log")
    ax.set_xlabel("per-token reverse KL  D_t = KL(audio view || text view)")
    ax.set_ylabel("tokens (log scale)")
    ax.legend(fontsize=8)
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def _font_chars() -> set[int]:
    """The code points matplotlib's default font can draw (so a label never asks for a missing glyph)."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    return set(FT2Font(font_manager.findfont(font_manager.FontProperties())).get_charmap())


def drawable(text: str, chars: set[int]) -> str:
    """`text` with each character the font lacks shown as "?" (the tables in diagnose.md keep the real ones)."""
    return "".join(c if ord(c) in chars else "?" for c in text)


def heat_strip(tokens: list[str], values: list[float], path: Path, title: str = "", per_row: int = 16) -> Path:
    """One rollout, token by token, each cell coloured by its D_t (wrapped into rows)."""
    plt = _pyplot()
    from matplotlib import cm, colormaps, colors

    n = max(1, len(tokens))
    rows = (n + per_row - 1) // per_row
    vmax = max(values) if values and max(values) > 0 else 1.0
    norm = colors.Normalize(vmin=0.0, vmax=vmax)
    cmap = colormaps["magma_r"]
    chars = _font_chars()
    fig, ax = plt.subplots(figsize=(per_row * 0.75, 0.55 * rows + 0.9))
    for i, (tok, v) in enumerate(zip(tokens, values)):
        r, c = divmod(i, per_row)
        ax.add_patch(plt.Rectangle((c, rows - 1 - r), 1, 1, facecolor=cmap(norm(v)), edgecolor="white"))
        label = drawable(tok.replace("\n", "\\n"), chars)
        label = label if len(label) <= 7 else label[:6] + "~"
        ax.text(c + 0.5, rows - 1 - r + 0.5, label, ha="center", va="center", fontsize=6,
                color="white" if norm(v) > 0.55 else "black")
    ax.set_xlim(0, per_row)
    ax.set_ylim(0, rows)
    ax.set_axis_off()
    ax.set_title(drawable(title, chars), fontsize=8)
    fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, fraction=0.03, pad=0.01, label="D_t")
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)

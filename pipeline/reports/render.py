"""One report machine for the gate comparison and the synthetic benchmark.

A `Report` collects headings, paragraphs, tables and figures once and renders them
to both `report.md` and a self-contained `report.html`. Plot helpers write PNGs and
`write_json` writes results; every file is written to a temp name and moved into
place with `os.replace`, so a reader never sees a half-written file.
"""
from __future__ import annotations

import base64
import html
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import matplotlib
import numpy as np

from pipeline.artifacts.atomic import atomic_write as _atomic_write
from pipeline.artifacts.atomic import write_json  # noqa: F401  (re-exported: reports write their JSON with it)

matplotlib.use("Agg")  # headless: reports are made on servers and in CI
import matplotlib.pyplot as plt

if TYPE_CHECKING:  # names in annotations only
    from pipeline.artifacts.storage import Location

# Above this many cells a heatmap's numbers would overlap, so only colours are drawn.
_MAX_ANNOTATED_CELLS = 100


def _cell_text(value) -> str:
    """Numbers get 4 significant digits and NaN shows as n/a; pass strings for other formats."""
    if isinstance(value, (float, np.floating)):
        return "n/a" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


class Report:
    """A titled sequence of headings, paragraphs, tables and figures (plain text)."""

    def __init__(self, title: str):
        self.title = title
        self._blocks: list[tuple] = []

    def heading(self, text: str, level: int = 2) -> None:
        if not 2 <= level <= 6:
            raise ValueError(f"heading level must be 2..6 (1 is the title); got {level}")
        self._blocks.append(("heading", text, level))

    def paragraph(self, text: str) -> None:
        self._blocks.append(("paragraph", text))

    def table(self, headers: list[str], rows: list[list], bold: set[tuple[int, int]] = ()) -> None:
        """Add a table; `bold` holds (row, col) indices of cells to emphasize."""
        for i, row in enumerate(rows):
            if len(row) != len(headers):
                raise ValueError(f"table row {i} has {len(row)} cells for {len(headers)} headers")
        outside = {(r, c) for r, c in bold if not (0 <= r < len(rows) and 0 <= c < len(headers))}
        if outside:
            raise ValueError(f"bold cells outside the table: {sorted(outside)}")
        cells = [[_cell_text(v) for v in row] for row in rows]
        self._blocks.append(("table", [str(h) for h in headers], cells, set(bold)))

    def figure(self, png_path: Location, caption: str) -> None:
        """Add a PNG; it is linked from the markdown and embedded in the html."""
        png_path = Path(png_path).resolve()
        if not png_path.is_file():
            raise FileNotFoundError(f"figure not found: {png_path}")
        self._blocks.append(("figure", png_path, caption))

    def _markdown(self, folder: Path) -> str:
        lines = [f"# {self.title}", ""]
        for block in self._blocks:
            kind = block[0]
            if kind == "heading":
                lines += ["#" * block[2] + " " + block[1], ""]
            elif kind == "paragraph":
                lines += [block[1], ""]
            elif kind == "table":
                _, headers, cells, bold = block
                lines.append("| " + " | ".join(_md_cell(h) for h in headers) + " |")
                lines.append("|" + "---|" * len(headers))
                for r, row in enumerate(cells):
                    shown = [
                        f"**{_md_cell(t)}**" if (r, c) in bold and t else _md_cell(t)
                        for c, t in enumerate(row)
                    ]
                    lines.append("| " + " | ".join(shown) + " |")
                lines.append("")
            else:
                _, png, caption = block
                link = quote(Path(os.path.relpath(png, folder)).as_posix())
                lines += [f"![{caption}]({link})", "", f"*{caption}*", ""]
        return "\n".join(lines)

    def _html(self) -> str:
        esc = html.escape
        parts = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{esc(self.title)}</title>",
            "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
            "table{border-collapse:collapse}th,td{border:1px solid #bbb;padding:.25em .6em}"
            "td{text-align:right}td:first-child{text-align:left}img{max-width:100%}</style>",
            "</head><body>",
            f"<h1>{esc(self.title)}</h1>",
        ]
        for block in self._blocks:
            kind = block[0]
            if kind == "heading":
                parts.append(f"<h{block[2]}>{esc(block[1])}</h{block[2]}>")
            elif kind == "paragraph":
                parts.append(f"<p>{esc(block[1])}</p>")
            elif kind == "table":
                _, headers, cells, bold = block
                parts.append("<table>")
                parts.append("<tr>" + "".join(f"<th>{esc(h)}</th>" for h in headers) + "</tr>")
                for r, row in enumerate(cells):
                    shown = [
                        f"<td><strong>{esc(t)}</strong></td>" if (r, c) in bold else f"<td>{esc(t)}</td>"
                        for c, t in enumerate(row)
                    ]
                    parts.append("<tr>" + "".join(shown) + "</tr>")
                parts.append("</table>")
            else:
                _, png, caption = block
                data = base64.b64encode(png.read_bytes()).decode("ascii")
                parts.append(
                    f'<figure><img src="data:image/png;base64,{data}" alt="{esc(caption)}">'
                    f"<figcaption>{esc(caption)}</figcaption></figure>"
                )
        parts.append("</body></html>")
        return "\n".join(parts) + "\n"

    def write(self, folder: Path) -> dict[str, Path]:
        """Write report.md and report.html into `folder`; returns their paths by format."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        return {
            "md": _atomic_write(folder / "report.md", self._markdown(folder.resolve()).encode("utf-8")),
            "html": _atomic_write(folder / "report.html", self._html().encode("utf-8")),
        }


def _save(fig, path) -> Path:
    buffer = io.BytesIO()
    try:
        # No "Software" text chunk: the same plot gives the same bytes under any matplotlib.
        fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight", metadata={"Software": None})
    finally:
        plt.close(fig)
    return _atomic_write(path, buffer.getvalue())


def heatmap(path: Location, matrix: np.ndarray, row_labels: list[str], col_labels: list[str], title: str) -> Path:
    """A [rows, cols] matrix (e.g. expert weights by task) as coloured cells."""
    return heatmaps(path, {"": matrix}, row_labels, col_labels, title)


def heatmaps(path: Location, panels: dict[str, object], row_labels: list[str], col_labels: list[str], title: str,
             vmin: float | None = None, vmax: float | None = None, digits: int | None = None) -> Path:
    """Side-by-side heatmaps of [rows, cols] matrices (e.g. one per seed) on one colour scale.

    Args:
      panels: panel title -> [rows, cols] matrix, drawn left to right; rows share the labels
        of the first panel.
      vmin, vmax: ends of the colour scale; by default the range of all panels' finite values.
      digits: decimals of the numbers in the cells; by default 4 significant digits.
    """
    if not panels:
        raise ValueError("heatmaps needs at least one panel")
    matrices = {name: np.asarray(m, dtype=np.float64) for name, m in panels.items()}
    for name, matrix in matrices.items():
        if matrix.shape != (len(row_labels), len(col_labels)):
            raise ValueError(f"panel {name!r}: matrix shape {matrix.shape} does not match the labels "
                             f"({len(row_labels)}, {len(col_labels)})")
    rows, cols = len(row_labels), len(col_labels)
    finite = np.concatenate([m[np.isfinite(m)] for m in matrices.values()])
    vmin = (finite.min() if finite.size else 0.0) if vmin is None else vmin
    vmax = (finite.max() if finite.size else 1.0) if vmax is None else vmax
    # Size grows with the matrix up to a cap; past ~40 rows the labels are thinned instead.
    width = min(16.0, max(4.0, 0.6 * cols + 2))
    height = min(12.0, max(3.0, 0.5 * rows + 1.5))
    fig, axes = plt.subplots(1, len(matrices), figsize=(min(24.0, width * len(matrices)), height), squeeze=False,
                             sharey=True, layout="constrained")
    col_step, row_step = max(1, cols // 40), max(1, rows // 40)
    axes[0][0].set_yticks(np.arange(0, rows, row_step), row_labels[::row_step])
    for ax, (name, matrix) in zip(axes[0], matrices.items()):
        image = ax.imshow(matrix, cmap="viridis", aspect="auto", vmin=vmin, vmax=vmax)
        ax.set_xticks(np.arange(0, cols, col_step), col_labels[::col_step])
        ax.set_title(name)
        if matrix.size <= _MAX_ANNOTATED_CELLS:
            # Dark text on the bright half of the colormap, light text on the dark half.
            mid = (vmin + vmax) / 2
            for r in range(rows):
                for c in range(cols):
                    value = matrix[r, c]
                    text = _cell_text(float(value)) if digits is None or np.isnan(value) else f"{value:.{digits}f}"
                    ax.text(c, r, text, ha="center", va="center", fontsize=8,
                            color="black" if value > mid else "white")
    fig.colorbar(image, ax=list(axes[0]))
    fig.suptitle(title)
    return _save(fig, path)


def forest_plot(path: Location, labels: list[str], estimates: Sequence[float], lows: Sequence[float],
                highs: Sequence[float], title: str, xlabel: str,
                highlight: Sequence[bool] | None = None, notes: Sequence[str] | None = None) -> Path:
    """Estimates with their confidence intervals, one row per label, and a line at zero.

    Made for paired differences: the reader sees how far each interval is from 0 on the
    metric's own scale. A row whose interval is NaN (not estimable) shows its point only.

    Args:
      labels: one per row, drawn top to bottom.
      estimates, lows, highs: [rows] point estimates and interval ends.
      highlight: [rows] booleans; True rows are drawn in a strong colour (e.g. significant).
      notes: [rows] short texts printed right of the plot (e.g. relative difference and p).
    """
    estimates, lows, highs = (np.asarray(v, dtype=np.float64) for v in (estimates, lows, highs))
    n = len(labels)
    if not n or not estimates.shape == lows.shape == highs.shape == (n,):
        raise ValueError(f"forest_plot needs one estimate, low and high per label ({n} labels); got "
                         f"{estimates.shape}, {lows.shape}, {highs.shape}")
    highlight = [False] * n if highlight is None else list(highlight)
    notes = [""] * n if notes is None else list(notes)
    if len(highlight) != n or len(notes) != n:
        raise ValueError(f"forest_plot needs one highlight flag and one note per label ({n} labels)")
    fig, ax = plt.subplots(figsize=(6.5, 1.2 + 0.45 * n))
    y = np.arange(n)[::-1]  # first label on top
    ax.axvline(0.0, color="black", linewidth=0.8, linestyle="--")
    for row in range(n):
        colour = "tab:red" if highlight[row] else "tab:blue"
        if np.isfinite(lows[row]) and np.isfinite(highs[row]):
            ax.plot([lows[row], highs[row]], [y[row]] * 2, color=colour, linewidth=2)
        ax.plot(estimates[row], y[row], "o", color=colour)
        ax.annotate(notes[row], (1.02, y[row]), xycoords=("axes fraction", "data"), va="center", fontsize=8)
    ax.set_yticks(y, labels)
    ax.set_ylim(-0.7, n - 0.3)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def line_chart(path: Location, series: dict[str, tuple], title: str, xlabel: str, ylabel: str) -> Path:
    """One line with markers per series (x values, y values)."""
    if not series:
        raise ValueError("line_chart needs at least one series")
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, (x, y) in series.items():
        if len(x) != len(y):
            raise ValueError(f"series {name!r} has {len(x)} x values and {len(y)} y values")
        ax.plot(x, y, marker="o", label=name)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend()
    return _save(fig, path)

"""Report rendering (markdown + html from one content), PNG plots and the JSON writer."""
import base64
import json
import os
import re

import matplotlib.image
import numpy as np
import pytest

from pipeline.reports import render as report_module
from pipeline.reports.render import Report, forest_plot, heatmap, heatmaps, line_chart, write_json

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50


def leftover_temp_files(folder):
    return [p.name for p in folder.rglob("*") if p.name.endswith(".tmp")]


def test_plots_are_readable_pngs(tmp_path):
    paths = [
        heatmap(tmp_path / "heat.png", [[0.5, 0.5, 0.0], [0.0, 0.2, 0.8]],
                ["watch", "rating"], ["e0", "e1", "e2"], "Expert weights"),
        line_chart(tmp_path / "lines.png", {"dselect_k": ([1, 2, 4], [0.3, 0.35, 0.36])},
                   "NDCG vs k", "k", "NDCG"),
    ]
    assert paths == [tmp_path / "heat.png", tmp_path / "lines.png"]
    for path in paths:
        assert_png(path)
    assert leftover_temp_files(tmp_path) == []


def test_heatmap_annotates_only_small_matrices(tmp_path, monkeypatch):
    texts = []
    real_save = report_module._save

    def spy(fig, path):
        texts.append(len(fig.axes[0].texts))
        return real_save(fig, path)

    monkeypatch.setattr(report_module, "_save", spy)
    heatmap(tmp_path / "small.png", np.full((2, 3), 0.25), ["a", "b"], ["x", "y", "z"], "small")
    big = np.random.default_rng(0).random((12, 16))
    heatmap(tmp_path / "big.png", big, [str(i) for i in range(12)], [str(j) for j in range(16)], "big")
    assert texts == [6, 0]


def spy_on_figures(monkeypatch):
    """The figures the plot helpers save, kept open for inspection."""
    figures = []
    real_save = report_module._save

    def spy(fig, path):
        figures.append(fig)
        fig.canvas.draw()  # resolve tick labels before _save closes the figure
        return real_save(fig, path)

    monkeypatch.setattr(report_module, "_save", spy)
    return figures


def test_forest_plot_shows_intervals_around_a_zero_line(tmp_path, monkeypatch):
    figures = spy_on_figures(monkeypatch)
    path = forest_plot(tmp_path / "forest.png", ["a - b", "a - c", "a - d"], [0.004, -0.002, 0.01],
                       [0.001, -0.006, np.nan], [0.007, 0.002, np.nan], "watch NDCG@10: higher is better",
                       "NDCG@10 difference", highlight=[True, False, False],
                       notes=["+1.0%, Holm p 0.01", "-0.5%, Holm p 1", "one seed"])
    assert_png(path)
    ax = figures[0].axes[0]
    labels = {t.get_text(): t.get_position()[1] for t in ax.get_yticklabels()}
    assert labels["a - b"] > labels["a - c"] > labels["a - d"]  # first row on top
    low, high = ax.get_xlim()
    assert low < -0.006 and high > 0.01  # every interval and the zero line are in view
    zero_lines = [line for line in ax.lines if list(line.get_xdata()) == [0, 0]]
    assert len(zero_lines) == 1
    intervals = [line for line in ax.lines if len(line.get_xdata()) == 2 and line not in zero_lines]
    assert sorted(tuple(line.get_xdata()) for line in intervals) == [(-0.006, 0.002), (0.001, 0.007)]  # not d's
    colours = {tuple(line.get_xdata()): line.get_color() for line in intervals}
    assert colours[(0.001, 0.007)] != colours[(-0.006, 0.002)]  # the highlighted row stands out
    assert [t.get_text() for t in ax.texts] == ["+1.0%, Holm p 0.01", "-0.5%, Holm p 1", "one seed"]
    assert ax.get_xlabel() == "NDCG@10 difference" and ax.get_title() == "watch NDCG@10: higher is better"


def test_heatmaps_share_one_colour_scale_across_panels(tmp_path, monkeypatch):
    figures = spy_on_figures(monkeypatch)
    panels = {"seed 0": [[1.0, 0.0], [0.5, 0.5]], "seed 1": [[0.0, 1.0], [0.2, 0.8]], "seed 2": [[0.3, 0.7], [1, 0]]}
    assert_png(heatmaps(tmp_path / "seeds.png", panels, ["watch", "rating"], ["e0", "e1"], "per seed",
                        vmin=0.0, vmax=1.0, digits=2))
    images = [ax.images[0] for ax in figures[0].axes if ax.images]
    assert [im.axes.get_title() for im in images] == ["seed 0", "seed 1", "seed 2"]
    assert all(im.get_clim() == (0.0, 1.0) for im in images)
    np.testing.assert_array_equal(images[1].get_array(), [[0.0, 1.0], [0.2, 0.8]])
    assert [t.get_text() for t in images[1].axes.texts] == ["0.00", "1.00", "0.20", "0.80"]
    # Task labels once, on the left panel: inner panels would print them over their neighbour.
    assert [[t.get_text() for t in im.axes.get_yticklabels() if t.get_visible() and t.get_text()]
            for im in images] == [["watch", "rating"], [], []]
    # Without vmin/vmax the scale spans every panel's values, not each panel's own.
    heatmaps(tmp_path / "auto.png", {"a": [[0.1, 0.2]], "b": [[0.3, 0.9]]}, ["t"], ["e0", "e1"], "auto")
    assert all(ax.images[0].get_clim() == (0.1, 0.9) for ax in figures[1].axes if ax.images)


def test_the_same_plot_gives_the_same_png_bytes(tmp_path):
    args = (["a - b"], [0.01], [0.0], [0.02], "t", "x")
    first = forest_plot(tmp_path / "1.png", *args).read_bytes()
    assert forest_plot(tmp_path / "2.png", *args).read_bytes() == first
    assert b"Software" not in first and b"Matplotlib" not in first


def test_plot_helpers_reject_mismatched_input(tmp_path):
    with pytest.raises(ValueError):
        heatmap(tmp_path / "h.png", [[1.0, 2.0]], ["a", "b"], ["x", "y"], "t")
    with pytest.raises(ValueError):
        line_chart(tmp_path / "l.png", {"g": ([1, 2], [0.1])}, "t", "x", "y")
    with pytest.raises(ValueError, match="panel 'seed 1'"):
        heatmaps(tmp_path / "h.png", {"seed 0": [[1.0]], "seed 1": [[1.0, 0.0]]}, ["a"], ["x"], "t")
    with pytest.raises(ValueError):
        heatmaps(tmp_path / "h.png", {}, ["a"], ["x"], "t")
    with pytest.raises(ValueError):
        forest_plot(tmp_path / "f.png", ["a", "b"], [0.1], [0.0], [0.2], "t", "x")
    with pytest.raises(ValueError):
        forest_plot(tmp_path / "f.png", ["a"], [0.1], [0.0], [0.2], "t", "x", notes=["n", "m"])
    assert list(tmp_path.iterdir()) == []


def make_report(tmp_path):
    png = line_chart(tmp_path / "plots" / "ndcg.png", {"g": ([1, 2], [0.4, 0.5])}, "t", "x", "y")
    rep = Report("Gate comparison")
    rep.heading("Watch task")
    rep.paragraph("DSelect-k <b>beats</b> softmax & top-k")
    rep.table(["gate", "ndcg@10", "p"], [["dselect_k", 0.43214, "a|b"], ["softmax", float("nan"), 3]],
              bold={(0, 1)})
    rep.figure(png, "NDCG by gate")
    return rep, png


def test_report_markdown_and_html_share_the_content(tmp_path):
    rep, png = make_report(tmp_path)
    out = rep.write(tmp_path / "out")
    assert out == {"md": tmp_path / "out" / "report.md", "html": tmp_path / "out" / "report.html"}
    md = out["md"].read_text()
    page = out["html"].read_text()

    assert md.startswith("# Gate comparison\n")
    assert "## Watch task" in md
    assert "| gate | ndcg@10 | p |" in md
    assert "| dselect_k | **0.4321** | a\\|b |" in md  # bold cell, 4 significant digits, pipe escaped
    assert "| softmax | n/a | 3 |" in md
    assert "![NDCG by gate](../plots/ndcg.png)" in md

    assert "<h1>Gate comparison</h1>" in page and "<h2>Watch task</h2>" in page
    assert "<th>ndcg@10</th>" in page
    assert "<td><strong>0.4321</strong></td>" in page
    assert "<td>n/a</td>" in page
    assert "DSelect-k &lt;b&gt;beats&lt;/b&gt; softmax &amp; top-k" in page
    assert "<b>beats" not in page
    embedded = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert embedded is not None
    assert base64.b64decode(embedded.group(1)) == png.read_bytes()
    assert "plots/ndcg.png" not in page  # self-contained: no link to the file
    assert leftover_temp_files(tmp_path) == []


def test_report_rejects_bad_content(tmp_path):
    rep = Report("r")
    with pytest.raises(ValueError):
        rep.table(["a", "b"], [[1]])
    with pytest.raises(ValueError):
        rep.table(["a"], [[1]], bold={(1, 0)})
    with pytest.raises(ValueError):
        rep.heading("h", level=1)
    with pytest.raises(FileNotFoundError):
        rep.figure(tmp_path / "missing.png", "c")


def test_failed_write_keeps_the_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "result.json"
    write_json(target, {"v": 1})

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        write_json(target, {"v": 2})
    assert json.loads(target.read_text()) == {"v": 1}
    assert leftover_temp_files(tmp_path) == []


def test_write_json_converts_numpy_and_nan(tmp_path):
    obj = {
        "mean": np.float32(0.5),
        "n_users": np.int64(7),
        "per_seed": np.array([0.25, np.nan]),
        "missing": float("nan"),
        "inf": np.float64(np.inf),
        "flag": np.bool_(True),
        "nested": [{"x": (np.int32(1), 2.5)}],
    }
    path = write_json(tmp_path / "sub" / "r.json", obj)
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {
        "mean": 0.5, "n_users": 7, "per_seed": [0.25, None], "missing": None, "inf": None,
        "flag": True, "nested": [{"x": [1, 2.5]}],
    }

"""Every figure is produced, shows the capture's numbers, and stays readable when data is missing."""
from __future__ import annotations

import numpy as np
import pytest
from matplotlib.image import imread
from smallcaps import P, span, write_capture

import tdptrace
from tdptrace.cli import main
from tdptrace.oncall.plots import (
    FIGURES,
    plot_gap_distribution,
    plot_retained_tables,
    plot_span_timeline,
    plot_zaps_by_level,
    save_figures,
)


def small(tmp_path):
    """Two spans, one yield, a few zaps and one retained table."""
    sptes = [{"ts": 10, "gfn": 0, "level": 2, "old_spte": 0, "new_spte": P | (7 << 12) | 7},
             {"ts": 11, "gfn": 1, "level": 1, "old_spte": 0, "new_spte": P | 0x1000},
             {"ts": 12, "gfn": 0x200, "level": 2, "old_spte": 0, "new_spte": P | 0x80 | 0x200000},
             {"ts": 2_000_000, "gfn": 1, "level": 1, "old_spte": P | 0x1000, "new_spte": 0},
             {"ts": 3_000_000, "gfn": 0x200, "level": 2, "old_spte": P | 0x80 | 0x200000, "new_spte": 0}]
    return tdptrace.open(write_capture(
        tmp_path / "small.tdp", sptes=sptes,
        spans=[span(0, 1_000_000, 25_000_000, yields=1, max_gap_ns=15_000_000),
               span(1, 30_000_000, 30_500_000, "__tdp_mmu_zap_root", zap_level=3)],
        yields=[{"ts": 16_000_000, "ret_ts": 17_000_000, "ret": 1, "span_id": 0}]))


def assert_png_has_content(path):
    img = imread(path)
    assert img.shape[0] > 300 and img.shape[1] > 600
    rgb = img[..., :3].reshape(-1, 3)
    assert rgb.std() > 0.05                       # not a blank canvas
    assert len(np.unique((rgb * 255).astype(np.uint8), axis=0)) > 20


def test_every_figure_written_and_not_empty(tmp_path):
    paths = save_figures(small(tmp_path), tmp_path / "out")
    assert [p.stem for p in paths] == list(FIGURES)
    for p in paths:
        assert p.stat().st_size > 10_000
        assert_png_has_content(p)


def test_zaps_by_level_bars_are_the_counts(tmp_path):
    fig = plot_zaps_by_level(small(tmp_path))
    ax = fig.axes[0]
    heights = sorted(h for h in (r.get_height() for r in ax.patches) if np.isfinite(h))
    assert heights == [1, 1]  # one 4K leaf zap, one 2M leaf zap
    assert ax.get_yscale() == "log"
    assert "zaps by level" in ax.get_title()


def test_gap_distribution_marks_threshold_on_log_axis(tmp_path):
    fig = plot_gap_distribution(small(tmp_path), threshold_ns=5_000_000)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    assert any(list(ln.get_xdata()) == [5.0, 5.0] for ln in ax.lines)  # threshold in ms
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "threshold 5 ms" in labels and "2 gaps in tdp_mmu_zap_leafs" in labels
    assert any(t.get_text() == "2 above" for t in ax.texts)  # 15 ms and 8 ms gaps exceed 5 ms


def test_span_timeline_one_point_per_span(tmp_path):
    fig = plot_span_timeline(small(tmp_path))
    ax = fig.axes[0]
    pts = np.concatenate([c.get_offsets() for c in ax.collections if c.get_offsets().shape[1] == 2
                          and hasattr(c, "get_sizes") and len(c.get_sizes())])
    assert sorted(np.round(pts[:, 1], 3)) == [0.5, 15.0]  # longest gaps in ms
    assert any("span 0 tdp_mmu_zap_leafs: 15.0 ms without a yield" in t.get_text() for t in ax.texts)


def test_retained_tables_series(tmp_path):
    fig = plot_retained_tables(small(tmp_path))
    ax = fig.axes[0]
    (line,) = ax.lines
    assert max(line.get_ydata()) == 1  # the level-1 table emptied by the 4K zap stays linked
    assert "peak 1 tables (4 KiB)" in ax.get_legend().get_texts()[0].get_text()


def test_capture_without_spans_or_sptes_still_gives_readable_figures(tmp_path):
    cap = tdptrace.open(write_capture(tmp_path / "bare.tdp", page_tables=[{"ts": 5, "kind": "free", "level": 1}]))
    for fig in (plot_gap_distribution(cap), plot_span_timeline(cap), plot_retained_tables(cap)):
        assert "no" in fig.axes[0].texts[0].get_text()
    paths = save_figures(cap, tmp_path / "bare")
    for p in paths:
        assert_png_has_content(p)


def test_reference_capture_plots_via_cli(reference_captures, tmp_path, capsys):
    rc = main(["plot", str(reference_captures["k61-512m-hog"]), "-o", str(tmp_path / "figs")])
    out = capsys.readouterr().out
    assert rc == 0
    assert [ln.rsplit("/", 1)[1] for ln in out.split()] == [f"{n}.png" for n in FIGURES]
    for n in FIGURES:
        assert_png_has_content(tmp_path / "figs" / f"{n}.png")


def test_plot_into_a_file_is_refused(reference_captures, tmp_path, capsys):
    f = tmp_path / "file.png"
    f.write_text("x")
    rc = main(["plot", str(reference_captures["k61-256m-thp"]), "-o", str(f)])
    assert rc == 2 and "not a directory" in capsys.readouterr().err


@pytest.mark.parametrize("name", FIGURES)
def test_figures_have_titles_and_axis_labels(tmp_path, name):
    from tdptrace.oncall.plots import figures

    ax = figures(small(tmp_path))[name].axes[0]
    assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()


def test_hog_figures_use_the_capture_clock_and_zoom_into_the_worst_span(reference_captures):
    cap = tdptrace.open(reference_captures["k61-512m-hog"])
    fig = plot_span_timeline(cap)
    ax, zoom = fig.axes[:2]
    # the capture clock (the kernel log's [seconds]): spans run from 18.2 s to 24.8 s, nothing before
    lo, hi = ax.get_xlim()
    assert 17.9 < lo < 18.2 and 24.7 < hi < 25.1 and "capture clock" in ax.get_xlabel()
    # the second panel is span 1 (195 ms) close up: its 99.7 ms hold, then 95.6 ms incl. time away
    assert "Span 1 __tdp_mmu_zap_root close up: 195.3 ms, 1 yield" == zoom.get_title()
    assert sorted(t.get_text() for t in zoom.texts) == ["95.6 ms", "99.7 ms"]
    assert zoom.get_xlim()[1] == pytest.approx(195.329 * 1.03)
    fig = plot_retained_tables(cap)
    lo, hi = fig.axes[0].get_xlim()
    assert 17.5 < lo < 18.2 and hi < 25.2  # no empty stretch from the capture's start (3.5 s)


def test_time_away_is_not_counted_above_the_threshold(reference_captures):
    ax = plot_gap_distribution(tdptrace.open(reference_captures["k61-512m-hog"])).axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "1 incl. time away in an untraced yield (not holds)" in labels
    assert [t.get_text() for t in ax.texts] == ["1 above"]  # 99.7 ms; the 95.6 ms stretch is not a hold

"""The HTML QA report: slices through the foreground with overlays, embedded as base64 PNGs."""
from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest

from ASSFTLib import report
from tiny_workspace import SHAPE, scored_workspace


def _case(shape=(20, 24, 16), seed=0):
    """A noisy image with a bright ellipsoid off-centre and its label (class 2 in one half)."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    centre = np.array([13, 8, 10]).reshape(3, 1, 1, 1)
    inside = (((grid - centre) / np.array([4, 5, 3]).reshape(3, 1, 1, 1)) ** 2).sum(0) <= 1
    image = rng.normal(0, 0.2, shape).astype(np.float32) + inside * 2.0
    label = inside.astype(np.uint8)
    label[inside & (grid[1] > 8)] = 2
    return image, label


def _decode_pngs(page: str) -> list[np.ndarray]:
    from matplotlib.image import imread

    blobs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    return [imread(io.BytesIO(base64.b64decode(b)), format="png") for b in blobs]


def test_foreground_centre_finds_the_object_and_falls_back_to_the_middle():
    _, label = _case()
    assert report.foreground_centre(label, label.shape) == (13, 8, 10)
    assert report.foreground_centre(np.zeros((6, 8, 4)), (6, 8, 4)) == (3, 4, 2)


def test_probabilities_are_shown_as_their_argmax():
    _, label = _case()
    probs = np.stack([label == k for k in range(3)]).astype(np.float32) * 0.8 + 0.05
    np.testing.assert_array_equal(report.overlay_labels(probs), label)
    with pytest.raises(ValueError):
        report.overlay_labels(np.zeros((2, 2)))


def test_overlay_changes_the_picture_where_the_label_is():
    image, label = _case()
    plain = report.slice_panel_png(image, None, spacing=(1.0, 1.0, 2.0), centre=(13, 8, 10))
    overlaid = report.slice_panel_png(image, label, spacing=(1.0, 1.0, 2.0), centre=(13, 8, 10))
    from matplotlib.image import imread

    a = imread(io.BytesIO(plain), format="png")[..., :3]
    b = imread(io.BytesIO(overlaid), format="png")[..., :3]
    assert a.shape == b.shape
    # gray slices have R == G == B; the coloured overlay breaks that somewhere
    assert np.abs(a[..., 0] - a[..., 2]).max() < 1e-6
    assert np.abs(b[..., 0] - b[..., 2]).max() > 0.2
    with pytest.raises(ValueError, match="differs"):
        report.slice_panel_png(image, label[:-1])


def test_write_html_embeds_every_case_with_its_numbers(tmp_path):
    image, label = _case()
    image2, label2 = _case(seed=1)
    sections = [
        report.ReportSection("Ranked for labeling", "highest q first", [
            report.ReportEntry("case_a", image, label, (1.0, 1.0, 2.0), {"rank": 1, "K": 0.81234, "q": 0.5}),
        ]),
        report.ReportSection("Pseudo-label candidates", "passing the SSFT filter", [
            report.ReportEntry("case_b", image2, label2, numbers={"confidence": 0.95, "distance": float("nan")},
                               note="<script>not code</script>"),
        ]),
        report.ReportSection("Empty", "nothing here", []),
    ]
    out = report.write_html(tmp_path / "sub" / "report.html", sections, intro={"workspace": "/ws"})
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>")
    pngs = _decode_pngs(page)
    assert len(pngs) == 2 and all(p.ndim == 3 and p.shape[0] > 100 for p in pngs)
    assert "0.8123" in page and "case_b" in page and "confidence" in page
    assert "<script>not code" not in page  # user text is escaped
    assert "None." in page
    assert "http" not in page.replace("http-equiv", "")  # self-contained: nothing fetched
    assert not list((tmp_path / "sub").glob("*.tmp*"))


# ----------------------------------------------------------------------------
# a whole workspace, through the command line


@pytest.mark.torch
def test_report_command_on_a_scored_workspace(tmp_path):
    from ASSFTLib import cli

    ws = scored_workspace(tmp_path, with_model=True)
    # an admitting threshold, so that the candidate section is drawn too (not a scoring field: cache stays valid)
    ws.save_settings(ws.settings.replace(confidence_threshold=0.0, distance_percentile=100.0))
    unlabeled = ws.unlabeled_ids()
    ws.close()
    out = tmp_path / "qa.html"
    assert cli.main(["report", str(tmp_path / "ws"), "--out", str(out), "--top", "2"]) == 0
    page = out.read_text()
    assert "Ranked for labeling" in page and "Pseudo-label candidates" in page
    shown = [c for c in unlabeled if f'id="{c}"' in page]
    pngs = _decode_pngs(page)
    assert len(shown) >= 2 and len(pngs) == page.count('class="entry"') >= 2
    assert "confidence c" in page  # at least one candidate passed the open filter
    assert "Overlay colours:" in page and page.count('class="swatch"') == 2  # one per foreground class
    assert "What the numbers mean" in page and "knowledge divergence" in page


@pytest.mark.torch
def test_report_lists_the_finished_rounds_with_both_quality_signals(tmp_path):
    from ASSFTLib.report import round_history, write_report

    ws = scored_workspace(tmp_path, with_model=True)
    assert round_history(ws) == []
    assert "None yet: no fine-tuning round has finished." in write_report(ws, tmp_path / "r0.html").read_text()
    model = ws.current_model().id
    # the records a fine-tuning round leaves in the workspace (training.finetune_round writes the same keys)
    first = ws.start_round("train")
    ws.finish_round(first, "finished", metrics={"train_labels": 2, "pseudo_labels": 0, "heldout": [],
                                                "heldout_dice": None, "new_label_dice": None}, model_id=model)
    ws.finish_round(ws.start_round("train"), "cancelled", metrics={"job_dir": "x"})
    second = ws.start_round("train")
    ws.finish_round(second, "finished", metrics={
        "train_labels": 4, "pseudo_labels": 3, "heldout": ["synth_001"], "heldout_dice": 0.81234,
        "new_label_dice": 0.6, "new_label_dice_per_case": {"synth_001": 0.5, "synth_002": 0.7},
        "not_made_current": "collapsed"}, model_id=model)
    rows = round_history(ws)
    assert [r["round"] for r in rows] == [1, 2], "the cancelled round is not listed"
    assert rows[0]["held-out Dice (labels held out)"] is None and rows[0]["previous model on new labels"] is None
    assert rows[1]["held-out Dice (labels held out)"] == "0.812 (1)"
    assert rows[1]["previous model on new labels"] == "0.600 (2)"
    assert rows[0]["made current"] and not rows[1]["made current"]
    page = write_report(ws, tmp_path / "r.html").read_text()
    ws.close()
    history = page.split("Fine-tuning rounds so far")[1].split("Ranked for labeling")[0]
    assert "0.812 (1)" in history and "0.600 (2)" in history and history.count("<tr>") == 3  # head + 2 rounds


@pytest.mark.torch
def test_report_refuses_an_unwritable_out_before_scoring(tmp_path, monkeypatch, capsys):
    from ASSFTLib import cli, scoring

    scored_workspace(tmp_path, with_model=True).close()

    def no_scoring(*_a, **_k):
        raise AssertionError("scored before finding that --out cannot be written")
    monkeypatch.setattr(scoring, "score_cases", no_scoring)
    (tmp_path / "folder").mkdir()
    (tmp_path / "a_file").write_text("")
    for out, says in ((tmp_path / "folder", "is a folder, not a file"),
                      (tmp_path / "a_file" / "qa.html", "cannot write the report here")):
        assert cli.main(["report", str(tmp_path / "ws"), "--out", str(out)]) == 1
        err = capsys.readouterr().err
        assert str(out) in err and says in err
    assert not (tmp_path / "folder" / "report.html").exists()


@pytest.mark.torch
def test_report_names_refused_candidates_and_an_empty_worklist(tmp_path):
    from ASSFTLib.report import write_report

    ws = scored_workspace(tmp_path, with_model=True)
    ws.save_settings(ws.settings.replace(confidence_threshold=1.0))  # nobody passes: every candidate is refused
    page = write_report(ws, tmp_path / "r.html", top=0).read_text()
    assert "Refused pseudo-label candidates" in page and "why not" in page
    assert all(c in page.split("Refused pseudo-label candidates")[1] for c in ws.unlabeled_ids())
    assert "The first 0" not in page
    for case_id in ws.unlabeled_ids():  # label everything: the worklist is empty, and the page says why
        ws.save_label(case_id, np.zeros(SHAPE, np.uint8))
    page = write_report(ws, tmp_path / "r2.html").read_text()
    ws.close()
    assert "Nothing to rank: every volume is labeled." in page and "The first 0" not in page


@pytest.mark.torch
def test_report_without_a_model_says_so(tmp_path):
    from ASSFTLib.report import write_report

    ws = scored_workspace(tmp_path, with_model=False)
    page = write_report(ws, tmp_path / "r.html").read_text()
    ws.close()
    assert "register a foundation model" in page
    assert not _decode_pngs(page)

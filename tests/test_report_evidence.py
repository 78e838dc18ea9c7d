"""Which Z map the dataset's evaluation favours (subject report) and the demo's
held-out / in-sample false-positive line."""

from __future__ import annotations

import json
import re

from pet_synth_app import layout as L
from pet_synth_app.cli.demo import detection_line
from pet_synth_app.reports.subject import favoured_map


def _summary(folder, desc, sens3, fp_held):
    path = L.evaluation_file(folder, desc, "summary", ".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"sensitivity_top3": sens3, "fp_per_control_held_out": fp_held}))


def test_no_evaluation_says_neither_map_is_known_better(tmp_path):
    text = favoured_map(tmp_path / "evaluation")
    assert "no evaluation of both maps existed" in text and "agree" in text
    assert "group/report.html" in text  # where a later evaluation shows


def test_favoured_map_follows_the_numbers(tmp_path):
    ev = tmp_path / "evaluation"
    _summary(ev, "hypometabolism", 1.0, 0.5)
    _summary(ev, "controlpet", 1.0, 2.25)
    text = favoured_map(ev)
    assert "100 %" in text and "0.50" in text and "2.25" in text
    assert re.search(r"petsynth-evaluate, \d{4}-\d\d-\d\d \d\d:\d\d;", text)  # dated
    assert text.endswith("favours the synthesis-based map.")
    _summary(ev, "hypometabolism", 0.75, 0.5)  # fewer FPs but lower sensitivity
    assert favoured_map(ev).endswith("Neither map is better on both counts.")
    _summary(ev, "controlpet", 0.75, 0.25)
    assert favoured_map(ev).endswith("favours the control-PET map.")
    _summary(ev, "controlpet", 0.75, None)  # every control was in the fit
    assert "false-positive rates are unknown" in favoured_map(ev)


def test_demo_line_separates_held_out_and_in_sample_controls():
    summary = {"sensitivity_top1": 0.5, "sensitivity_top3": 1.0, "mean_rank": 1.5}
    controls = [
        {"n_clusters": 2, "in_normative_model": False},
        {"n_clusters": 0, "in_normative_model": False},
        {"n_clusters": 0, "in_normative_model": True},
    ]
    line = detection_line(summary, controls)
    assert "1.0 (held-out, n=2)" in line and "0.0 (in-sample, n=1)" in line
    assert "top-3 1.00" in line and "mean rank 1.5" in line
    assert "n/a (no control maps)" in detection_line(summary, [])

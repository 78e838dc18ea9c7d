"""Methods boilerplate: citations resolved against the bundled bibliography."""

from __future__ import annotations

import logging

from pet_synth_app import boilerplate as bp


def test_every_cited_key_of_the_workflows_is_in_the_bibliography():
    import pathlib
    import re

    import pet_synth_app

    root = pathlib.Path(pet_synth_app.__file__).parent
    text = "\n".join(p.read_text() for p in root.rglob("*.py") if p.name != "boilerplate.py")
    keys = set(bp.cited_keys(" ".join(re.findall(r"\[@[^\]]+\]", text))))
    assert {"nipype", "zotova2021", "alaverdyan2020", "scholkopf2001"} <= keys
    assert keys <= set(bp.bibliography())


def test_cited_keys_order_and_groups():
    assert bp.cited_keys("A [@b; @a] and [@b] then [@c].") == ["b", "a", "c"]
    assert bp.cited_keys("an e-mail user@host is not a citation") == []


def test_format_reference():
    ref = bp.format_reference(bp.bibliography()["alaverdyan2020"])
    assert ref.startswith("Alaverdyan, Jung, Bouet et al. (2020). Regularized siamese")
    assert "*Medical Image Analysis*" in ref and ref.endswith("doi:10.1016/j.media.2019.101618")
    assert "Scholkopf" in bp.format_reference(bp.bibliography()["scholkopf2001"])


def test_write_citation_keeps_both_levels_and_dedups(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    para = "Skull-stripped with deepbet [@deepbet]."
    text = f"{para}\n\n{para}\n\nZ maps [@chen2025]."
    md, bib = bp.write_citation(tmp_path, "participant", text)
    text = md.read_text()
    assert text.count(para) == 1 and "## Participant level" in text
    bp.write_citation(tmp_path, "group", "OC-SVM [@scholkopf2001] and [@nosuchkey].")
    text = md.read_text()
    assert "## Participant level" in text and "## Group level" in text
    refs = text.split("## References", 1)[1]
    assert refs.index("[@deepbet]") < refs.index("[@chen2025]") < refs.index("[@scholkopf2001]")
    assert "nosuchkey" in caplog.text
    entries = bib.read_text()
    assert entries.count("@") >= 3 and "@article{chen2025" in entries and "nipype" not in entries
    # rewriting the participant level replaces it and keeps the group section
    bp.write_citation(tmp_path, "participant", "Only N4 [@n4].")
    text = md.read_text()
    assert "deepbet" not in text.split("## References")[0] and "OC-SVM" in text

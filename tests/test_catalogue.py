"""The requirement catalogue: the bundled file is complete and valid; malformed files give file:line."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from conformance.catalogue import DEFAULT_CATALOGUE, load_catalogue
from conformance.tomlsource import DataFileError

SEEDS = Path("/work/shared/seeds")

ENTRY = """\
format = 1

[[requirement]]
label = "DM-SC-GEN-X"
text = "The Device SHALL do it."
kind = "stated"
strength = "SHALL"
roles = ["client"]
source.seed = "004.txt"
source.passage = "DM-SC-GEN-X The Device SHALL do it."
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "cat.toml"
    p.write_text(textwrap.dedent(text))
    return p


def test_bundled_catalogue_has_every_stated_label_verbatim() -> None:
    cat = load_catalogue()
    stated = {r.label for r in cat if r.kind == "stated"}
    assert stated == {"LightweightM2M-HLF-00X1", "DM-SC-GEN-X", "DM-SC-USE-X"}
    assert cat.get("DM-SC-USE-X").text.startswith("If smart card data contains user confirmation indication")


def test_bundled_catalogue_derives_every_unlabelled_requirement() -> None:
    cat = load_catalogue()
    by_seed: dict[str, list[str]] = {}
    for r in cat:
        by_seed.setdefault(r.seed[:3], []).append(r.label)
    # 000: IP, non-IP, mobility, discovery, bootstrap, registration, scale
    assert len([x for x in by_seed["000"] if x.startswith("LightweightM2M-HLF-00X1.")]) == 7
    assert len(by_seed["001"]) == 4       # circuit/SMS, reporting cycle, integrity, charging
    assert len(by_seed["002"]) == 4       # three potential requirements + alternative flow
    assert len(by_seed["003"]) == 6       # the six framework items
    assert {"DM-SC-GEN-X.1", "DM-SC-USE-X.1"} <= set(by_seed["004"])  # post-condition, alternative flow
    for r in cat:
        assert r.kind == "stated" or r.kind == "derived"
        assert r.strength in ("SHALL", "SHOULD", "MAY") and r.roles
        if r.parent:
            assert r.label.startswith(r.parent + ".")


@pytest.mark.skipif(not SEEDS.is_dir(), reason="seed documents not available on this machine")
def test_every_passage_is_quoted_verbatim_from_its_seed() -> None:
    cat = load_catalogue(DEFAULT_CATALOGUE, seeds_dir=SEEDS)
    assert len(cat) == 28


def test_selection_by_label_family_and_parent() -> None:
    cat = load_catalogue()
    assert cat.select(["DM-SC-USE-X"]) == {"DM-SC-USE-X", "DM-SC-USE-X.1", "DM-SC-USE-X.2"}
    assert all(x.startswith("LightweightM2M-HLF-") for x in cat.select(["HLF"]))
    assert len(cat.select(["hlf"])) == 16
    assert cat.select(["DM-CP"]) == {f"DM-CP-{i}" for i in range(1, 7)}
    assert "LightweightM2M-HLF-00X1.7" in cat.select(["HLF-00X1"])
    with pytest.raises(ValueError, match="'SC-9' matches no requirement"):
        cat.select(["SC-9"])


@pytest.mark.parametrize("change,line,message", [
    (('strength = "SHALL"', 'strength = "MUST"'), 7, "strength must be one of"),
    (('roles = ["client"]', 'roles = ["modem"]'), 8, "roles must be a non-empty list"),
    (('kind = "stated"', 'kind = "stated"\ncolour = "red"'), 7, "unknown key 'colour'"),
    (('text = "The Device SHALL do it."\n', ''), 3, "missing required key 'text'"),
    (('label = "DM-SC-GEN-X"', 'label = "no spaces allowed"'), 4, "malformed label"),
    (('roles = ["client"]', 'roles = "client"'), 8, "'roles' must be a list"),
    (('source.passage = "DM-SC-GEN-X The Device SHALL do it."', 'source.passage = "something else"'), 10,
     "must quote its label and text verbatim"),
    (('kind = "stated"', 'kind = = "stated"'), 6, "TOML syntax error"),
])
def test_malformed_entry_names_file_line_and_problem(tmp_path: Path, change: tuple[str, str], line: int, message: str) -> None:
    p = write(tmp_path, ENTRY.replace(*change))
    with pytest.raises(DataFileError) as ei:
        load_catalogue(p)
    assert str(ei.value).startswith(f"{p}:{line}: ")
    assert message in str(ei.value)


def test_duplicate_label_and_unknown_parent(tmp_path: Path) -> None:
    p = write(tmp_path, ENTRY + ENTRY.split("\n", 2)[2])
    with pytest.raises(DataFileError, match=r"cat.toml:12: .*duplicate label \(first defined at line 3\)"):
        load_catalogue(p)
    child = ENTRY + textwrap.dedent("""
        [[requirement]]
        label = "DM-SC-GEN-X.1"
        parent = "DM-SC-GEN-Y"
        text = "Derived."
        kind = "derived"
        strength = "SHOULD"
        roles = ["client"]
        source.seed = "004.txt"
        source.passage = "something"
        """)
    p = write(tmp_path, child)
    with pytest.raises(DataFileError, match=r"cat.toml:14: .*parent 'DM-SC-GEN-Y' is not defined"):
        load_catalogue(p)


def test_passage_not_in_seed_is_reported(tmp_path: Path) -> None:
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    (seeds / "004.txt").write_text("DM-SC-GEN-X\n\tThe Device SHALL do it.\n")
    assert len(load_catalogue(write(tmp_path, ENTRY), seeds_dir=seeds)) == 1
    (seeds / "004.txt").write_text("something else entirely")
    with pytest.raises(DataFileError, match="not a verbatim quote of 004.txt"):
        load_catalogue(write(tmp_path, ENTRY), seeds_dir=seeds)

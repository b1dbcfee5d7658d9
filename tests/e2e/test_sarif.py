"""SARIF 2.1.0 output (issue 11 item 5): every SARIF document modelcdr prints validates against the
official OASIS schema (tests/e2e/schemas), lists every catalogued rule with its metadata, locates
results by file, byte offset and container entry, and keeps info findings for --verbose."""
from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import pytest

from conftest import explain, require_bin, run_cli

jsonschema = pytest.importorskip("jsonschema")  # pinned in tests/requirements.txt

SCHEMA = json.loads((Path(__file__).parent / "schemas" / "sarif-schema-2.1.0.json").read_text())
EVIL = b"cos\nsystem\n(S'echo pwned'\ntR."


@pytest.fixture(autouse=True)
def _needs_bin():
    require_bin()


def sarif(*args):
    rc, so, se = run_cli("scan", "--sarif", *args)
    assert so, explain(rc, so, se)
    doc = json.loads(so)
    jsonschema.Draft4Validator(SCHEMA).validate(doc)
    return rc, doc


def samples(d: Path):
    d.mkdir()
    (d / "evil.pkl").write_bytes(EVIL)
    (d / "clean.pkl").write_bytes(pickle.dumps({"a": [1.0, 2.0]}, protocol=2))
    (d / "cut.pkl").write_bytes(b"\x80\x02}q\x00(X")
    (d / "odd name #1 %.pkl").write_bytes(EVIL)
    with zipfile.ZipFile(d / "evil.pt", "w") as z:
        z.writestr("evil/data.pkl", EVIL)
        z.writestr("evil/version", "3\n")
    (d / "remap.pkl").write_bytes(b"c__builtin__\nset\n(lR.")  # info: a Python 2 name remapped
    return d


def test_every_sarif_output_validates(tmp_path):
    d = samples(tmp_path / "s")
    for f in sorted(d.iterdir()):
        sarif(f)
        sarif("--verbose", f)
    rc, doc = sarif(d)
    assert rc == 2  # cut.pkl is unreadable


def test_corpus_sarif_validates(corpus):
    for sub in ("benign", "malicious"):
        sarif(corpus / sub)


def test_rules_metadata_and_locations(tmp_path):
    d = samples(tmp_path / "s")
    rc, doc = sarif(d / "evil.pkl")
    run = doc["runs"][0]
    rules = run["tool"]["driver"]["rules"]
    ids = [r["id"] for r in rules]
    assert len(ids) == len(set(ids)) and len(ids) > 200, len(ids)
    for r in rules:
        assert r["shortDescription"]["text"] and r["fullDescription"]["text"] and r["help"]["text"], r
        assert 0.0 <= float(r["properties"]["security-severity"]) <= 10.0, r
    res = run["results"]
    assert res and all(rules[x["ruleIndex"]]["id"] == x["ruleId"] for x in res), res
    call = [x for x in res if x["ruleId"] == "pickle.call"]
    assert len(call) == 1 and "echo pwned" in call[0]["message"]["text"], res
    loc = call[0]["locations"][0]["physicalLocation"]
    assert loc["artifactLocation"]["uri"].endswith("evil.pkl")
    assert EVIL[loc["region"]["byteOffset"]:loc["region"]["byteOffset"] + 1] == b"R", loc  # the REDUCE opcode
    # inside a zip: the entry is the logical location
    rc, doc = sarif(d / "evil.pt")
    res = [x for x in doc["runs"][0]["results"] if x["ruleId"] == "pickle.call"]
    assert res, doc["runs"][0]["results"]
    assert res[0]["locations"][0]["logicalLocations"][0]["name"] == "evil/data.pkl", res[0]
    # a path that needs percent-encoding stays a valid uri-reference
    rc, doc = sarif(d / "odd name #1 %.pkl")
    uri = doc["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
    assert " " not in uri and "#" not in uri and "%20" in uri and "%23" in uri, uri


def test_offsets_are_from_the_start_of_the_file(tmp_path):
    """A result inside a zip entry is located by its offset in the FILE (the entry's data offset
    added); inside a deflated entry, at the entry's data with "entry X, decompressed offset N"."""
    for method in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        path = tmp_path / f"evil{method}.pt"
        with zipfile.ZipFile(path, "w", compression=method) as z:
            z.writestr("evil/version", "3\n")  # first, so data.pkl's data does not start at a fixed place
            z.writestr("evil/data.pkl", EVIL)
        info = zipfile.ZipFile(path).getinfo("evil/data.pkl")
        raw = path.read_bytes()
        # the entry's data offset, from its local header (30 bytes + name + extra)
        name_len, extra_len = int.from_bytes(raw[info.header_offset + 26:info.header_offset + 28], "little"), \
            int.from_bytes(raw[info.header_offset + 28:info.header_offset + 30], "little")
        data_at = info.header_offset + 30 + name_len + extra_len
        rc, doc = sarif(path)
        call = [x for x in doc["runs"][0]["results"] if x["ruleId"] == "pickle.call"][0]
        loc = call["locations"][0]
        at = loc["physicalLocation"]["region"]["byteOffset"]
        logical = loc["logicalLocations"][0]
        assert logical["name"] == "evil/data.pkl", loc
        inside = loc["properties"]["entryOffset"]
        assert EVIL[inside:inside + 1] == b"R", loc  # the REDUCE opcode in the entry
        if method == zipfile.ZIP_STORED:
            assert raw[at:at + 1] == b"R" and at == data_at + inside, (loc, data_at)
            assert logical["fullyQualifiedName"] == f"entry evil/data.pkl, offset {inside}", logical
        else:
            assert at == data_at, (loc, data_at)
            assert logical["fullyQualifiedName"] == f"entry evil/data.pkl, decompressed offset {inside}", logical


def test_info_findings_only_with_verbose(tmp_path):
    d = samples(tmp_path / "s")
    rc, doc = sarif(d / "remap.pkl")
    plain = {x["ruleId"] for x in doc["runs"][0]["results"]}
    rc, doc = sarif("--verbose", d / "remap.pkl")
    verbose = [x for x in doc["runs"][0]["results"] if x["level"] == "note"]
    assert "pickle.py2-name-remap" in {x["ruleId"] for x in verbose}, verbose
    assert "pickle.py2-name-remap" not in plain, plain

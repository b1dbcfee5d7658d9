"""MTD for publishers (issue 17 items 1-2): map info, add/remove-recipient, one copy per
customer (protect --recipients-dir) and leak tracing (trace)."""
from __future__ import annotations

import hashlib
import json
import re

import pytest

from conftest import explain, run_cli

torch = pytest.importorskip("torch")


def cli(*args, want=None):
    rc, so, se = run_cli(*args, timeout=600)
    if want is not None:
        assert rc == want, explain(rc, so, se)
    return rc, so, se


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_model(path, seed=0):
    torch.manual_seed(seed)
    sd = {f"layer{i}.weight": torch.randn(32, 16) for i in range(6)}
    sd.update({f"layer{i}.bias": torch.randn(32) for i in range(6)})
    sd["steps"] = torch.tensor(7)  # an integer buffer: the same in every copy
    torch.save(sd, path)
    return sd


def fp(path, recipient=False):
    rc, so, se = cli("key", "fingerprint", *(["--recipient"] if recipient else []), path, want=0)
    return so.split()[0]


@pytest.fixture(scope="module")
def env(tmp_path_factory, cdr_bin):
    d = tmp_path_factory.mktemp("publisher")
    keys = {}
    for who in ("publisher", "alice", "bob"):
        cli("keygen", "-o", d / who, want=0)
        keys[who] = (d / f"{who}.key", d / f"{who}.pub")
    cli("keygen", "--symmetric", "-o", d / "ops.key", want=0)
    keys["ops"] = d / "ops.key"
    model = d / "model.pt"
    sd = make_model(model)
    return d, keys, model, sd


def signer_args(keys):
    return ("--verify-signer", keys["publisher"][1])


def test_keygen_and_key_fingerprint_print_recipient_fingerprints(tmp_path, cdr_bin):
    rc, so, se = cli("keygen", "-o", tmp_path / "k", want=0)
    recipient = re.search(r"recipient fingerprint ([0-9a-f]{32})", se).group(1)
    assert fp(tmp_path / "k.pub", recipient=True) == recipient
    assert fp(tmp_path / "k.key", recipient=True) == recipient  # the secret file names the same key
    assert so.split()[0] == fp(tmp_path / "k.pub") != recipient  # stdout: the signer line, unchanged


def test_map_info_shows_the_clear_header_without_a_key(tmp_path, env):
    d, keys, model, _ = env
    out, mp = tmp_path / "p.pt", tmp_path / "p.map"
    cli("protect", model, "-o", out, "--map", mp, "--recipient", keys["alice"][1], "--recipient", keys["bob"][1],
        "--key-file", keys["ops"], "--sign", keys["publisher"][0], want=0)
    rc, so, se = cli("map", "info", mp, want=0)
    assert "format: 5" in so
    assert f"signer: {fp(keys['publisher'][1])} (signature valid" in so
    assert f"recipient {fp(keys['alice'][1], True)}" in so and f"recipient {fp(keys['bob'][1], True)}" in so
    assert "key slots: 3" in so and "  key-file" in so
    # The file's digest is built from the record digests and the zip layout (docs/MTD.md §2), so
    # that protect hashes each byte once: each copy has its own.
    digest = re.search(r"protected file digest: ([0-9a-f]{64})\n", so).group(1)
    out2, mp2 = tmp_path / "p2.pt", tmp_path / "p2.map"
    cli("protect", model, "-o", out2, "--map", mp2, "--key-file", keys["ops"], want=0)
    assert json.loads(cli("map", "info", mp2, "--json", want=0)[1])["info"]["protected_digest"] != digest
    assert re.search(r"created: 20\d\d-\d\d-\d\dT", so) and "records: 13" in so
    doc = json.loads(cli("map", "info", mp, "--json", want=0)[1])
    assert doc["format"] == 5 and doc["signer"]["signature_valid"] is True
    assert [s.get("recipient") for s in doc["slots"]] == [None, fp(keys["alice"][1], True), fp(keys["bob"][1], True)]
    assert doc["info"]["protected_digest"] == digest and re.fullmatch(r"[0-9a-f]{32}", doc["info"]["model_id"])
    # Nothing secret: the permutation secret and the hashes are only in the sealed payload.
    assert "secret" not in so and "before" not in json.dumps(doc)
    rc, so, se = cli("map", "info", model, want=2)
    assert "not a modelcdr map" in se
    # A changed header byte shows up as a signature that does not verify.
    bad = bytearray(mp.read_bytes())
    at = bytes(bad).find(b'"copy"')
    bad[at + 1] ^= 0x20
    (tmp_path / "bad.map").write_bytes(bytes(bad))
    assert "signature does NOT verify" in cli("map", "info", tmp_path / "bad.map", want=0)[1]


def test_add_and_remove_recipient_leave_the_protected_file_identical(tmp_path, env):
    d, keys, model, sd = env
    out, mp = tmp_path / "p.pt", tmp_path / "p.map"
    cli("protect", model, "-o", out, "--map", mp, "--recipient", keys["alice"][1], "--sign", keys["publisher"][0], want=0)
    protected = out.read_bytes()

    def restore(who, want):
        dst = tmp_path / f"r-{who}-{len(list(tmp_path.iterdir()))}.pt"
        rc, so, se = cli("restore", out, "--map", mp, "-o", dst, "--identity", keys[who][0], *signer_args(keys), want=want)
        return dst, se

    # The signer is not a recipient: their own key does not open the map (docs/MTD.md says so).
    _, se = restore("publisher", 3)
    assert "wrong key" in se
    _, se = restore("bob", 3)
    # add-recipient needs a key that opens the map, and --sign for a signed map.
    rc, so, se = cli("map", "add-recipient", mp, keys["bob"][1], "--identity", keys["alice"][0], *signer_args(keys), want=2)
    assert "--sign" in se
    before = mp.read_bytes()
    cli("map", "add-recipient", mp, keys["bob"][1], "--identity", keys["alice"][0], *signer_args(keys),
        "--sign", keys["publisher"][0], want=0)
    assert mp.read_bytes() != before
    dst, _ = restore("bob", 0)
    got = torch.load(dst, weights_only=True)
    assert all(torch.equal(got[k], sd[k]) for k in sd)
    restore("alice", 0)
    # Remove Alice by fingerprint: she can no longer open this map; Bob still can.
    cli("map", "remove-recipient", mp, fp(keys["alice"][1], True), "--identity", keys["bob"][0], *signer_args(keys),
        "--sign", keys["publisher"][0], want=0)
    _, se = restore("alice", 3)
    assert "wrong key" in se
    restore("bob", 0)
    info = cli("map", "info", mp, want=0)[1]
    assert fp(keys["bob"][1], True) in info and fp(keys["alice"][1], True) not in info
    # Refusals: removing someone not in the map, adding someone twice, removing the last key.
    rc, so, se = cli("map", "remove-recipient", mp, keys["alice"][1], "--identity", keys["bob"][0], *signer_args(keys),
                     "--sign", keys["publisher"][0], want=2)
    assert "not sealed to" in se
    rc, so, se = cli("map", "add-recipient", mp, keys["bob"][1], "--identity", keys["bob"][0], *signer_args(keys),
                     "--sign", keys["publisher"][0], want=2)
    assert "already sealed to" in se
    rc, so, se = cli("map", "remove-recipient", mp, keys["bob"][1], "--identity", keys["bob"][0], *signer_args(keys),
                     "--sign", keys["publisher"][0], want=2)
    assert "no key" in se
    # -o writes a new map and leaves the old one; an existing -o is refused.
    kept = mp.read_bytes()
    cli("map", "add-recipient", mp, keys["alice"][1], "-o", tmp_path / "new.map", "--identity", keys["bob"][0],
        *signer_args(keys), "--sign", keys["publisher"][0], want=0)
    assert mp.read_bytes() == kept
    cli("map", "add-recipient", mp, keys["alice"][1], "-o", tmp_path / "new.map", "--identity", keys["bob"][0],
        *signer_args(keys), "--sign", keys["publisher"][0], want=2)
    # A map signed by someone else is refused before anything is re-wrapped.
    rc, so, se = cli("map", "add-recipient", mp, keys["alice"][1], "--identity", keys["bob"][0], "--verify-signer",
                     keys["alice"][1], "--sign", keys["publisher"][0], want=3)
    assert mp.read_bytes() == kept
    assert out.read_bytes() == protected  # through all of it, the protected model never changed


@pytest.fixture(scope="module")
def customers(env):
    d, keys, model, _ = env
    cdir, outdir = d / "customers", d / "copies"
    cdir.mkdir()
    for i in range(20):
        cli("keygen", "-o", cdir / f"c{i:02d}", "--quiet", want=0)
    for k in cdir.glob("*.key"):
        k.rename(d / k.name)
    rc, so, se = cli("protect", model, "--recipients-dir", cdir, "-o", outdir, "--key-file", keys["ops"],
                     "--sign", keys["publisher"][0], want=0)
    assert "20 protected copies" in se and "input read once" in se
    return d, cdir, outdir


def test_recipients_dir_writes_one_distinct_copy_per_customer(env, customers):
    d, keys, model, sd = env
    _, cdir, outdir = customers
    names = [f"c{i:02d}" for i in range(20)]
    assert sorted(p.name for p in outdir.iterdir()) == sorted([f"{n}.pt" for n in names] + [f"{n}.map" for n in names])
    assert len({sha(outdir / f"{n}.pt") for n in names}) == 20  # every protected copy differs
    ids = set()
    for n in ("c00", "c13"):
        info = json.loads(cli("map", "info", outdir / f"{n}.map", "--json", want=0)[1])
        assert info["info"]["copy"] == n
        assert fp(cdir / f"{n}.pub", True) in [s.get("recipient") for s in info["slots"]]
        ids.add(info["info"]["model_id"])
    assert len(ids) == 1  # one release
    dst = d / "c13-restored.pt"
    cli("restore", outdir / "c13.pt", "--map", outdir / "c13.map", "-o", dst, "--identity", d / "c13.key",
        *signer_args(keys), want=0)
    got = torch.load(dst, weights_only=True)
    assert all(torch.equal(got[k], sd[k]) for k in sd)
    # A customer's key opens only their own map.
    rc, so, se = cli("verify", outdir / "c14.pt", "--map", outdir / "c14.map", "--identity", d / "c13.key",
                     *signer_args(keys), want=3)
    assert "wrong key" in se
    # Run again into the same folder: refused before any work, nothing replaced.
    before = {p.name: sha(p) for p in outdir.iterdir()}
    rc, so, se = cli("protect", model, "--recipients-dir", cdir, "-o", outdir, "--key-file", keys["ops"], want=2)
    assert "already exists" in se
    assert {p.name: sha(p) for p in outdir.iterdir()} == before


def test_recipients_dir_refuses_unsafe_customer_names(tmp_path, env):
    d, keys, model, _ = env
    cdir = tmp_path / "c"
    cdir.mkdir()
    (cdir / "ok.pub").write_bytes(keys["alice"][1].read_bytes())
    (cdir / "bad\x1b[2J.pub").write_bytes(keys["bob"][1].read_bytes())
    rc, so, se = cli("protect", model, "--recipients-dir", cdir, "-o", tmp_path / "o", "--key-file", keys["ops"], want=2)
    assert "\x1b" not in se and "letters, digits" in se
    assert not list((tmp_path / "o").glob("*"))


def trace(file, outdir, keys, want):
    return cli("trace", file, "--maps", outdir, "--key-file", keys["ops"], *signer_args(keys), want=want)


@pytest.mark.parametrize("who", ["c00", "c07", "c19"])
def test_trace_names_the_leaked_copy_among_20(env, customers, who):
    d, keys, model, _ = env
    _, _, outdir = customers
    rc, so, se = trace(outdir / f"{who}.pt", outdir, keys, 0)
    lines = so.strip().splitlines()
    assert len(lines) == 1 and f"matches {who} (map" in lines[0], so
    assert "12 of its 12 distinctive records" in lines[0]  # the integer buffer names nobody


def test_trace_finds_a_partial_leak(tmp_path, env, customers):
    d, keys, model, _ = env
    _, _, outdir = customers
    leaked = torch.load(outdir / "c11.pt", weights_only=True)
    part = tmp_path / "part.pt"
    torch.save({k: leaked[k].clone() for k in ("layer2.weight", "layer4.bias")}, part)  # re-saved by the thief
    rc, so, se = trace(part, outdir, keys, 0)
    assert "matches c11 (map" in so and "2 of its 12" in so and so.count("matches") == 1


def test_trace_says_no_match_honestly(tmp_path, env, customers):
    d, keys, model, _ = env
    _, _, outdir = customers
    other = tmp_path / "other.pt"
    make_model(other, seed=1)
    rc, so, se = trace(other, outdir, keys, 1)
    assert "no match among 20 maps" in so
    # The unprotected original matches no customer either (its records are the 'before' side).
    rc, so, se = trace(model, outdir, keys, 1)
    assert "no match" in so
    # A key that opens none of the maps is an error, not a "no match".
    rc, so, se = cli("trace", other, "--maps", outdir, "--identity", keys["bob"][0], *signer_args(keys), want=2)
    assert "none of the 20 maps opens" in se

"""MTD rollback and expiry (issue 17 item 5, last point): protect --version N --expires DATE
binds a publisher release number and an expiry into the signed map; restore refuses an expired
map and, with --min-version, an older one; map info shows both. Attacker-made maps (the clear
info edited to claim a newer version or a later expiry) must not pass."""
from __future__ import annotations

import calendar
import json
import time

import pytest

from conftest import explain, run_cli

torch = pytest.importorskip("torch")


def cli(*args, want=None):
    rc, so, se = run_cli(*args, timeout=600)
    if want is not None:
        assert rc == want, explain(rc, so, se)
    return rc, so, se


@pytest.fixture(scope="module")
def env(tmp_path_factory, cdr_bin):
    d = tmp_path_factory.mktemp("release")
    cli("keygen", "-o", d / "publisher", want=0)
    cli("keygen", "--symmetric", "-o", d / "ops.key", want=0)
    torch.manual_seed(1)
    sd = {f"l{i}.weight": torch.randn(64, 80) for i in range(3)}
    model = d / "model.pt"
    torch.save(sd, model)
    return d, model, sd


def protect(env, tmp_path, *extra, name="p"):
    d, model, _ = env
    out, mp = tmp_path / f"{name}.pt", tmp_path / f"{name}.map"
    cli("protect", model, "-o", out, "--map", mp, "--key-file", d / "ops.key", "--sign", d / "publisher.key", *extra, want=0)
    return out, mp


def restore(env, tmp_path, out, mp, *extra, want, name="r"):
    d, _, _ = env
    dst, rep = tmp_path / f"{name}.pt", tmp_path / f"{name}.json"
    rc, so, se = cli("restore", out, "--map", mp, "-o", dst, "--key-file", d / "ops.key",
                     "--verify-signer", d / "publisher.pub", "--report", rep, *extra, want=want)
    return dst, json.loads(rep.read_text()), se


def test_map_info_shows_version_and_expiry_and_restore_accepts_a_current_map(tmp_path, env):
    out, mp = protect(env, tmp_path, "--version", "5", "--expires", "2099-01-02")
    rc, so, se = cli("map", "info", mp, want=0)
    assert "version: 5\n" in so and "expires: 2099-01-02T00:00:00Z\n" in so
    info = json.loads(cli("map", "info", mp, "--json", want=0)[1])["info"]
    assert info["version"] == 5 and info["expires_unix"] == calendar.timegm((2099, 1, 2, 0, 0, 0))
    dst, rep, se = restore(env, tmp_path, out, mp, "--min-version", "5", want=0)
    assert rep["code"] == "ok"
    back = torch.load(dst, weights_only=True)
    for k, v in env[2].items():
        assert torch.equal(back[k], v), k
    # Without --version / --expires the map says so.
    out2, mp2 = protect(env, tmp_path, name="plain")
    so = cli("map", "info", mp2, want=0)[1]
    assert "version: -\n" in so and "expires: never\n" in so


def test_restore_refuses_an_older_or_unversioned_map_with_min_version(tmp_path, env):
    out, mp = protect(env, tmp_path, "--version", "3")
    dst, rep, se = restore(env, tmp_path, out, mp, "--min-version", "4", want=3)
    assert rep["code"] == "rollback" and "older than --min-version 4" in se and not dst.exists()
    # verify applies the same floor.
    d = env[0]
    rc, so, se = cli("verify", out, "--map", mp, "--key-file", d / "ops.key", "--verify-signer", d / "publisher.pub",
                     "--min-version", "4", want=3)
    assert "rollback" in se
    out2, mp2 = protect(env, tmp_path, name="unversioned")
    dst, rep, se = restore(env, tmp_path, out2, mp2, "--min-version", "1", want=3, name="r2")
    assert rep["code"] == "rollback" and "names no publisher version" in se and not dst.exists()
    restore(env, tmp_path, out, mp, "--min-version", "3", want=0, name="r3")  # equal is fine


def edit_info(mp, old: bytes, new: bytes):
    """The attacker's edit: a same-length change of the map's clear info, where it is stored."""
    raw = mp.read_bytes()
    assert len(old) == len(new) and raw.count(old) == 1, raw[:400]
    forged = mp.with_name("forged-" + mp.name)
    forged.write_bytes(raw.replace(old, new))
    return forged


def test_an_edited_version_or_expiry_breaks_the_signature(tmp_path, env):
    out, mp = protect(env, tmp_path, "--version", "3", "--expires", "2090-01-01")
    forged = edit_info(mp, b'"version":3', b'"version":9')
    dst, rep, se = restore(env, tmp_path, out, forged, "--min-version", "9", want=3)
    assert rep["code"] == "bad-signature" and not dst.exists(), se
    later = calendar.timegm((2090, 1, 1, 0, 0, 0))
    forged = edit_info(mp, f'"expires_unix":{later}'.encode(), f'"expires_unix":{later + 9}'.encode())
    dst, rep, se = restore(env, tmp_path, out, forged, want=3, name="r2")
    assert rep["code"] == "bad-signature" and not dst.exists(), se


def test_restore_refuses_an_expired_map(tmp_path, env):
    expires = int(time.time()) + 4
    out, mp = protect(env, tmp_path, "--expires", f"@{expires}")
    restore(env, tmp_path, out, mp, want=0, name="before")
    time.sleep(max(0.0, expires - time.time()) + 0.5)
    dst, rep, se = restore(env, tmp_path, out, mp, want=3, name="after")
    assert rep["code"] == "expired" and "expired at" in se and not dst.exists()
    # verify still checks integrity of an expired copy (the publisher's audit).
    d = env[0]
    cli("verify", out, "--map", mp, "--key-file", d / "ops.key", "--verify-signer", d / "publisher.pub", want=0)


@pytest.mark.parametrize("date", ["2001-01-01", "@1", "2099-13-01", "2099-02-30", "tomorrow", "2099-01-01T25:00:00Z"])
def test_protect_refuses_a_past_or_malformed_expiry(tmp_path, env, date):
    d, model, _ = env
    out, mp = tmp_path / "p.pt", tmp_path / "p.map"
    rc, so, se = cli("protect", model, "-o", out, "--map", mp, "--key-file", d / "ops.key", "--expires", date, want=2)
    assert "--expires" in se and not out.exists() and not mp.exists()

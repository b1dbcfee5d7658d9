"""`modelcdr scan` on folders as users have them (issue 11 item 4): a Hugging Face model folder
written by transformers' save_pretrained, a git checkout, --exclude, unknown binaries, the summary
table, the progress line on a terminal only, and `-` (standard input)."""
import json
import os
import pty
import select
import subprocess
from pathlib import Path

import pytest

from conftest import bin_path, explain, require_bin, run_cli

# A pickle that would call os.system: written as bytes, never unpickled.
PAYLOAD = b"cos\nsystem\n(S'echo pwned'\ntR."


def scan_json(*args):
    rc, so, se = run_cli("scan", "--json", *args)
    assert rc in (0, 1, 2), explain(rc, so, se)
    return rc, json.loads(so), se


def by_name(doc, root):
    return {str(Path(f["path"]).relative_to(root)): f for f in doc["files"]}


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A tiny BERT saved by transformers: safetensors weights, a torch.save .bin copy, config, tokenizer."""
    transformers = pytest.importorskip("transformers")
    d = tmp_path_factory.mktemp("hf") / "tiny-bert"
    cfg = transformers.BertConfig(vocab_size=32, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                                  intermediate_size=8, max_position_embeddings=16)
    model = transformers.BertModel(cfg)
    model.save_pretrained(d, safe_serialization=True)
    import torch
    torch.save(model.state_dict(), d / "pytorch_model.bin")  # what save_pretrained wrote before safetensors
    vocab = d.parent / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(27)]) + "\n")
    transformers.BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(d)
    (d / "README.md").write_text("---\nlicense: mit\n---\n# tiny-bert\n")
    return d


def test_hf_folder_is_clean(hf_folder):
    require_bin()
    rc, doc, se = scan_json(hf_folder)
    files = by_name(doc, hf_folder)
    assert rc == 0, json.dumps(doc, indent=1)[:3000]
    assert files["model.safetensors"]["status"] == "clean" and files["model.safetensors"]["tensors"]["count"] > 0
    assert files["pytorch_model.bin"]["status"] == "clean" and files["pytorch_model.bin"]["tensors"]["count"] > 0
    assert set(files) >= {"config.json", "tokenizer.json", "tokenizer_config.json", "README.md"}
    for name in set(files) - {"model.safetensors", "pytorch_model.bin"}:
        f = files[name]
        assert f["status"] == "skipped", f
        assert [x["rule"] for x in f["findings"]] == ["scan.not-a-model"] and f["findings"][0]["severity"] == "info"
    assert doc["summary"]["errors"] == 0 and doc["summary"]["skipped"] == len(files) - 2


def test_hf_folder_with_a_payload_is_flagged(hf_folder, tmp_path):
    require_bin()
    d = tmp_path / "repo"
    subprocess.run(["cp", "-r", str(hf_folder), str(d)], check=True)
    (d / "training_args.bin").write_bytes(PAYLOAD)
    rc, doc, _ = scan_json(d)
    f = by_name(doc, d)["training_args.bin"]
    assert rc == 1 and f["status"] == "findings"
    assert any("os system" in x["message"] and "echo pwned" in x["message"] for x in f["findings"]), f


def test_git_checkout_skips_dot_git(tmp_path):
    require_bin()
    torch = pytest.importorskip("torch")
    d = tmp_path / "checkout"
    d.mkdir()
    torch.save({"w": torch.ones(2)}, d / "model.pt")
    (d / "train.py").write_text("print('train')\n")
    (d / "notes.txt").write_text("hello\n")
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t.invalid", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t.invalid")
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=d, check=True, env=env)
    assert any((d / ".git" / "objects").rglob("*"))  # zlib streams that sniff as compressed models
    rc, doc, _ = scan_json(d)
    names = by_name(doc, d)
    assert rc == 0, doc
    assert not [n for n in names if n.startswith(".git")]
    assert names["model.pt"]["status"] == "clean"
    assert names["train.py"]["status"] == "skipped" and "code" in names["train.py"]["findings"][0]["message"]


def test_exclude_globs(tmp_path):
    require_bin()
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "evil.pkl").write_bytes(PAYLOAD)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.md").write_text("# a\n")
    (tmp_path / "keep.pkl").write_bytes(PAYLOAD)
    rc, doc, _ = scan_json(tmp_path, "--exclude", "sub", "--exclude", "*.md")
    assert set(by_name(doc, tmp_path)) == {"keep.pkl"} and rc == 1
    rc, doc, _ = scan_json("--exclude", "*.pkl", tmp_path)  # one glob per --exclude: the folder is a PATH
    assert set(by_name(doc, tmp_path)) == {"notes/a.md"} and rc == 0


def test_unknown_binaries_are_named(tmp_path):
    require_bin()
    blob = bytes(range(256)) * 4
    (tmp_path / "tokenizer.model").write_bytes(blob)  # e.g. sentencepiece: no model format we read
    rc, doc, _ = scan_json(tmp_path)
    f = by_name(doc, tmp_path)["tokenizer.model"]
    assert rc == 0 and f["status"] == "skipped" and f["findings"][0]["rule"] == "scan.unknown-binary"
    (tmp_path / "pytorch_model.bin").write_bytes(blob)  # a name loaders are pointed at: checked
    rc, doc, _ = scan_json(tmp_path)
    f = by_name(doc, tmp_path)["pytorch_model.bin"]
    assert rc == 2 and f["status"] == "error" and f["error"]["message"]


def test_summary_table_and_no_progress_off_terminal(hf_folder):
    require_bin()
    rc, so, se = run_cli("scan", hf_folder)
    assert rc == 0, explain(rc, so, se)
    summary = so[so.index("\nsummary: "):]
    n_files = sum(1 for p in hf_folder.rglob("*") if p.is_file())
    assert f"summary: {n_files} files in " in summary
    assert "by status:" in summary and "by format:" in summary
    assert any(line.split() == ["safetensors", "1"] for line in summary.splitlines())
    assert "\r" not in se


def test_progress_line_on_a_terminal(hf_folder):
    require_bin()
    master, slave = pty.openpty()
    p = subprocess.Popen([str(bin_path()), "scan", str(hf_folder)], stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    seen = b""
    while True:
        r, _, _ = select.select([master], [], [], 30)
        if not r:
            break
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    out, _ = p.communicate(timeout=60)
    os.close(master)
    assert p.returncode == 0
    assert b"\r" in seen and b"config.json" in seen  # drawn on the terminal...
    assert b"\r" not in out  # ...never in the results


def test_stdin(tmp_path):
    require_bin()
    torch = pytest.importorskip("torch")
    good = tmp_path / "m.pt"
    torch.save({"w": torch.ones(3)}, good)
    p = subprocess.run([str(bin_path()), "scan", "--json", "-"], stdin=good.open("rb"), capture_output=True, timeout=60)
    doc = json.loads(p.stdout)
    assert p.returncode == 0 and doc["files"][0]["path"] == "-" and doc["files"][0]["tensors"]["count"] == 1
    p = subprocess.run([str(bin_path()), "scan", "--json", "-"], input=PAYLOAD, capture_output=True, timeout=60)
    doc = json.loads(p.stdout)
    assert p.returncode == 1 and any("echo pwned" in f["message"] for f in doc["files"][0]["findings"])
    assert not list(Path(os.environ.get("TMPDIR", "/tmp")).glob("modelcdr-stdin-*"))

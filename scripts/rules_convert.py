#!/usr/bin/env python3
"""Turn rule-id string literals in C++ code into `Rule::ident` enum values.

The rule catalogue (src/report/rules.def) is the one list of rule ids; code names rules by the
generated `enum class Rule`. Branches written before the catalogue (or by hand since) still use
strings such as `add_finding(out, Severity::high, "zip.overlap", ...)`: run this script after a
merge and it rewrites every literal that is a catalogued id into `Rule::zip_overlap`.
Idempotent: a second run changes nothing.

    scripts/rules_convert.py            rewrite files in place, list what changed
    scripts/rules_convert.py --check    change nothing; exit 1 when a literal would be
                                        rewritten or looks like a rule id that is not catalogued

Only code is touched: string literals inside comments are left alone. Literals that look like
rule ids but are not rules (module names such as "torch.storage") are listed in NOT_RULES.
"""
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TABLE = os.path.join(ROOT, "src", "report", "rules.def")
DIRS = ["src", "include", "tests", "fuzz", "python"]
# Family prefixes of rule ids: a literal "<family>.<name>" is probably a rule.
FAMILIES = ("pickle|cdr|zip|tar|torch|torchscript|npy|npz|safetensors|joblib|codec|convert|limits|io|format|"
            "policy|output|emit|hf|copy|json|resource|map|key|mtd|crypto|stego|lab|cli|trust|scan|engine|serve|upstream|usage")
# Literals shaped like rule ids that are module or record names, never rules.
NOT_RULES = {"torch.storage", "torch.serialization", "torch.device", "torch.cuda", "torch.hub", "torch.nn",
             "torch.jit", "torch.distributed", "torch.utils", "torch.fx", "torch.ao", "torch.optim", "torch.nn.modules",
             "cli.py", "io.bytesio", "copy.deepcopy", "map.json", "torch.float32", "torch.pt"}
ROW = re.compile(r'^MCDR_RULE\((\w+),\s*"([^"]+)"', re.M)
LOOKS_LIKE_RULE = re.compile(r"^(?:%s)\.[a-z0-9][a-z0-9-]*$" % FAMILIES)


def load_table():
    with open(TABLE, encoding="utf-8") as f:
        return {rid: ident for ident, rid in ROW.findall(f.read())}


def literals(text):
    """Yield (start, end, content) of each plain "..." literal outside comments and char literals."""
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            i = text.find("\n", i)
            i = n if i < 0 else i
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            i = n if j < 0 else j + 2
        elif c == "'":
            j = i + 1
            while j < n and text[j] != "'":
                j += 2 if text[j] == "\\" else 1
            i = j + 1
        elif c == '"':
            raw = i > 0 and text[i - 1] == "R"
            if raw:  # R"delim( ... )delim"
                k = text.find("(", i)
                end = text.find(")" + text[i + 1:k] + '"', k)
                i = n if end < 0 else end + len(text[i + 1:k]) + 2
                continue
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            yield i, j + 1, text[i + 1:j]
            i = j + 1
        else:
            i += 1


def convert(text, table, unknown):
    out, last = [], 0
    for s, e, content in literals(text):
        if content in table:
            out.append(text[last:s])
            out.append("Rule::" + table[content])
            last = e
        elif LOOKS_LIKE_RULE.match(content) and content not in NOT_RULES:
            unknown.add(content)
    out.append(text[last:])
    return "".join(out)


def main():
    check = "--check" in sys.argv[1:]
    table = load_table()
    changed, unknown = [], {}
    for d in DIRS:
        for dp, _, files in os.walk(os.path.join(ROOT, d)):
            for name in sorted(files):
                if not name.endswith((".cpp", ".hpp", ".h", ".cc")):
                    continue
                path = os.path.join(dp, name)
                with open(path, encoding="utf-8") as f:
                    text = f.read()
                found = set()
                new = convert(text, table, found)
                for u in found:
                    unknown.setdefault(u, []).append(os.path.relpath(path, ROOT))
                if new != text:
                    changed.append(os.path.relpath(path, ROOT))
                    if not check:
                        with open(path, "w", encoding="utf-8") as f:
                            f.write(new)
    for p in changed:
        print(("would convert " if check else "converted ") + p)
    for u, where in sorted(unknown.items()):
        print(f"not in src/report/rules.def: \"{u}\" ({', '.join(sorted(set(where)))})")
    return 1 if check and (changed or unknown) else 0


if __name__ == "__main__":
    sys.exit(main())

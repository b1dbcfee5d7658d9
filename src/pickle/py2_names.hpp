// Python-2 name compatibility for GLOBAL-style lookups. CPython's unpickler (fix_imports=True,
// the default, and PyTorch's weights-only unpickler) rewrites (module, name) pairs of protocol 0-2
// streams through the tables of Lib/_compat_pickle.py before resolving them; the lifter's allowlist
// must see the names CPython would import, so the machine applies the same rewrite.
#pragma once
#include <string>
#include <string_view>

namespace modelcdr::pickle {

// Rewrites `module`/`name` in place the way CPython's find_class does when protocol < 3:
// an exact (module, name) entry of NAME_MAPPING wins; otherwise the module alone is looked up in
// IMPORT_MAPPING. Returns true when anything changed.
bool remap_py2_name(std::string& module, std::string& name);

}  // namespace modelcdr::pickle

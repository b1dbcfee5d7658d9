// What the policy knows about global names. Nothing here imports anything: a name is only
// compared with fixed tables. The allowlist is torch 2.x's weights_only allowlist plus the
// plain-data classes the lifter converts (numpy scalars, Namespace, ...); the danger list only
// raises the severity of a finding, it never decides what is kept.
#pragma once
#include <string>

#include "modelcdr/finding.hpp"

namespace modelcdr::cdr {

// True when the lifter knows how to turn a use of this global into plain data or a tensor.
bool is_known_global(const std::string& module, const std::string& name);

// True for torch dtype globals ("torch", "float32").
bool is_torch_dtype(const std::string& module, const std::string& name);

// Severity of referencing a global that is not known: critical for names that run code,
// reach the OS, the network, or the interpreter (os, subprocess, builtins.eval, ...).
Severity unknown_global_severity(const std::string& module, const std::string& name);

}  // namespace modelcdr::cdr

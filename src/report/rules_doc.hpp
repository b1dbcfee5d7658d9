// docs/RULES.md, rendered from the rule catalogue (src/report/rules.def). The committed file
// must equal rules_markdown(): a unit test compares them (regenerate with
// `build/modelcdr-lab rules-doc > docs/RULES.md`).
#pragma once
#include <string>

namespace modelcdr::report {

std::string rules_markdown();

}  // namespace modelcdr::report

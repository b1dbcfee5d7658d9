// The one globals table (src/pickle/globals.def): its rows are unique, the emitter's vocabulary
// and the class registry come from it, and no (module, name) global is named in the code
// outside it (a new list of globals somewhere else fails here).
#include "pickle/globals.hpp"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>

#include "cdr/class_registry.hpp"
#include "pickle/pickle_emitter.hpp"

using namespace modelcdr;
namespace fs = std::filesystem;

namespace {

std::string read(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

bool follows_colon(const std::string& text, size_t pos) {
  while (pos > 0 && text[pos - 1] == ' ') --pos;
  return pos > 0 && text[pos - 1] == ':';
}

bool in_table(const std::string& module, const std::string& name) {
  for (const auto& r : pickle::globals_table())
    if (r.module == module && r.name == name) return true;
  return false;
}

TEST(GlobalsTable, RowsAreUniqueAndFeedEveryUser) {
  std::set<std::pair<std::string_view, std::string_view>> seen;
  for (const auto& r : pickle::globals_table()) {
    EXPECT_TRUE(seen.insert({r.module, r.name}).second) << r.module << " " << r.name;
    EXPECT_TRUE(r.roles != 0 || r.emit != 0) << r.module << " " << r.name;
  }
  // The emitter's vocabulary is the table's emit rows.
  for (uint8_t g = 0; g <= static_cast<uint8_t>(pickle::EmitGlobal::joblib_array_wrapper); ++g) {
    const auto& n = pickle::emit_global_name(static_cast<pickle::EmitGlobal>(g));
    EXPECT_TRUE(in_table(std::string(n.module), std::string(n.name))) << n.module;
  }
  // The built-in class registry is the table's class rows.
  auto reg = cdr::ClassRegistry::defaults();
  size_t classes = 0;
  for (const auto& r : pickle::globals_table()) classes += (r.roles & pickle::kGRegistry) != 0;
  EXPECT_EQ(reg.size(), classes);
  for (const auto& c : reg.classes()) EXPECT_TRUE(pickle::has_role(c.module, c.name, pickle::kGRegistry)) << c.name;
  EXPECT_TRUE(pickle::has_role("builtins", "eval", pickle::kGDanger));
  EXPECT_FALSE(pickle::has_role("os", "system", ~0));
}

// Ways the code names a global: a brace pair {"module", "Name"} (a table), is_global(node,
// "module", "name"), and `x == "module" && y == "name"` comparisons.
TEST(GlobalsTable, NoGlobalIsNamedOutsideIt) {
  const std::regex brace(R"re(\{"([A-Za-z_][\w.]*)", "([A-Za-z_]\w*)"\})re");
  const std::regex call(R"re(is_global\([^;]*?, "([\w.]+)", "(\w+)"\))re");
  const std::regex compare(R"re(\b\w+(?:\.\w+)? == "([\w.]+)" && \w+(?:\.\w+)? == "(\w+)")re");
  size_t checked = 0;
  for (const auto& e : fs::recursive_directory_iterator(std::string(MODELCDR_SOURCE_DIR) + "/src")) {
    const auto ext = e.path().extension();
    if (ext != ".cpp" && ext != ".hpp") continue;
    const std::string rel = fs::relative(e.path(), MODELCDR_SOURCE_DIR).string();
    const std::string text = read(e.path());
    // Brace pairs are globals only where globals are handled: the readers, the lifter and policy,
    // the emitter. py2_names.cpp is CPython's own Python 2 -> 3 rename table, not a list of
    // globals modelcdr trusts.
    const bool global_code = rel.rfind("src/cdr/", 0) == 0 || rel.rfind("src/pickle/", 0) == 0 ||
                             rel.rfind("src/formats/", 0) == 0;
    for (const auto* re : {&brace, &call, &compare}) {
      if (re == &brace && (!global_code || rel == "src/pickle/py2_names.cpp")) continue;
      for (std::sregex_iterator it(text.begin(), text.end(), *re), end; it != end; ++it) {
        if (re == &brace && follows_colon(text, it->position())) continue;  // for (auto k : {"a", "b"})
        ++checked;
        EXPECT_TRUE(in_table((*it)[1], (*it)[2])) << rel << " names " << (*it)[1] << " " << (*it)[2]
                                                  << " outside src/pickle/globals.def";
      }
    }
  }
  EXPECT_GE(checked, 10u);  // the lifter's is_global calls at least
}

}  // namespace

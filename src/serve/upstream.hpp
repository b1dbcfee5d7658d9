// Pull-through from an upstream Hugging Face-compatible endpoint (upstream.cpp).
#pragma once
#include <memory>
#include <string>

#include "serve/origin.hpp"

namespace modelcdr::serve {
// `cache_dir`: downloads are written below it (tmp/) and removed once built.
std::unique_ptr<Origin> make_upstream(const std::string& url, const std::string& cache_dir);
}  // namespace modelcdr::serve

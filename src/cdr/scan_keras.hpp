// Scan-only grading of Keras models, a format modelcdr does not rebuild (issue 11): an HDF5
// `.h5` file (Keras 2's `model_config` root attribute) or a Keras v3 `.keras` zip (`config.json`).
// Such a file is never `clean`: it gets keras.not-disarmable (unknown), and keras.lambda
// (dangerous) when its config holds a Lambda layer, whose `function` is Python code that Keras
// rebuilds and runs; keras.custom-object for classes imported from outside Keras.
//
// How the HDF5 config is read, and why not with libhdf5: libhdf5 is a large C library with a long
// CVE history on hostile files (heap overflows in its B-tree, fractal-heap and datatype decoders),
// and a scanner that gates uploads reads exactly such files. An attribute is never filtered in
// HDF5 (its value is stored contiguously in the object header, or in the global heap for a
// variable-length string), so the JSON text Keras reads lies in the file as plain bytes. The
// scan is therefore a bounded byte scan: every `{"` that opens a balanced JSON object (strings
// and escapes skipped, no NUL inside) is parsed with the bounded JSON parser (io/bounded_json:
// depth, element count, duplicate keys) and its objects are walked. The one HDF5 place where
// such bytes could be hidden is a fractal heap with an I/O filter (dense attribute storage):
// then no config is found and the file is graded unknown (keras.config-unreadable), never
// clean. Total scan work is bounded by a multiple of the file size.
#pragma once
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "modelcdr/finding.hpp"

namespace modelcdr::cdr {

// When `file` is an HDF5 file (signature at 0 or at 512 * 2^n) or a zip whose root holds a
// Keras `config.json` (`zip_entries`: the names of its entries, empty for a non-zip), appends
// its findings and returns the format name ("hdf5", "keras"); otherwise nullopt, nothing added.
std::optional<std::string> scan_keras(std::span<const uint8_t> file, const std::vector<std::string>& zip_entries,
                                      Findings& findings);

// The HDF5 signature's offset in `file`, if any (0, 512, 1024, 2048, ...).
std::optional<uint64_t> hdf5_signature(std::span<const uint8_t> file);

}  // namespace modelcdr::cdr

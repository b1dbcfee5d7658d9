// What scan still reports about a file it cannot parse (scan only; disarm rejects these files):
// the imports and calls CPython would run in its broken pickle streams (cdr::scan_cpython_view,
// through ReadOptions::salvage), and the pickles inside a zip that is not a checkpoint torch.load
// accepts (picklescan and pickle.load-on-member loaders read them all the same).
#pragma once
#include <cstdint>
#include <span>

#include "modelcdr/finding.hpp"

namespace modelcdr::cdr {

// Every member of the zip `file` (if it is one) that an unpickler could act on, scanned as a
// pickle; members already named in `findings` are skipped. Bounded by the zip reader's limits.
void salvage_zip_members(std::span<const uint8_t> file, Findings& findings);

// A file that sniffed as no known format but that CPython's unpickler would still act on
// (engine::may_unpickle: e.g. a stream that begins with NEWTRUE, or whose PROTO byte was altered),
// scanned as a pickle.
void salvage_unsniffed_pickle(std::span<const uint8_t> file, Findings& findings);

}  // namespace modelcdr::cdr

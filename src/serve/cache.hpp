// The gateway's cache: one folder per key, CACHE/objects/<key>/{data,meta.json,report.json},
// where the key is the SHA-256 of the input's SHA-256 and the rebuild options. An entry is
// built in CACHE/tmp/ and renamed into place whole, so a reader sees a complete entry or none;
// builds of one key are serialised by a lock file (flock, CACHE/locks/<key>.lock), so
// concurrent first requests, in one process or in several sharing the folder, rebuild once.
// Refusals are cached too (they depend only on the input bytes), failures (I/O, a full disk,
// an input that changed while read) never are.
#pragma once
#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "modelcdr/api.hpp"
#include "modelcdr/result.hpp"
#include "serve/origin.hpp"

namespace modelcdr::serve {

struct Entry {
  std::string key;
  std::string dir;        // CACHE/objects/<key>
  bool served = false;    // data is there to serve; otherwise a refusal
  std::string kind;       // "rebuild" (a disarmed model) or "inert" (copied as proven inert)
  std::string verdict;    // clean, removed, inert, refused
  std::string format;     // input format (models) or classification (other files)
  uint64_t size = 0;      // of data
  std::string sha256;     // of data (the ETag)
  std::string input_sha256;
  std::string code, message;  // refusal: X-Error-Code and reason
  uint64_t removed = 0;       // items the rebuild dropped or converted
  std::string data_path() const { return dir + "/data"; }
  std::string report_path() const { return dir + "/report.json"; }
};

struct BuildOptions {
  std::string name;  // the file's name in its repository (format by extension, code checks)
  std::string shown;  // repo/path, for the report
  // A conversion (`?format=`, `serve --convert-bin`): model files are rebuilt as this format
  // whatever their name says, and a shard index is rewritten for the converted shard names.
  // A conversion that would lose data the input holds (convert.dropped) is refused.
  std::optional<OutputFormat> to;
  // For a reader that streams the rebuild while it is written (serve/stream.hpp): told the
  // build's private folder as soon as it exists, and the size of `data` once the bytes written
  // there are a complete rebuild that will be served (before the cache entry is committed).
  std::function<void(const std::string& dir)> on_build_dir;
  std::function<void(uint64_t size)> on_data_final;
};

class Cache {
 public:
  explicit Cache(std::string dir) : dir_(std::move(dir)) {}
  Status init();  // creates objects/, tmp/, locks/
  const std::string& dir() const { return dir_; }
  static std::string key_for(const std::string& input_sha256, const BuildOptions& o);

  std::optional<Entry> find(const std::string& key) const;
  // The entry for `key`, building it from `in` under the key's lock when it is missing.
  // `built`: set when this call built it.
  Result<Entry> get_or_build(const std::string& key, const Input& in, const BuildOptions& o, bool* built = nullptr);

  struct Stats {
    uint64_t entries = 0, bytes = 0, refused = 0;
  };
  Stats stats() const;

 private:
  Result<Entry> build(const std::string& key, const Input& in, const BuildOptions& o);
  std::string dir_;
};

// An exclusive flock on a lock file for as long as it lives (between threads and processes:
// each KeyLock opens the file itself, and flock locks belong to the open file).
class KeyLock {
 public:
  explicit KeyLock(const std::string& path);
  ~KeyLock();
  KeyLock(const KeyLock&) = delete;
  KeyLock& operator=(const KeyLock&) = delete;
  bool ok() const { return fd_ >= 0; }

 private:
  int fd_;
};

// Lets the tests force a failed write of a cache entry (MODELCDR_SERVE_FAIL_WRITES=1 in the
// environment: a disk that is full), where a real small file system cannot be mounted.
bool forced_write_failure();

}  // namespace modelcdr::serve

// Format sniffing, in one place. The decision follows what torch.load does for the same bytes
// (docs/FORMATS.md §0): a file that *starts* with a zip local header is a zip; otherwise the legacy
// magic-number pickle; otherwise tar (ustar magic at 257); otherwise a bare pickle. Files
// that are none of these are named (7z, gzip, ...) only so the error message can say so.
#pragma once
#include <cstdint>
#include <span>
#include <string>

namespace modelcdr::container {

enum class Format {
  torch_zip,      // PK\3\4 at offset 0; refined later (torchscript / npz) by entry names
  torchscript,
  npz,
  torch_legacy,   // protocol-2 pickle of the legacy magic number first
  torch_tar,
  pickle,         // a bare pickle stream
  npy,
  safetensors,
  zip_not_at_start,  // a zip whose first local header is not at offset 0 (polyglot)
  seven_zip, gzip, bzip2, xz, zlib, lz4, empty, unknown,
  joblib,   // a pickle stream with joblib NumpyArrayWrapper arrays inline (set by the reader)
  lzma,     // lzma-alone stream (joblib compress='lzma'); "ZF0x" joblib < 0.10 files sniff as zlib
};

const char* format_name(Format f);
Format sniff(std::span<const uint8_t> head, uint64_t file_size);

}  // namespace modelcdr::container

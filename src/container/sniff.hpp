// The formats modelcdr tells apart. Each value is one row of the format table
// (src/formats/registry.cpp), which holds everything else about it: how its first bytes are
// recognised (the sniff bid), its reader, its writer, its --to name, its file extensions and
// its fuzz target. The decision follows what torch.load does for the same bytes
// (docs/FORMATS.md §0). Files that are none of the readable formats are named (7z, gzip, ...)
// only so the error message can say so.
#pragma once

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

}  // namespace modelcdr::container

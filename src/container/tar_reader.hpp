// TarReader: a strict reader for the POSIX ustar/PAX archives of PyTorch's oldest checkpoint
// format (docs/FORMATS.md §3.3: members sys_info, pickle, storages, tensors). Python's tarfile --
// what torch.load uses -- quietly stops at a damaged header, follows links in extractfile()
// and returns the *last* member of a duplicated name; each of those is a place where a
// scanner and the loader could see different bytes, so each is a finding or an error here.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "modelcdr/finding.hpp"
#include "modelcdr/result.hpp"

namespace modelcdr::container {

struct TarMember {
  std::string name;          // PAX path / ustar prefix + name; directories without trailing '/'
  uint64_t data_offset = 0;  // file offset of the member's data
  uint64_t size = 0;
  char typeflag = '0';       // '0' regular (normalised from '\0' and '7'), '5' directory, others as found
};

struct TarArchive {
  std::vector<TarMember> members;  // archive order; only regular files and directories
  const TarMember* find(const std::string& name) const {
    // Python's tarfile returns the last member of a name; so do we.
    for (auto it = members.rbegin(); it != members.rend(); ++it)
      if (it->name == name) return &*it;
    return nullptr;
  }
};

struct TarLimits {
  uint64_t max_members = 100'000;
  uint64_t max_pax_bytes = 1 << 20;  // one extended header's data
  uint64_t max_name_bytes = 4096;
};

// Rule ids "tar.*". Findings: tar.non-regular (high; links, devices, fifos, unknown types),
// tar.duplicate-name (high), tar.unsafe-name (high), tar.trailing-bytes (medium),
// tar.pax-global (medium). Errors: tar.bad-checksum, tar.bad-magic, tar.bad-number,
// tar.bad-pax, tar.truncated, tar.too-many-members, tar.bad-member.
Result<TarArchive> read_tar(std::span<const uint8_t> file, Findings& findings, const TarLimits& limits = {});

// The bytes of a member (a span into `file`).
Result<std::span<const uint8_t>> tar_member_bytes(std::span<const uint8_t> file, const TarMember& member);

}  // namespace modelcdr::container

// The sparse invariant checker (cdr/sparse_check.hpp) on in-memory models: each broken
// invariant of torch's _validate_sparse_coo_tensor_args / _validate_sparse_compressed_tensor_args
// is named, valid tensors of every layout pass, and the finding names the tensor by its path.
#include <gtest/gtest.h>

#include <cstring>

#include "cdr/sparse_check.hpp"

using namespace modelcdr;
using model::DType;
using model::Tensor;
using model::TensorKind;

namespace {

// A model that owns its storages; each part is a contiguous dense tensor.
struct Builder {
  model::Model m;

  model::TensorId dense(const std::vector<int64_t>& shape, DType dtype, const std::vector<int64_t>& data) {
    uint32_t esz = model::dtype_info(dtype).element_size;
    std::vector<uint8_t> bytes(data.size() * esz);
    for (size_t i = 0; i < data.size(); ++i) {
      if (dtype == DType::i64) std::memcpy(&bytes[i * 8], &data[i], 8);
      else if (dtype == DType::i32) { int32_t v = static_cast<int32_t>(data[i]); std::memcpy(&bytes[i * 4], &v, 4); }
      else if (dtype == DType::f32) { float v = static_cast<float>(data[i]); std::memcpy(&bytes[i * 4], &v, 4); }
    }
    model::Storage s;
    s.dtype = dtype;
    s.set_owned(std::move(bytes));
    s.source = "archive/data/" + std::to_string(m.storages.size());
    m.storages.push_back(std::move(s));
    Tensor t;
    t.dtype = dtype;
    t.storage = static_cast<model::StorageId>(m.storages.size() - 1);
    t.shape = shape;
    t.stride.assign(shape.size(), 1);
    for (size_t i = shape.size(); i-- > 1;) t.stride[i - 1] = t.stride[i] * shape[i];
    m.tensors.push_back(t);
    return static_cast<model::TensorId>(m.tensors.size() - 1);
  }
  model::TensorId ints(const std::vector<int64_t>& shape, const std::vector<int64_t>& data, DType d = DType::i64) {
    return dense(shape, d, data);
  }
  model::TensorId floats(const std::vector<int64_t>& shape) {
    int64_t n = 1;
    for (auto s : shape) n *= s;
    return dense(shape, DType::f32, std::vector<int64_t>(static_cast<size_t>(n), 1));
  }
  // The sparse tensor, reachable from the root as {"sp": tensor}.
  const Tensor& sparse(TensorKind kind, model::TensorId idx, model::TensorId plain, model::TensorId values,
                       std::vector<int64_t> size, std::optional<bool> coalesced = std::nullopt) {
    Tensor t;
    t.kind = kind;
    t.dtype = DType::f32;
    t.sparse_indices = idx;
    t.sparse_plain = plain;
    t.sparse_values = values;
    t.shape = std::move(size);
    t.sparse_coalesced = coalesced;
    m.tensors.push_back(t);
    model::Value key, val, root;
    key.kind = model::ValueKind::string;
    key.text = "sp";
    val.kind = model::ValueKind::tensor;
    val.tensor = static_cast<model::TensorId>(m.tensors.size() - 1);
    root.kind = model::ValueKind::dict;
    root.entries.push_back({m.add(key), m.add(val)});
    m.root = m.add(root);
    return m.tensors.back();
  }
};

std::string why(Builder& b, const Tensor& t) { return cdr::sparse_violation(b.m, t).value_or(""); }

std::string coo(const std::vector<int64_t>& ishape, const std::vector<int64_t>& idx, const std::vector<int64_t>& vshape,
                std::vector<int64_t> size, std::optional<bool> coalesced = std::nullopt, DType d = DType::i64) {
  Builder b;
  auto i = b.ints(ishape, idx, d);
  auto v = b.floats(vshape);
  return why(b, b.sparse(TensorKind::sparse_coo, i, 0, v, std::move(size), coalesced));
}

std::string compressed(TensorKind k, const std::vector<int64_t>& cshape, const std::vector<int64_t>& c,
                       const std::vector<int64_t>& pshape, const std::vector<int64_t>& p,
                       const std::vector<int64_t>& vshape, std::vector<int64_t> size, DType cd = DType::i64,
                       DType pd = DType::i64) {
  Builder b;
  auto ci = b.ints(cshape, c, cd);
  auto pi = b.ints(pshape, p, pd);
  auto v = b.floats(vshape);
  return why(b, b.sparse(k, ci, pi, v, std::move(size)));
}

std::string csr(const std::vector<int64_t>& crow, const std::vector<int64_t>& col, std::vector<int64_t> size) {
  return compressed(TensorKind::sparse_csr, {static_cast<int64_t>(crow.size())}, crow,
                    {static_cast<int64_t>(col.size())}, col, {static_cast<int64_t>(col.size())}, std::move(size));
}

}  // namespace

TEST(SparseCheck, ValidTensorsOfEveryLayoutPass) {
  EXPECT_EQ(coo({1, 3}, {0, 3, 1}, {3}, {4}), "");
  EXPECT_EQ(coo({1, 2}, {1, 1}, {2}, {4}, false), "");  // uncoalesced duplicates are legal
  EXPECT_EQ(coo({2, 3}, {0, 1, 1, 2, 0, 2}, {3}, {2, 3}, true), "");
  EXPECT_EQ(coo({1, 2}, {0, 3}, {2, 5}, {4, 5}), "");  // hybrid: one dense dim
  EXPECT_EQ(coo({1, 1}, {2}, {}, {4}), "");           // 0-dim values expand to [1]
  EXPECT_EQ(csr({0, 2, 3}, {0, 2, 1}, {2, 3}), "");
  EXPECT_EQ(csr({0, 0, 0}, {}, {2, 3}), "");
  EXPECT_EQ(compressed(TensorKind::sparse_csc, {4}, {0, 1, 1, 3}, {3}, {1, 0, 1}, {3}, {2, 3}), "");
  EXPECT_EQ(compressed(TensorKind::sparse_bsr, {3}, {0, 1, 2}, {2}, {1, 0}, {2, 2, 2}, {4, 4}), "");
  EXPECT_EQ(compressed(TensorKind::sparse_bsc, {3}, {0, 2, 2}, {2}, {0, 1}, {2, 2, 2}, {4, 4}), "");
  EXPECT_EQ(compressed(TensorKind::sparse_csr, {2, 3}, {0, 1, 2, 0, 2, 2}, {2, 2}, {0, 1, 0, 2}, {2, 2}, {2, 2, 3},
                       DType::i32, DType::i32),
            "");  // batched, int32
}

TEST(SparseCheck, CooInvariants) {
  {
    EXPECT_NE(coo({1, 2}, {0, 9}, {2}, {4}).find("found index 9"), std::string::npos);
    EXPECT_NE(coo({1, 2}, {0, -1}, {2}, {4}).find("negative index -1"), std::string::npos);
    EXPECT_NE(coo({2, 2}, {0, 1, 0, 3}, {2}, {2, 3}).find("for dim 1, size is 3"), std::string::npos);
    EXPECT_NE(coo({1, 2}, {0, 1}, {2}, {4}, std::nullopt, DType::i32).find("int64"), std::string::npos);
    EXPECT_NE(coo({2}, {0, 1}, {2}, {4}).find("sparse_dim x nnz"), std::string::npos);
    EXPECT_NE(coo({1, 2}, {0, 1}, {3}, {4}).find("same nnz"), std::string::npos);
    EXPECT_NE(coo({1, 2}, {0, 1}, {2}, {4, 4}).find("number of dimensions"), std::string::npos);
    EXPECT_NE(coo({1, 2}, {0, 1}, {2, 3}, {4, 5}).find("values has incorrect size"), std::string::npos);
    EXPECT_NE(coo({1, 2}, {2, 0}, {2}, {4}, true).find("is_coalesced"), std::string::npos);
    EXPECT_NE(coo({1, 2}, {1, 1}, {2}, {4}, true).find("is_coalesced"), std::string::npos);
    EXPECT_NE(coo({1, 2}, {0, 1}, {2}, {-4}).find("negative dimension"), std::string::npos);
  }
}

TEST(SparseCheck, CompressedInvariants) {
  auto has = [](const std::string& s, const char* w) { return s.find(w) != std::string::npos; };
  EXPECT_TRUE(has(csr({1, 2, 3}, {0, 1, 2}, {2, 3}), "[..., 0] == 0"));
  EXPECT_TRUE(has(csr({0, 2, 1, 3}, {0, 1, 2}, {3, 3}), "crow_indices[..., 1:]"));
  EXPECT_TRUE(has(csr({0, 4, 4}, {0, 1, 2, 2}, {2, 3}), "<= ncols"));
  EXPECT_TRUE(has(csr({0, 1, 2}, {0, 1, 2}, {2, 3}), "== nnz"));
  EXPECT_TRUE(has(csr({0, 2, 3}, {0, 1}, {2, 3}), "== nnz"));
  EXPECT_TRUE(has(csr({0, 1, 2, 2}, {0, 1}, {2, 3}), "shape[-1]"));
  EXPECT_TRUE(has(csr({0, 1, 2}, {0, 7}, {2, 3}), "col_indices < ncols"));
  EXPECT_TRUE(has(csr({0, 1, 2}, {0, -2}, {2, 3}), "col_indices < ncols"));
  EXPECT_TRUE(has(csr({0, 2, 2}, {2, 0}, {2, 3}), "sorted and distinct"));
  EXPECT_TRUE(has(csr({0, 2, 2}, {1, 1}, {2, 3}), "sorted and distinct"));
  EXPECT_TRUE(has(compressed(TensorKind::sparse_csr, {3}, {0, 1, 2}, {2}, {0, 1}, {2}, {2, 3}, DType::i32),
                  "same dtype"));
  EXPECT_TRUE(has(compressed(TensorKind::sparse_csr, {3}, {0, 1, 2}, {2}, {0, 1}, {2}, {2, 3}, DType::i16, DType::i16),
                  "Int or Long"));
  EXPECT_TRUE(has(compressed(TensorKind::sparse_csr, {3}, {0, 1, 2}, {2}, {0, 1}, {3}, {2, 3}), "nnz"));
  EXPECT_TRUE(has(compressed(TensorKind::sparse_csr, {3}, {0, 1, 2}, {1, 2}, {0, 1}, {2}, {2, 3}), "dimensionalities"));
  EXPECT_TRUE(has(compressed(TensorKind::sparse_csr, {1, 3}, {0, 1, 2}, {1, 2}, {0, 1}, {1, 2}, {2, 2, 3}),
                  "batch dimensions"));
  EXPECT_TRUE(has(compressed(TensorKind::sparse_csr, {2, 3}, {0, 1, 2, 0, 1, 2}, {2, 2}, {0, 1, 0, 5}, {2, 2}, {2, 2, 3}),
                  "col_indices < ncols"));  // the second batch
  EXPECT_TRUE(has(compressed(TensorKind::sparse_csc, {4}, {0, 1, 2, 2}, {2}, {0, 4}, {2}, {2, 3}), "row_indices < nrows"));
  EXPECT_TRUE(has(compressed(TensorKind::sparse_csc, {4}, {0, 1, 1, 1}, {2}, {0, 1}, {2}, {2, 3}), "== nnz"));
  EXPECT_TRUE(has(compressed(TensorKind::sparse_bsr, {3}, {0, 1, 2}, {2}, {0, 2}, {2, 2, 2}, {4, 4}), "col_indices < ncols"));
  EXPECT_TRUE(has(compressed(TensorKind::sparse_bsr, {3}, {0, 1, 2}, {2}, {0, 1}, {2, 2, 2}, {4, 5}), "divisible"));
  EXPECT_TRUE(has(compressed(TensorKind::sparse_bsr, {3}, {0, 0, 0}, {0}, {}, {0, 0, 2}, {4, 4}), "blocksize"));
  EXPECT_TRUE(has(compressed(TensorKind::sparse_bsc, {3}, {0, 1, 2}, {2}, {0, 3}, {2, 2, 2}, {4, 4}), "row_indices < nrows"));
}

TEST(SparseCheck, NonContiguousIndicesAreReadThroughTheirStrides) {
  // indices [2, 2] stored transposed (stride (1, 2)): logical [[0, 1], [2, 0]] lies as 0 2 1 0.
  Builder b;
  auto i = b.ints({2, 2}, {0, 2, 1, 0});
  b.m.tensors[i].stride = {1, 2};
  auto v = b.floats({2});
  EXPECT_EQ(why(b, b.sparse(TensorKind::sparse_coo, i, 0, v, {2, 3})), "");
  Builder c;
  auto j = c.ints({2, 2}, {0, 3, 1, 0});  // logical [[0, 1], [3, 0]]: 3 is past dim 1's size 3
  c.m.tensors[j].stride = {1, 2};
  auto w = c.floats({2});
  EXPECT_NE(why(c, c.sparse(TensorKind::sparse_coo, j, 0, w, {2, 3})).find("for dim 1"), std::string::npos);
}

TEST(SparseCheck, FindingNamesTheTensorAndTheRule) {
  Builder b;
  auto i = b.ints({1, 2}, {0, 9});
  auto v = b.floats({2});
  b.sparse(TensorKind::sparse_coo, i, 0, v, {4});
  b.ints({3}, {0, 1, 2});  // a dense tensor: not checked
  Findings out;
  EXPECT_EQ(cdr::check_sparse_tensors(b.m, out), 1u);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].rule, Rule::cdr_sparse_invalid);
  EXPECT_EQ(out[0].severity, Severity::high);
  EXPECT_NE(out[0].message.find("'sp'"), std::string::npos) << out[0].message;
  EXPECT_NE(out[0].message.find("torch.sparse_coo"), std::string::npos) << out[0].message;
  EXPECT_EQ(out[0].entry, "archive/data/0");
  EXPECT_EQ(file_verdict(out), Verdict::dangerous);
}

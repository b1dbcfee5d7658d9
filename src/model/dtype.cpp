#include <array>

#include "modelcdr/model.hpp"

namespace modelcdr::model {

namespace {
// Storage class names are the legacy typed-storage names torch writes (docs/FORMATS.md §2.5).
constexpr std::array<DTypeInfo, 32> kTable{{
    {DType::f64, "float64", "DoubleStorage", 8, true},
    {DType::f32, "float32", "FloatStorage", 4, true},
    {DType::f16, "float16", "HalfStorage", 2, true},
    {DType::bf16, "bfloat16", "BFloat16Storage", 2, true},
    {DType::c64, "complex64", "ComplexFloatStorage", 8, false},
    {DType::c128, "complex128", "ComplexDoubleStorage", 16, false},
    {DType::i64, "int64", "LongStorage", 8, false},
    {DType::i32, "int32", "IntStorage", 4, false},
    {DType::i16, "int16", "ShortStorage", 2, false},
    {DType::i8, "int8", "CharStorage", 1, false},
    {DType::u8, "uint8", "ByteStorage", 1, false},
    {DType::boolean, "bool", "BoolStorage", 1, false},
    {DType::qint8, "qint8", "QInt8Storage", 1, false},
    {DType::quint8, "quint8", "QUInt8Storage", 1, false},
    {DType::qint32, "qint32", "QInt32Storage", 4, false},
    {DType::quint4x2, "quint4x2", "QUInt4x2Storage", 1, false},
    {DType::quint2x4, "quint2x4", "QUInt2x4Storage", 1, false},
    {DType::u16, "uint16", nullptr, 2, false},
    {DType::u32, "uint32", nullptr, 4, false},
    {DType::u64, "uint64", nullptr, 8, false},
    {DType::f8_e4m3fn, "float8_e4m3fn", nullptr, 1, true},
    {DType::f8_e5m2, "float8_e5m2", nullptr, 1, true},
    {DType::f8_e4m3fnuz, "float8_e4m3fnuz", nullptr, 1, true},
    {DType::f8_e5m2fnuz, "float8_e5m2fnuz", nullptr, 1, true},
    {DType::c32, "complex32", nullptr, 4, false},
    // not is_float: no transform may treat an exponent-only or packed format as IEEE floats
    {DType::f8_e8m0fnu, "float8_e8m0fnu", nullptr, 1, false},
    {DType::f4_e2m1fn_x2, "float4_e2m1fn_x2", nullptr, 1, false},
    {DType::bits8, "bits8", nullptr, 1, false},
    {DType::bits16, "bits16", nullptr, 2, false},
    {DType::bits1x8, "bits1x8", nullptr, 1, false},
    {DType::bits2x4, "bits2x4", nullptr, 1, false},
    {DType::bits4x2, "bits4x2", nullptr, 1, false},
}};
}  // namespace

const DTypeInfo& dtype_info(DType d) {
  for (const auto& e : kTable)
    if (e.dtype == d) return e;
  return kTable[1];
}

std::optional<DType> dtype_from_storage_class(const std::string& class_name) {
  for (const auto& e : kTable)
    if (e.storage_class && class_name == e.storage_class) return e.dtype;
  return std::nullopt;
}

std::optional<DType> dtype_from_name(const std::string& torch_name) {
  for (const auto& e : kTable)
    if (torch_name == e.name) return e.dtype;
  // Aliases torch also accepts as attribute names.
  if (torch_name == "float" ) return DType::f32;
  if (torch_name == "double") return DType::f64;
  if (torch_name == "half") return DType::f16;
  if (torch_name == "long") return DType::i64;
  if (torch_name == "int") return DType::i32;
  if (torch_name == "short") return DType::i16;
  if (torch_name == "cfloat") return DType::c64;
  if (torch_name == "cdouble") return DType::c128;
  if (torch_name == "chalf") return DType::c32;
  return std::nullopt;
}

}  // namespace modelcdr::model

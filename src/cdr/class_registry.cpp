#include "cdr/class_registry.hpp"

#include "modelcdr/api.hpp"

#include <cctype>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>

namespace modelcdr::cdr {

namespace {

struct Entry {
  const char* module;
  const char* name;
  Construct construct;
  const char* why;
  bool tuple_state = false;
};

// Every entry is documented in docs/REGISTRY.md. Criteria: the class's pickled state (its
// __getstate__ / __dict__) is hyper-parameters (numbers, strings, None, bools, tuples, dicts),
// fitted numpy arrays and numpy scalars, and other registry objects; its __setstate__ (if any)
// only checks and stores that state; instantiating it runs no user-supplied code.
constexpr const char* kEst = "scikit-learn estimator: hyper-parameters and fitted numpy arrays in __dict__";
const Entry kDefaults[] = {
    {"sklearn.linear_model._base", "LinearRegression", Construct::newobj, kEst},
    {"sklearn.linear_model._logistic", "LogisticRegression", Construct::newobj, kEst},
    {"sklearn.linear_model._ridge", "Ridge", Construct::newobj, kEst},
    {"sklearn.linear_model._ridge", "RidgeClassifier", Construct::newobj, kEst},
    {"sklearn.linear_model._coordinate_descent", "Lasso", Construct::newobj, kEst},
    {"sklearn.linear_model._coordinate_descent", "ElasticNet", Construct::newobj, kEst},
    {"sklearn.preprocessing._data", "StandardScaler", Construct::newobj, kEst},
    {"sklearn.preprocessing._data", "MinMaxScaler", Construct::newobj, kEst},
    {"sklearn.preprocessing._data", "MaxAbsScaler", Construct::newobj, kEst},
    {"sklearn.preprocessing._data", "RobustScaler", Construct::newobj, kEst},
    {"sklearn.preprocessing._data", "Normalizer", Construct::newobj, kEst},
    {"sklearn.preprocessing._data", "Binarizer", Construct::newobj, kEst},
    {"sklearn.preprocessing._label", "LabelEncoder", Construct::newobj, kEst},
    {"sklearn.impute._base", "SimpleImputer", Construct::newobj, kEst},
    {"sklearn.decomposition._pca", "PCA", Construct::newobj, kEst},
    {"sklearn.decomposition._truncated_svd", "TruncatedSVD", Construct::newobj, kEst},
    {"sklearn.naive_bayes", "GaussianNB", Construct::newobj, kEst},
    {"sklearn.naive_bayes", "MultinomialNB", Construct::newobj, kEst},
    {"sklearn.naive_bayes", "BernoulliNB", Construct::newobj, kEst},
    {"sklearn.svm._classes", "SVC", Construct::newobj, kEst},
    {"sklearn.svm._classes", "SVR", Construct::newobj, kEst},
    {"sklearn.svm._classes", "LinearSVC", Construct::newobj, kEst},
    {"sklearn.svm._classes", "LinearSVR", Construct::newobj, kEst},
    {"sklearn.dummy", "DummyClassifier", Construct::newobj, kEst},
    {"sklearn.dummy", "DummyRegressor", Construct::newobj, kEst},
    {"sklearn.pipeline", "Pipeline", Construct::newobj, "steps: a list of (name, registry estimator) tuples"},
    {"sklearn.tree._classes", "DecisionTreeClassifier", Construct::newobj, kEst},
    {"sklearn.tree._classes", "DecisionTreeRegressor", Construct::newobj, kEst},
    {"sklearn.ensemble._forest", "RandomForestClassifier", Construct::newobj, kEst},
    {"sklearn.ensemble._forest", "RandomForestRegressor", Construct::newobj, kEst},
    {"sklearn.ensemble._forest", "ExtraTreesClassifier", Construct::newobj, kEst},
    {"sklearn.ensemble._forest", "ExtraTreesRegressor", Construct::newobj, kEst},
    {"sklearn.tree._classes", "ExtraTreeClassifier", Construct::newobj, kEst},
    {"sklearn.tree._classes", "ExtraTreeRegressor", Construct::newobj, kEst},
    {"sklearn.tree._tree", "Tree", Construct::reduce,
     "Tree(n_features, n_classes, n_outputs) allocates; __setstate__ checks and copies the nodes/values arrays"},
    // issue 12: what people commonly save beyond the first table
    {"sklearn.linear_model._stochastic_gradient", "SGDClassifier", Construct::newobj, kEst},
    {"sklearn.linear_model._stochastic_gradient", "SGDRegressor", Construct::newobj, kEst},
    {"sklearn.linear_model._perceptron", "Perceptron", Construct::newobj, kEst},
    {"sklearn.linear_model._bayes", "BayesianRidge", Construct::newobj, kEst},
    {"sklearn.linear_model._coordinate_descent", "LassoCV", Construct::newobj, kEst},
    {"sklearn.linear_model._logistic", "LogisticRegressionCV", Construct::newobj, kEst},
    {"sklearn.naive_bayes", "ComplementNB", Construct::newobj, kEst},
    {"sklearn.naive_bayes", "CategoricalNB", Construct::newobj, kEst},
    {"sklearn.neighbors._classification", "KNeighborsClassifier", Construct::newobj, kEst},
    {"sklearn.neighbors._regression", "KNeighborsRegressor", Construct::newobj, kEst},
    {"sklearn.neighbors._unsupervised", "NearestNeighbors", Construct::newobj, kEst},
    {"sklearn.neighbors._kd_tree", "KDTree", Construct::newobj,
     "newObj(KDTree) + __setstate__ of a tuple: data/index/node arrays, ints, its distance metric, sample weights", true},
    {"sklearn.neighbors._ball_tree", "BallTree", Construct::newobj,
     "newObj(BallTree) + __setstate__ of a tuple: data/index/node arrays, ints, its distance metric, sample weights", true},
    {"sklearn.metrics._dist_metrics", "EuclideanDistance64", Construct::newobj, "__setstate__ of (p, vec, mat)", true},
    {"sklearn.metrics._dist_metrics", "ManhattanDistance64", Construct::newobj, "__setstate__ of (p, vec, mat)", true},
    {"sklearn.metrics._dist_metrics", "ChebyshevDistance64", Construct::newobj, "__setstate__ of (p, vec, mat)", true},
    {"sklearn.metrics._dist_metrics", "MinkowskiDistance64", Construct::newobj, "__setstate__ of (p, vec, mat)", true},
    {"sklearn.cluster._kmeans", "KMeans", Construct::newobj, kEst},
    {"sklearn.cluster._kmeans", "MiniBatchKMeans", Construct::newobj, kEst},
    {"sklearn.preprocessing._encoders", "OneHotEncoder", Construct::newobj, kEst},
    {"sklearn.preprocessing._encoders", "OrdinalEncoder", Construct::newobj, kEst},
    {"sklearn.preprocessing._label", "LabelBinarizer", Construct::newobj, kEst},
    {"sklearn.preprocessing._polynomial", "PolynomialFeatures", Construct::newobj, kEst},
    {"sklearn.feature_extraction.text", "CountVectorizer", Construct::newobj, "vocabulary_ (a str -> int dict), stop words, params"},
    {"sklearn.feature_extraction.text", "TfidfVectorizer", Construct::newobj, "CountVectorizer's state + a TfidfTransformer"},
    {"sklearn.feature_extraction.text", "TfidfTransformer", Construct::newobj, "idf_ array and params"},
    {"sklearn.compose._column_transformer", "ColumnTransformer", Construct::newobj,
     "transformers: (name, registry estimator or 'drop'/'passthrough', columns) tuples"},
    {"sklearn.pipeline", "FeatureUnion", Construct::newobj, "transformer_list: (name, registry estimator) tuples"},
    {"sklearn.decomposition._nmf", "NMF", Construct::newobj, kEst},
    {"sklearn.svm._classes", "NuSVC", Construct::newobj, kEst},
    {"sklearn.svm._classes", "NuSVR", Construct::newobj, kEst},
    // SGD's Cython loss objects pickle as Loss(threshold/epsilon/c): the constructor stores the number
    {"sklearn.linear_model._sgd_fast", "Hinge", Construct::reduce, "Hinge(threshold) stores a float"},
    {"sklearn.linear_model._sgd_fast", "SquaredHinge", Construct::reduce, "SquaredHinge(threshold) stores a float"},
    {"sklearn.linear_model._sgd_fast", "ModifiedHuber", Construct::reduce, "ModifiedHuber() has no state"},
    {"sklearn.linear_model._sgd_fast", "SquaredLoss", Construct::reduce, "SquaredLoss() has no state"},
    {"sklearn.linear_model._sgd_fast", "Huber", Construct::reduce, "Huber(c) stores a float"},
    {"sklearn.linear_model._sgd_fast", "EpsilonInsensitive", Construct::reduce, "EpsilonInsensitive(epsilon) stores a float"},
    {"builtins", "slice", Construct::reduce, "slice(start, stop, step) of ints or None (the lifter checks the arguments)"},
    // numpy scalar types as hyper-parameters (OneHotEncoder(dtype=np.float64), vectorizers)
    {"numpy", "float64", Construct::type_ref, "a numpy scalar type named as a dtype, never instantiated"},
    {"numpy", "float32", Construct::type_ref, "a numpy scalar type named as a dtype, never instantiated"},
    {"numpy", "int64", Construct::type_ref, "a numpy scalar type named as a dtype, never instantiated"},
    {"numpy", "int32", Construct::type_ref, "a numpy scalar type named as a dtype, never instantiated"},
    {"numpy", "bool_", Construct::type_ref, "a numpy scalar type named as a dtype, never instantiated"},
};

bool identifier(std::string_view s) {
  if (s.empty() || std::isdigit(static_cast<unsigned char>(s[0]))) return false;
  for (char c : s)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_')) return false;
  return true;
}

}  // namespace

ClassRegistry ClassRegistry::defaults() {
  ClassRegistry r;
  for (const auto& e : kDefaults) r.classes_.push_back(RegistryClass{e.module, e.name, e.construct, e.why, false, e.tuple_state});
  return r;
}

ClassRegistry& ClassRegistry::active() {
  static ClassRegistry r = defaults();
  return r;
}

std::optional<uint32_t> ClassRegistry::find(std::string_view module, std::string_view name) const {
  for (size_t i = 0; i < classes_.size(); ++i)
    if (classes_[i].module == module && classes_[i].name == name) return static_cast<uint32_t>(i);
  return std::nullopt;
}

Status ClassRegistry::allow(const std::string& dotted, Construct construct) {
  auto dot = dotted.rfind('.');
  if (dot == std::string::npos || dot == 0 || dot + 1 == dotted.size())
    return make_error(Rule::policy_bad_class, "'" + dotted + "' is not 'module.Class'");
  std::string module = dotted.substr(0, dot), name = dotted.substr(dot + 1);
  std::string_view rest = module;
  while (true) {
    auto d = rest.find('.');
    if (!identifier(rest.substr(0, d)))
      return make_error(Rule::policy_bad_class, "'" + dotted + "' is not a dotted Python name (wildcards are not accepted)");
    if (d == std::string_view::npos) break;
    rest = rest.substr(d + 1);
  }
  if (!identifier(name))
    return make_error(Rule::policy_bad_class, "'" + dotted + "' is not a dotted Python name (wildcards are not accepted)");
  if (find(module, name)) return ok_status();
  classes_.push_back(RegistryClass{module, name, construct, "allowed by the user's policy file", true});
  return ok_status();
}

Status ClassRegistry::load_policy_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) return make_error(Rule::policy_unreadable, "cannot read policy file '" + path + "'");
  std::stringstream ss;
  ss << in.rdbuf();
  nlohmann::json doc = nlohmann::json::parse(ss.str(), nullptr, false);
  if (doc.is_discarded() || !doc.is_object()) return make_error(Rule::policy_bad_json, "policy file is not a JSON object");
  for (const char* key : {"allow_classes", "allow_reduce"}) {
    if (!doc.contains(key)) continue;
    const auto& list = doc[key];
    if (!list.is_array()) return make_error(Rule::policy_bad_json, std::string("'") + key + "' is not a list of strings");
    for (const auto& item : list) {
      if (!item.is_string()) return make_error(Rule::policy_bad_json, std::string("'") + key + "' holds a non-string");
      MCDR_TRY(allow(item.get<std::string>(), std::string(key) == "allow_reduce" ? Construct::reduce : Construct::newobj));
    }
  }
  return ok_status();
}

std::optional<NumpyCode> parse_numpy_code(std::string_view code) {
  if (code.size() < 2) return std::nullopt;
  NumpyCode c;
  c.kind = code[0];
  uint64_t n = 0;
  for (char d : code.substr(1)) {
    if (d < '0' || d > '9' || n > (1u << 30)) return std::nullopt;
    n = n * 10 + static_cast<uint64_t>(d - '0');
  }
  using model::DType;
  switch (c.kind) {
    case 'b':
      if (n != 1) return std::nullopt;
      c.dtype = DType::boolean;
      break;
    case 'i':
      if (n == 1) c.dtype = DType::i8; else if (n == 2) c.dtype = DType::i16;
      else if (n == 4) c.dtype = DType::i32; else if (n == 8) c.dtype = DType::i64;
      else return std::nullopt;
      break;
    case 'u':
      if (n == 1) c.dtype = DType::u8; else if (n == 2) c.dtype = DType::u16;
      else if (n == 4) c.dtype = DType::u32; else if (n == 8) c.dtype = DType::u64;
      else return std::nullopt;
      break;
    case 'f':
      if (n == 2) c.dtype = DType::f16; else if (n == 4) c.dtype = DType::f32;
      else if (n == 8) c.dtype = DType::f64;
      else return std::nullopt;
      break;
    case 'c':
      if (n == 8) c.dtype = DType::c64; else if (n == 16) c.dtype = DType::c128;
      else return std::nullopt;
      break;
    case 'O':
      if (n != 8) return std::nullopt;
      break;
    case 'V':
    case 'S':
      if (n == 0) return std::nullopt;
      break;
    case 'U':
      if (n == 0) return std::nullopt;
      n *= 4;
      break;
    default: return std::nullopt;
  }
  c.itemsize = n;
  return c;
}

}  // namespace modelcdr::cdr

namespace modelcdr {
Status load_class_policy(const std::string& path) { return cdr::ClassRegistry::active().load_policy_file(path); }
}  // namespace modelcdr

"""scikit-learn registry coverage (issue 12 item 2): what people commonly save comes back equal.

Each case trains an estimator with the scikit-learn installed in the test environment on a small
dataset, saves it with joblib (and pickle), disarms it with --to joblib / --to pickle and checks
the output: only writer and registry globals (read statically before anything is loaded), the
same class, the same fitted attributes and identical predictions/transforms. The inputs are made
here, so loading our outputs of them with joblib/pickle is safe (module docstring of
test_formats_objects.py).
"""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from conftest import corpus_dir, disarm, explain, require_bin
from test_formats_objects import writer_globals_ok

np = pytest.importorskip("numpy")
joblib = pytest.importorskip("joblib")
sklearn = pytest.importorskip("sklearn")

DOCS = ["the cat sat on the mat", "the dog ran far away", "a cat and a dog", "dogs and cats are pets",
        "the mat is red", "far away the cat ran"]


def iris():
    from sklearn.datasets import load_iris
    return load_iris(return_X_y=True)


def case_knn(algorithm):
    from sklearn.neighbors import KNeighborsClassifier
    X, y = iris()
    return KNeighborsClassifier(n_neighbors=5, algorithm=algorithm).fit(X, y), X, "predict"


def cases():
    from sklearn import cluster, compose, decomposition, ensemble, linear_model, naive_bayes, neighbors
    from sklearn import pipeline, preprocessing, svm, tree
    from sklearn.feature_extraction import text
    X, y = iris()
    yr = X[:, 0] * 2 + X[:, 1]
    cats = np.array([["red", "s"], ["blue", "m"], ["red", "l"], ["green", "s"]], dtype=object)
    counts = text.CountVectorizer().fit_transform(DOCS)
    return {
        "knn_kd_tree": lambda: case_knn("kd_tree"),
        "knn_ball_tree": lambda: case_knn("ball_tree"),
        "knn_brute": lambda: case_knn("brute"),
        "knn_regressor": lambda: (neighbors.KNeighborsRegressor(3).fit(X, yr), X, "predict"),
        "nearest_neighbors": lambda: (neighbors.NearestNeighbors(n_neighbors=2).fit(X), X, "kneighbors"),
        "logistic": lambda: (linear_model.LogisticRegression(max_iter=300).fit(X, y), X, "predict_proba"),
        "ridge": lambda: (linear_model.Ridge().fit(X, yr), X, "predict"),
        "sgd": lambda: (linear_model.SGDClassifier(random_state=0).fit(X, y), X, "decision_function"),
        "sgd_regressor": lambda: (linear_model.SGDRegressor(random_state=0).fit(X, yr), X, "predict"),
        "svc": lambda: (svm.SVC(probability=False).fit(X, y), X, "decision_function"),
        "svr": lambda: (svm.SVR().fit(X, yr), X, "predict"),
        "tree": lambda: (tree.DecisionTreeClassifier(random_state=0).fit(X, y), X, "predict_proba"),
        "forest": lambda: (ensemble.RandomForestClassifier(5, random_state=0).fit(X, y), X, "predict_proba"),
        "gaussian_nb": lambda: (naive_bayes.GaussianNB().fit(X, y), X, "predict_proba"),
        "multinomial_nb": lambda: (naive_bayes.MultinomialNB().fit(counts, [0, 1, 0, 1, 0, 1]), counts,
                                   "predict_proba"),
        "kmeans": lambda: (cluster.KMeans(3, n_init=2, random_state=0).fit(X), X, "predict"),
        "pca": lambda: (decomposition.PCA(2).fit(X), X, "transform"),
        "standard_scaler": lambda: (preprocessing.StandardScaler().fit(X), X, "transform"),
        "minmax_scaler": lambda: (preprocessing.MinMaxScaler().fit(X), X, "transform"),
        "one_hot": lambda: (preprocessing.OneHotEncoder(handle_unknown="ignore").fit(cats), cats, "transform"),
        "label_encoder": lambda: (preprocessing.LabelEncoder().fit(["b", "a", "c", "a"]), np.array(["a", "c"]),
                                  "transform"),
        "count_vectorizer": lambda: (text.CountVectorizer(stop_words="english").fit(DOCS), DOCS, "transform"),
        "tfidf_vectorizer": lambda: (text.TfidfVectorizer(ngram_range=(1, 2)).fit(DOCS), DOCS, "transform"),
        "tfidf_transformer": lambda: (text.TfidfTransformer().fit(counts), counts, "transform"),
        "pipeline": lambda: (pipeline.Pipeline([("s", preprocessing.StandardScaler()),
                                                ("c", svm.SVC())]).fit(X, y), X, "predict"),
        "text_pipeline": lambda: (pipeline.make_pipeline(text.TfidfVectorizer(), naive_bayes.MultinomialNB())
                                  .fit(DOCS, [0, 1, 0, 1, 0, 1]), DOCS, "predict_proba"),
        # gradient boosting: sklearn._loss objects (Cython losses, links, intervals) and a RandomState
        "gb_classifier": lambda: (ensemble.GradientBoostingClassifier(n_estimators=8, random_state=0)
                                  .fit(X, y), X, "predict_proba"),
        "gb_classifier_binary": lambda: (ensemble.GradientBoostingClassifier(n_estimators=8, subsample=0.7,
                                                                             random_state=1).fit(X, y % 2), X,
                                         "decision_function"),
        "gb_classifier_exponential": lambda: (ensemble.GradientBoostingClassifier(
            loss="exponential", n_estimators=5, random_state=0).fit(X, y % 2), X, "predict_proba"),
        "gb_regressor": lambda: (ensemble.GradientBoostingRegressor(n_estimators=8, random_state=0)
                                 .fit(X, yr), X, "predict"),
        "gb_regressor_absolute": lambda: (ensemble.GradientBoostingRegressor(
            loss="absolute_error", n_estimators=5, random_state=0).fit(X, yr), X, "predict"),
        "gb_regressor_huber": lambda: (ensemble.GradientBoostingRegressor(
            loss="huber", alpha=0.8, n_estimators=5, random_state=0).fit(X, yr), X, "predict"),
        "gb_regressor_quantile": lambda: (ensemble.GradientBoostingRegressor(
            loss="quantile", alpha=0.3, n_estimators=5, random_state=0).fit(X, yr), X, "predict"),
        # histogram gradient boosting: a numpy Generator (PCG64 + SeedSequence) and structured node arrays
        "hist_gb_classifier": lambda: (ensemble.HistGradientBoostingClassifier(max_iter=6, random_state=0)
                                       .fit(X, y), X, "predict_proba"),
        "hist_gb_regressor": lambda: (ensemble.HistGradientBoostingRegressor(max_iter=6, max_features=0.5,
                                                                             random_state=0).fit(X, yr), X, "predict"),
        "column_transformer": lambda: (compose.ColumnTransformer(
            [("num", preprocessing.StandardScaler(), [0, 1]), ("cat", preprocessing.OneHotEncoder(), [2])])
            .fit(np.array([[1.0, 2.0, 0], [3.0, 4.0, 1], [5.0, 0.5, 1]])),
            np.array([[1.0, 2.0, 0], [2.0, 1.0, 1]]), "transform"),
    }


def outputs_equal(a, b):
    if isinstance(a, tuple):
        return all(outputs_equal(x, y) for x, y in zip(a, b))
    if hasattr(a, "toarray"):
        a, b = a.toarray(), b.toarray()
    return type(a) is type(b) and np.array_equal(np.asarray(a), np.asarray(b))


def disarm_to(tmp_path, inp, fmt):
    require_bin()
    out = tmp_path / f"out.{fmt}"
    rc, so, se, report = disarm(inp, out, "--to", fmt, report=tmp_path / f"{fmt}.report.json")
    assert rc in (0, 1) and out.is_file(), explain(rc, so, se)
    writer_globals_ok(out)
    dropped = [f["message"] for f in report["files"][0].get("findings", []) if f.get("rule") == "cdr.dropped"]
    assert dropped == [], "\n".join(dropped)
    return out


@pytest.mark.parametrize("writer", ["joblib", "pickle"])
@pytest.mark.parametrize("name", list(cases()))
def test_common_estimators_rebuild_with_identical_predictions(tmp_path, name, writer):
    model, X, method = cases()[name]()
    inp = tmp_path / f"in.{writer}"
    if writer == "joblib":
        joblib.dump(model, inp)
    else:
        inp.write_bytes(pickle.dumps(model, protocol=4))
    out = disarm_to(tmp_path, inp, writer)
    got = joblib.load(out) if writer == "joblib" else pickle.loads(out.read_bytes())
    assert type(got) is type(model)
    assert sorted(vars(got)) == sorted(vars(model))
    assert outputs_equal(getattr(model, method)(X), getattr(got, method)(X)), method


def test_tree_nodes_keep_their_record_dtype(tmp_path):
    from sklearn.tree import DecisionTreeRegressor
    X, y = iris()
    model = DecisionTreeRegressor(random_state=0, max_depth=4).fit(X, y)
    inp = tmp_path / "tree.joblib"
    joblib.dump(model, inp)
    got = joblib.load(disarm_to(tmp_path, inp, "joblib"))
    exp_nodes, got_nodes = model.tree_.__getstate__()["nodes"], got.tree_.__getstate__()["nodes"]
    assert got_nodes.dtype == exp_nodes.dtype and got_nodes.dtype.names  # a structured record dtype
    assert got_nodes.tobytes() == exp_nodes.tobytes()


def test_vectorizer_vocabulary_and_stop_words_survive(tmp_path):
    from sklearn.feature_extraction.text import TfidfVectorizer
    model = TfidfVectorizer(stop_words=["the", "a"], dtype=np.float32).fit(DOCS)
    inp = tmp_path / "tfidf.joblib"
    joblib.dump(model, inp)
    got = joblib.load(disarm_to(tmp_path, inp, "joblib"))
    assert got.vocabulary_ == model.vocabulary_ and list(got.vocabulary_) == list(model.vocabulary_)
    assert got.stop_words == model.stop_words and got.dtype is np.float32
    assert got.idf_.dtype == model.idf_.dtype and np.array_equal(got.idf_, model.idf_)


IRIS = "benign/Iris-Flower-Species-Prediction/model.joblib"


def test_iris_knn_from_the_corpus_comes_out_equal(tmp_path):
    """The corpus file is never unpickled: it is only read as bytes. Our output of it is loaded after
    its globals were checked statically (writer + registry names only), and compared with the input
    where the input can be read without an unpickler: joblib stores every numeric array raw, so each
    fitted array of the output (the KD tree's included) must appear byte for byte in the input."""
    src = corpus_dir() / IRIS
    if not src.is_file():
        pytest.skip(f"{IRIS} not in {corpus_dir()}")
    raw = src.read_bytes()
    out = disarm_to(tmp_path, src, "joblib")
    import json
    report = json.loads((tmp_path / "joblib.report.json").read_text())
    loud = [f["message"] for f in report["files"][0]["findings"] if f["severity"] != "info"]
    assert loud == [], "\n".join(loud)  # every name in it is vetted, the object array's pickle included
    got = joblib.load(out)
    from sklearn.neighbors import KNeighborsClassifier
    assert type(got) is KNeighborsClassifier
    assert list(got.feature_names_in_) == ["SepalLengthCm", "SepalWidthCm", "PetalLengthCm", "PetalWidthCm"]
    tree_state = got._tree.__getstate__() if got._tree is not None else ()
    arrays = [got._fit_X, got._y, *[a for a in tree_state if isinstance(a, np.ndarray)]]
    for a in arrays:
        assert a.dtype != object and a.tobytes() in raw, (a.dtype, a.shape)
    assert (got._tree is None) == (got._fit_method == "brute")
    # predictions: the KD tree and brute force over the same fitted data agree
    brute = KNeighborsClassifier(n_neighbors=got.n_neighbors, algorithm="brute").fit(got._fit_X, got.classes_[got._y])
    assert np.array_equal(got.predict(got._fit_X), brute.predict(got._fit_X))
    # and a second disarm of the output is byte-identical (nothing left to convert)
    out2 = tmp_path / "again.joblib"
    rc, so, se, _ = disarm(out, out2, "--to", "joblib")
    assert rc == 0 and out2.read_bytes() == out.read_bytes(), explain(rc, so, se)


# --------------------------------------------------------------------------------------------------
# gradient boosting: the random state comes back exactly, so training resumes identically
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("writer", ["joblib", "pickle"])
@pytest.mark.parametrize("kind", ["gb", "hist_gb"])
def test_gradient_boosting_resumes_training_identically(tmp_path, kind, writer):
    from sklearn import ensemble
    X, y = iris()
    if kind == "gb":
        model = ensemble.GradientBoostingClassifier(n_estimators=4, subsample=0.6, max_features=2,
                                                    warm_start=True, random_state=3).fit(X, y)
    else:
        model = ensemble.HistGradientBoostingClassifier(max_iter=4, max_features=0.5, warm_start=True,
                                                        early_stopping=False, random_state=3).fit(X, y)
    inp = tmp_path / f"in.{writer}"
    if writer == "joblib":
        joblib.dump(model, inp)
    else:
        inp.write_bytes(pickle.dumps(model, protocol=5))
    got = joblib.load(disarm_to(tmp_path, inp, writer)) if writer == "joblib" else \
        pickle.loads(disarm_to(tmp_path, inp, writer).read_bytes())
    if kind == "gb":
        exp_state, got_state = model._rng.get_state(legacy=False), got._rng.get_state(legacy=False)
        assert exp_state["bit_generator"] == got_state["bit_generator"] == "MT19937"
        assert np.array_equal(exp_state["state"]["key"], got_state["state"]["key"])
        assert exp_state["state"]["pos"] == got_state["state"]["pos"]
        model.set_params(n_estimators=8)
        got.set_params(n_estimators=8)
    else:
        assert got._feature_subsample_rng.bit_generator.state == model._feature_subsample_rng.bit_generator.state
        model.set_params(max_iter=8)
        got.set_params(max_iter=8)
    model.fit(X, y)  # both continue from their saved state with the same random draws
    got.fit(X, y)
    assert np.array_equal(model.predict_proba(X), got.predict_proba(X))


# Crafted inputs: numpy's pickle helpers call or instantiate what they are given
# (__randomstate_ctor(name, ctor) calls ctor; __bit_generator_ctor(cls) instantiates cls), and a
# Cython unpickle helper takes a class: only the exact shapes numpy and Cython write are kept.
def _proto2(*ops: bytes) -> bytes:
    return b"\x80\x02" + b"".join(ops) + b"."


def _glob(mod: str, name: str) -> bytes:
    return b"c" + mod.encode() + b"\n" + name.encode() + b"\n"


def _str(s: str) -> bytes:
    return b"X" + len(s).to_bytes(4, "little") + s.encode()


def _in_dict(value: bytes) -> bytes:
    """{'w': 1, 'bad': <value>}: the main object survives, the crafted value is dropped."""
    return b"}(" + _str("w") + b"K\x01" + _str("bad") + value + b"u"


CRAFTED = {
    "randomstate_ctor_with_a_constructor": _glob("numpy.random._pickle", "__randomstate_ctor")
    + b"(" + _str("MT19937") + _glob("numpy.random._pickle", "__bit_generator_ctor") + b"tR",
    "randomstate_ctor_of_a_registry_class": _glob("numpy.random._pickle", "__randomstate_ctor")
    + b"(" + _glob("sklearn.tree._tree", "Tree") + b"tR",
    "bit_generator_ctor_of_another_class": _glob("numpy.random._pickle", "__bit_generator_ctor")
    + b"(" + _glob("numpy", "float64") + b"tR",
    "bit_generator_ctor_of_an_unknown_name": _glob("numpy.random._pickle", "__bit_generator_ctor")
    + b"(" + _str("os") + b"tR",
    "pyx_unpickle_of_another_class": _glob("sklearn._loss._loss", "__pyx_unpickle_CyHalfMultinomialLoss")
    + b"(" + _glob("numpy", "float64") + b"J\x44\x33\x3b\x0e" + b")tR",
    "pyx_unpickle_with_a_dict_state": _glob("sklearn._loss._loss", "__pyx_unpickle_CyHalfMultinomialLoss")
    + b"(" + _glob("sklearn._loss._loss", "CyHalfMultinomialLoss") + b"J\x44\x33\x3b\x0e" + b"}tR",
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
@pytest.mark.parametrize("fmt", ["pickle", "joblib"])
def test_numpy_random_and_cython_helpers_take_only_their_own_arguments(tmp_path, case, fmt):
    require_bin()
    inp = tmp_path / "in.pkl"
    inp.write_bytes(_proto2(_in_dict(CRAFTED[case])))
    out = tmp_path / f"out.{fmt}"
    rc, so, se, report = disarm(inp, out, "--to", fmt, report=tmp_path / "r.json")
    assert rc == 1 and out.is_file(), explain(rc, so, se)
    writer_globals_ok(out)
    data = out.read_bytes()
    for name in (b"__randomstate_ctor", b"__bit_generator_ctor", b"__pyx_unpickle", b"float64", b"_tree"):
        assert name not in data, name
    # reported as removed (not as a vetted rebuild): the call line takes the removal's severity
    removed = [f for f in report["files"][0]["removed"] if "removed by disarm" in f["message"]]
    assert len(removed) == 1 and removed[0]["severity"] != "info", report["files"][0]["removed"]
    assert "vetted" not in removed[0]["message"], removed[0]["message"]
    got = pickle.loads(data) if fmt == "pickle" else joblib.load(out)  # globals checked above
    assert got == {"w": 1, "bad": None}


def test_joblib_numpy_matrix_becomes_a_plain_array(tmp_path):
    """numpy.matrix (an ndarray subclass, in joblib's own test files) keeps its data as a plain
    ndarray, reported as converted; it was dropped to None before."""
    m = np.matrix([[1.5, 2.0, -3.0], [4.0, 5.0, 6.25]])
    inp = tmp_path / "m.joblib"
    joblib.dump({"m": m, "a": np.arange(3)}, inp)
    out = tmp_path / "out.joblib"
    rc, so, se, report = disarm(inp, out, "--to", "joblib", report=tmp_path / "r.json")
    assert rc == 1 and out.is_file(), explain(rc, so, se)
    writer_globals_ok(out)
    assert b"matrix" not in out.read_bytes()
    got = joblib.load(out)
    assert type(got["m"]) is np.ndarray and got["m"].dtype == m.dtype and np.array_equal(got["m"], np.asarray(m))
    assert np.array_equal(got["a"], np.arange(3))
    rules = [f["rule"] for f in report["files"][0]["removed"]]
    assert rules == ["cdr.converted"], report["files"][0]["removed"]

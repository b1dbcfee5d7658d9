#!/usr/bin/env python3
"""Seeds of scan_keras_fuzz (fuzz/seeds/scan_keras/): small HDF5 files written by h5py (a Lambda
config as a variable-length and as a fixed-length string attribute, a plain Dense config, a
weights-only file) and a Keras v3 config.json. Needs h5py (tests/requirements.txt)."""
import json
from pathlib import Path

import h5py
import numpy as np

OUT = Path(__file__).parent / "seeds" / "scan_keras"
LAMBDA = {"class_name": "Sequential", "config": {"layers": [
    {"class_name": "Lambda", "config": {"function": "lambda x: x"}}]}}
DENSE = {"class_name": "Sequential", "config": {"layers": [{"class_name": "Dense", "config": {"units": 2}}]}}


def h5(name, config=None, fixed=False):
    with h5py.File(OUT / name, "w") as f:
        if config is not None:
            text = json.dumps(config)
            f.attrs["model_config"] = np.bytes_(text.encode()) if fixed else text
        f.create_dataset("w", data=np.arange(4, dtype="f4"))


OUT.mkdir(parents=True, exist_ok=True)
h5("lambda_vlen.h5", LAMBDA)
h5("lambda_fixed.h5", LAMBDA, fixed=True)
h5("dense.h5", DENSE)
h5("weights_only.h5")
(OUT / "config.json").write_text(json.dumps({"module": "os", "class_name": "function", "config": "system"}))

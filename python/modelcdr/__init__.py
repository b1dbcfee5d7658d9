"""modelcdr: disarm AI model files and load them without running any pickle code.

    import modelcdr
    report = modelcdr.scan("model.pt")
    modelcdr.disarm("model.pt", "clean.pt")
    state_dict = modelcdr.load("model.pt")          # == torch.load(disarmed, weights_only=True)
    with modelcdr.guard():                          # torch.load -> modelcdr.load
        model = AutoModel.from_pretrained(folder)

docs/PYTHON.md has the whole API.
"""
from ._core import __version__
from ._core import CancelToken
from ._api import Engine, default_engine, disarm, protect, restore, scan, verify
from ._errors import CancelledError, MapError, ModelcdrError, RejectedError
from ._guard import disable, enable, guard
from ._loader import inspect, load, load_file
from ._report import ErrorInfo, Finding, MtdResult, Report, TensorStats

__all__ = [
    "__version__", "Engine", "default_engine", "CancelToken", "scan", "disarm", "load", "load_file", "inspect", "protect", "restore", "verify",
    "guard", "enable", "disable", "Report", "Finding", "ErrorInfo", "TensorStats", "MtdResult",
    "ModelcdrError", "RejectedError", "MapError", "CancelledError",
]

"""Filesystem paths of the data shipped inside the `filigree` package.

`filigree/data/` is package data, not a Python package: it holds the bundled model bundles
(`data/model/`, the default, and `data/periodic/`; see docs/bundle.md and `BUNDLED_MODELS`)
and a few sample photos (`data/samples/`, licences in `data/samples/LICENSE.md`). All are
installed with the package, editable or not.
"""

import os
from importlib.resources import files
from pathlib import Path

BUNDLED_MODELS = {"default": "model", "periodic": "periodic"}
"""Names of the model bundles that ship with the package, and their folders under
`filigree/data/`: `default`, the tiled layout; `periodic`, the re-synchronisable periodic layout
(docs/sync.md)."""


def _data_path(*parts: str) -> str:
    """Returns the path of `filigree/data/<parts>` on the local filesystem.

    Raises:
        RuntimeError: if the package is not installed as plain files (e.g. imported from a zip),
            where the data has no filesystem path that TensorFlow or Beam could open.
    """
    resource = files("filigree") / "data"
    for part in parts:
        resource = resource / part
    # For a package on disk `files()` gives a pathlib.Path; anything else (a zip import) has no
    # stable path, and loading a SavedModel needs a real directory.
    if not isinstance(resource, Path):
        raise RuntimeError(f"filigree data is not on the filesystem: {resource!r}")
    return str(resource.resolve())


def bundled_model_dir(name: str = "default") -> str:
    """Returns the directory of the bundled model called `name` (`BUNDLED_MODELS`).

    Raises:
        ValueError: for a name that is not a bundled model.
    """
    if name not in BUNDLED_MODELS:
        raise ValueError(f"no bundled model called {name!r}; bundled: {', '.join(BUNDLED_MODELS)}")
    return _data_path(BUNDLED_MODELS[name])


def model_dir_of(model: str | None) -> str:
    """The bundle directory that a model argument names: None is the default bundled model; a
    name of `BUNDLED_MODELS` is always that bundled model (a local folder of that name is
    `./periodic`); a URI (gs://...) or an existing path is returned unchanged.

    Raises:
        ValueError: for a bare name (no '/') that is neither a bundled model nor an existing
            path, e.g. a misspelt model name.
    """
    if model is None:
        return bundled_model_dir()
    if model in BUNDLED_MODELS:
        return bundled_model_dir(model)
    if "/" not in model and "\\" not in model and not os.path.exists(model):
        raise ValueError(f"no model bundle {model!r}: not a directory, and not a bundled model "
                         f"({', '.join(BUNDLED_MODELS)})")
    return model


def bundled_samples_dir() -> str:
    """Returns the directory of the bundled sample photos (JPEG and PNG) and their LICENSE.md."""
    return _data_path("samples")

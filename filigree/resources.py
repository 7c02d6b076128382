"""Filesystem paths of the data shipped inside the `filigree` package.

`filigree/data/` is package data, not a Python package: it holds the bundled model bundle
(`data/model/`, see docs/bundle.md) and a few sample photos (`data/samples/`, licences in
`data/samples/LICENSE.md`). Both are installed with the package, editable or not.
"""

from importlib.resources import files
from pathlib import Path


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


def bundled_model_dir() -> str:
    """Returns the directory of the model bundle that ships with the package."""
    return _data_path("model")


def bundled_samples_dir() -> str:
    """Returns the directory of the bundled sample photos (JPEG and PNG) and their LICENSE.md."""
    return _data_path("samples")

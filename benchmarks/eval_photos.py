"""Fetch the held-out evaluation photos for `benchmarks/quality.py` (none of them is a training photo).

    PYTHONPATH=. .venv/bin/python benchmarks/eval_photos.py [--out benchmarks/photos]
                                                            [--validation-out benchmarks/photos-val]

* Held-out set (`--out`): 12 natural photos from two Debian packages the training data does not
  draw on, `palapeli-data` (KDE jigsaw puzzle photos) and `tuxpaint-data` (Tux Paint's photo
  templates). The packages are fetched with `apt-get download` and unpacked with `dpkg-deb -x`
  into a temporary folder (nothing is installed system-wide; `apt-get update` is run once if the
  package lists are missing). When a package is already installed its files are copied from
  /usr/share directly. Files are copied byte for byte and checked against the SHA-256 digests
  below; a digest mismatch (another package version) is reported but does not stop the copy.
* Validation split (`--validation-out`, optional): the photos of the training folder that
  `training.data.split_paths` (fraction 0.1) holds out from training. They come from the same
  packages as the training photos, so they are a second, easier held-out set, reported apart.

Names, sizes, packages and licences are listed in benchmarks/photos.md. The photo folders are
ignored by git (benchmarks/.gitignore): never commit the binaries.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "benchmarks" / "photos"
DEFAULT_TRAINING_DATA = REPO.parent / "shared" / "data" / "photos"
VALIDATION_FRACTION = 0.1


@dataclass(frozen=True)
class Photo:
    package: str
    version: str  # the version the digests were taken from (Debian 12 "bookworm")
    path: str  # inside the package
    name: str  # file name in the output folder
    sha256: str


PHOTOS: tuple[Photo, ...] = (
    Photo("palapeli-data", "4:22.12.3-1", "/usr/share/palapeli/collection/castle-maintenon.jpg",
          "palapeli_castle-maintenon.jpg",
          "f4a6bf48b97d97715413f9ebd2d8744bd46df0e492bc8326e2513d51084f2612"),
    Photo("palapeli-data", "4:22.12.3-1", "/usr/share/palapeli/collection/cincinnati-bridge.jpg",
          "palapeli_cincinnati-bridge.jpg",
          "09772d09318b34a5c5edd58ee86ff462bcd2907006f31cc8e0704310f8e9ab60"),
    Photo("palapeli-data", "4:22.12.3-1", "/usr/share/palapeli/collection/citrus-fruits.jpg",
          "palapeli_citrus-fruits.jpg",
          "0cbd7154a14789803167c86705130d0358875198231269df168ea26224e70848"),
    Photo("palapeli-data", "4:22.12.3-1", "/usr/share/palapeli/collection/european-honey-bee.jpg",
          "palapeli_european-honey-bee.jpg",
          "9d54ae706bddd899c91b2b801d9ca4556a5a9a399b4043f9d539df62a8cb7f27"),
    Photo("palapeli-data", "4:22.12.3-1",
          "/usr/share/palapeli/collection/panther-chameleon-female.jpg",
          "palapeli_panther-chameleon-female.jpg",
          "adb9e2834a8a3db40ca3817452b956ada527085e5aa2bd604c465651a3834ae4"),
    Photo("tuxpaint-data", "1:0.9.28-sdl2-1", "/usr/share/tuxpaint/templates/cliff.jpg",
          "tuxpaint_cliff.jpg",
          "ff8da5b7a4eb5f5558a9768764871330ba245dc54ff55d5766129f47a45e7392"),
    Photo("tuxpaint-data", "1:0.9.28-sdl2-1", "/usr/share/tuxpaint/templates/rocks.jpg",
          "tuxpaint_rocks.jpg",
          "f3ddf517f26bc77a3f6a98010fc0bfa0ccac431869388755e0032a4f7bb6d748"),
    Photo("tuxpaint-data", "1:0.9.28-sdl2-1", "/usr/share/tuxpaint/templates/sun_behind_clouds.jpg",
          "tuxpaint_sun_behind_clouds.jpg",
          "a76583449fb6cf58ca3fd88deac57932f5e0623df8f6ca733258a2ceab3abf91"),
    Photo("tuxpaint-data", "1:0.9.28-sdl2-1", "/usr/share/tuxpaint/templates/jellyfish.jpg",
          "tuxpaint_jellyfish.jpg",
          "340228d44027370689e43fe44e3a01a3793d79224a7fd20b3d52f824a65f787d"),
    Photo("tuxpaint-data", "1:0.9.28-sdl2-1", "/usr/share/tuxpaint/templates/corn_maze.jpg",
          "tuxpaint_corn_maze.jpg",
          "e3c5dfd777c38fbf79126795ba1165fee41e62402436196363a5e2d938a2d3be"),
    Photo("tuxpaint-data", "1:0.9.28-sdl2-1", "/usr/share/tuxpaint/templates/sheep.jpg",
          "tuxpaint_sheep.jpg",
          "cb408f8b3fc324798d012f71595a148f9fa360c17d1bde91371bd7c01e9cf881"),
    Photo("tuxpaint-data", "1:0.9.28-sdl2-1", "/usr/share/tuxpaint/templates/lighthouse.jpg",
          "tuxpaint_lighthouse.jpg",
          "bf92c1139da97690208a3948c9d1051649deb44bb51baa288820f5c64f9e6365"),
)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)


def _download(package: str, workdir: Path) -> Path:
    """The package's .deb in `workdir`, via `apt-get download` (after `apt-get update` if needed)."""
    result = _run(["apt-get", "download", package], cwd=workdir)
    if result.returncode != 0:
        print(f"apt-get download {package} failed ({result.stderr.strip()[-200:]}); "
              "running apt-get update", file=sys.stderr)
        update = _run(["apt-get", "update"])
        if update.returncode != 0:
            raise SystemExit(f"apt-get update failed: {update.stderr.strip()[-500:]}")
        result = _run(["apt-get", "download", package], cwd=workdir)
        if result.returncode != 0:
            raise SystemExit(f"apt-get download {package} failed: {result.stderr.strip()[-500:]}")
    debs = sorted(workdir.glob(f"{package}_*.deb"))
    if not debs:
        raise SystemExit(f"apt-get download {package} left no .deb in {workdir}")
    return debs[-1]


def _package_root(package: str, paths: list[str], workdir: Path) -> tuple[Path, str]:
    """(root under which the package's paths exist, version) -- the installed system or an
    unpacked .deb."""
    if all(os.path.isfile(p) for p in paths):
        query = _run(["dpkg-query", "-W", "-f=${Version}", package])
        if query.returncode == 0 and query.stdout:
            return Path("/"), query.stdout.strip()
    deb = _download(package, workdir)
    version = _run(["dpkg-deb", "-f", str(deb), "Version"]).stdout.strip()
    target = workdir / package
    unpack = _run(["dpkg-deb", "-x", str(deb), str(target)])
    if unpack.returncode != 0:
        raise SystemExit(f"dpkg-deb -x {deb.name} failed: {unpack.stderr.strip()[-500:]}")
    return target, version


def fetch_heldout(out: Path) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    records = []
    with tempfile.TemporaryDirectory(prefix="filigree-eval-photos-") as tmp:
        workdir = Path(tmp)
        packages = sorted({photo.package for photo in PHOTOS})
        roots = {}
        for package in packages:
            paths = [p.path for p in PHOTOS if p.package == package]
            roots[package] = _package_root(package, paths, workdir)
        for photo in PHOTOS:
            root, version = roots[photo.package]
            source = root / photo.path.lstrip("/")
            if not source.is_file():
                raise SystemExit(f"{photo.path} not found in {photo.package} {version}")
            target = out / photo.name
            shutil.copyfile(source, target)
            digest = _sha256(target)
            if digest != photo.sha256:
                print(f"warning: {photo.name} from {photo.package} {version} differs from the "
                      f"recorded one ({photo.version}); results may not compare", file=sys.stderr)
            records.append({"file": photo.name, "package": photo.package, "version": version,
                            "sha256": digest})
    return records


def fetch_validation(out: Path, data: Path) -> list[str]:
    """Copy the training folder's validation-split photos (training.data.split_paths)."""
    sys.path.insert(0, str(REPO))
    from training.data import IMAGE_SUFFIXES, split_paths  # noqa: E402 (needs the repo path)

    paths = sorted(str(p) for p in data.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    _, validation = split_paths(paths, VALIDATION_FRACTION)
    out.mkdir(parents=True, exist_ok=True)
    for path in validation:
        shutil.copyfile(path, out / os.path.basename(path))
    return [os.path.basename(p) for p in validation]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="folder for the held-out photos (default: %(default)s)")
    parser.add_argument("--validation-out", type=Path, default=None,
                        help="also copy the training folder's validation-split photos here")
    parser.add_argument("--training-data", type=Path, default=DEFAULT_TRAINING_DATA,
                        help="the training photo folder (default: %(default)s)")
    args = parser.parse_args(argv)
    records = fetch_heldout(args.out)
    for record in records:
        print(f"{args.out / record['file']}  {record['package']} {record['version']}")
    if args.validation_out is not None:
        names = fetch_validation(args.validation_out, args.training_data)
        print(f"{len(names)} validation-split photos -> {args.validation_out}: {', '.join(names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

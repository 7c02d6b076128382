"""Packaging for Filigree: the batch watermarking pipeline and its training job.

Exact versions of everything (direct and transitive) are pinned in requirements.lock; the ranges
here only say what the code is written against. Install with the lock, then the project with
--no-deps (see the Makefile and the Dockerfile).
"""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    # Plain tensorflow, not tensorflow-cpu: the same pins must serve the GPU image.
    "tensorflow==2.21.*",
    # Keep equal to BEAM_VERSION in the Dockerfile: launcher, container and workers must agree.
    "apache-beam[gcp]==2.77.*",
    "numpy>=1.26",
    # Pillow 11.3+ reads and writes AVIF itself; HEIF/HEIC (phones' default) needs libheif.
    "pillow>=11.3",
    "pillow-heif>=1.8,<2",
    "google-cloud-storage>=2.14",
    # bchlib 2.x: BCH(t, m=...) API; 1.x had a different constructor.
    "bchlib>=2.1,<3",
    # tf.summary's implementation (training logs); tensorflow 2.21 no longer pulls it in.
    "tensorboard==2.21.*",
    # Box filters of the JND map (filigree/imaging/jnd.py); also what ssimulacra2 runs on.
    "scipy>=1.11",
    # SSIMULACRA2 (perceptual visibility of the mark) for the run report's sampled images and
    # benchmarks/quality.py; pure Python on numpy + scipy. Pinned: its scores are the numbers.
    "ssimulacra2==0.3.0",
]

EXTRAS_REQUIRE = {
    "test": [
        "pytest>=8",
        "packaging",  # tests/test_packaging.py
        # A real GCS server on localhost for the gs:// tests (tests/conftest.py).
        "gcp-storage-emulator>=2024.8",
    ],
    # Peers for benchmarks: invisible-watermark itself must be installed with --no-deps (its
    # metadata asks for the GUI build of OpenCV and for onnx), so it is not listed here; use
    # `make bench-deps`. Not part of requirements.lock.
    "bench": [
        "opencv-python-headless",
        "pywavelets",
        "onnxruntime",
        "torch==2.13.0",
    ],
    # CUDA libraries as wheels; the NVIDIA driver comes from the host.
    "gpu": [
        "tensorflow[and-cuda]==2.21.*",
    ],
}

# Model bundle (model.json, embedder/ and extractor/ SavedModels with variables/) and sample
# photos. `**` is recursive (setuptools >= 62.3); directories themselves are skipped.
PACKAGE_DATA = {
    "filigree": [
        "data/model/**",
        "data/periodic/**",
        "data/samples/*",
    ],
}

setup(
    name="filigree",
    version="0.1.0",
    description="Invisible image watermarking at batch scale (Apache Beam + TensorFlow)",
    python_requires=">=3.11",
    packages=find_packages(include=["filigree", "filigree.*", "pipeline", "pipeline.*", "training", "training.*"]),
    package_data=PACKAGE_DATA,
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={
        "console_scripts": [
            "filigree-pipeline = pipeline.run:main",
            "filigree-train = training.train:main",
        ],
    },
)

"""tfrs-linear: linear-cost attention (LinRec, ELASTIC) for TensorFlow Recommenders."""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(
    r'^__version__ = "([^"]+)"', (HERE / "tfrs_linear" / "__init__.py").read_text(), re.M
).group(1)

setup(
    name="tfrs-linear",
    version=VERSION,
    description=(
        "LinRec and ELASTIC linear attention as Keras layers and TFRS retrieval models, "
        "trained with XLA and exported for TF Serving."
    ),
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10,<3.13",
    packages=find_packages(include=["tfrs_linear", "tfrs_linear.*"]),
    install_requires=[
        "tensorflow==2.21.*",
        "tf-keras==2.21.*",
        "tensorflow-recommenders==0.7.7",
        # The pipelines extra (tf.Transform 1.21) pins the serving API to 2.19; the
        # export writes its PredictionLog warmup records, so it is a core dependency.
        "tensorflow-serving-api==2.19.*",
        "tensorboard==2.21.*",
        "numpy>=1.26",
        # Never scann: its wheels are built for TF 2.20 and break
        # `import tensorflow_recommenders` under TF 2.21. Top-k is exact (brute force).
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3.6", "psutil>=5.9", "hypothesis>=6.100", "pyarrow>=25,<26"],
        # The fast path of the raw-file readers (pyarrow.csv; the exact parser otherwise).
        "fast": ["pyarrow>=25,<26"],
        "bench": ["matplotlib>=3.8", "psutil>=5.9"],
        # Keras 3 layers (tfrs_linear.keras3) on the TensorFlow and JAX backends, and the
        # keras-rs example. Tested with exactly these versions.
        "keras3": ["keras>=3.15,<3.16", "keras-rs==0.4.0", "jax[cpu]==0.10.2"],
        # The PyTorch backend of tfrs_linear.keras3, tested with exactly this version (the
        # CPU build). From PyPI it is the CUDA build, several GB: on a machine without a
        # GPU install the CPU wheel first (pip install torch==2.13.0 --index-url
        # https://download.pytorch.org/whl/cpu).
        "torch": ["torch==2.13.0"],
        "pipelines": [
            "apache-beam==2.77.*",
            "tensorflow-transform==1.21.*",
            "tfx-bsl==1.21.*",
        ],
    },
    entry_points={"console_scripts": ["tfrs-linear=tfrs_linear.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3.11",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)

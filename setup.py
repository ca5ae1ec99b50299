from setuptools import find_packages, setup

setup(
    name="bert4x",
    version="0.1.0",
    description="Keras 3 toolkit for pretrained Transformers of the BERT family",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["bert4x", "bert4x.*"]),
    python_requires=">=3.10",
    install_requires=[
        "tensorflow>=2.16",
        "keras>=3.5",
        "numpy",
        "sentencepiece",
        "jieba",
        "tqdm",
        "safetensors",
    ],
    extras_require={
        "test": [
            "pytest",
            # Two test processes: the suite's work is mostly single-threaded tracing.
            "pytest-xdist",
            "hypothesis",
            "torch==2.13.0",
            "transformers",
            "jax",
            # Keras 2 for the bert4keras oracle subprocess; `import keras` stays Keras 3.
            "tf-keras==2.21.0",
        ],
    },
)

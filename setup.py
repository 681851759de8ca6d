"""Packaging shim: maps the top-level folders onto the ``svsm`` import package.

``pyproject.toml`` holds all metadata; this file exists only because setuptools'
declarative config cannot map several top-level folders under one prefix while
discovering their subpackages automatically.
"""

from setuptools import find_namespace_packages, setup

ROOTS = {"svsm.kernel": "kernel", "svsm.sdk": "sdk", "svsm.modules": "modules"}

packages: list[str] = []
package_dir: dict[str, str] = {}
for name, folder in ROOTS.items():
    packages.append(name)
    package_dir[name] = folder
    # Namespace discovery also lists data-only folders (the new-module templates), so
    # setuptools ships them as package data instead of warning that they are unlisted.
    for sub in find_namespace_packages(folder, exclude=["*__pycache__*"]):
        packages.append(f"{name}.{sub}")

setup(packages=packages, package_dir=package_dir)

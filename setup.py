"""Packaging shim: maps the top-level folders onto the ``svsm`` import package.

``pyproject.toml`` holds all metadata; this file exists only because setuptools'
declarative config cannot map several top-level folders under one prefix while
discovering their subpackages automatically.
"""

from setuptools import find_packages, setup

ROOTS = {"svsm.kernel": "kernel", "svsm.sdk": "sdk", "svsm.modules": "modules"}

packages: list[str] = []
package_dir: dict[str, str] = {}
for name, folder in ROOTS.items():
    packages.append(name)
    package_dir[name] = folder
    for sub in find_packages(folder):
        packages.append(f"{name}.{sub}")

setup(packages=packages, package_dir=package_dir)

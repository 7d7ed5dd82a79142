"""The reference code's top-level package names, as aliases of the ``kdzoo`` subpackages.

RepDistiller-style code run from the repository root imports ``models``, ``dataset``, ``helper``,
``distiller_zoo`` and ``crd``. The checkout keeps a one-line package under each of those names that
calls :func:`alias`, which makes ``models`` *be* ``kdzoo.models`` (and ``models.resnet`` be
``kdzoo.models.resnet``) instead of a second copy, so classes, registries and monkeypatches stay
shared. The installed distribution ships only ``kdzoo``: these names exist only inside a checkout,
where the reference expects them.
"""
from __future__ import annotations

import importlib
import pkgutil
import sys


def alias(reference_name: str) -> None:
    """Register ``kdzoo.<reference_name>`` and all its submodules under the reference name."""
    package = importlib.import_module(f"kdzoo.{reference_name}")
    sys.modules[reference_name] = package
    for info in pkgutil.walk_packages(package.__path__, prefix=f"kdzoo.{reference_name}."):
        module = importlib.import_module(info.name)
        sys.modules[info.name[len("kdzoo."):]] = module

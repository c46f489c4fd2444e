"""Attention kinds beyond the built-in ones (anna_jax/attention.py): every module in this folder is imported with
the package, and each registers its kind (`anna_jax.registry.register`), so a new kind is one file here."""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
  importlib.import_module(f'{__name__}.{_module.name}')

"""Every attention kind, one module each, registering itself (`anna_jax.registry.register`) when imported with the
package: the built-in kinds by name, in the order their config sections and table columns take, then any other
module in this folder, so a new kind is one file here."""

import importlib
import pkgutil

BUILT_IN = ('full', 'full_blockwise', 'unit_softmax', 'anna', 'anna_softmax', 'reformer', 'lowrank', 'local')

for _name in BUILT_IN + tuple(m.name for m in pkgutil.iter_modules(__path__) if m.name not in BUILT_IN):
  importlib.import_module(f'{__name__}.{_name}')

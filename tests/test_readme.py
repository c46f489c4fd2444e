"""The README's Python snippets run as written, in order, in one namespace (a user pastes them one after another)."""

import os
import re

from anna_jax import registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_python_snippets_run_as_written(capsys):
  with open(os.path.join(ROOT, 'README.md')) as f:
    snippets = re.findall(r'```python\n(.*?)```', f.read(), re.DOTALL)
  assert len(snippets) >= 2 and any('import anna_jax' in s for s in snippets)
  namespace = {}
  shipped = registry.get('local')
  try:
    for snippet in snippets:
      exec(compile(snippet, 'README.md', 'exec'), namespace)  # pylint: disable=exec-used
  finally:
    registry.register(shipped)  # the README registers its own copy of the shipped `local` kind
  assert capsys.readouterr().out.count('(2, 128, 4, 16)') == 2
  assert namespace['logits'].shape == (2, 64, 10)


def test_every_public_name_is_exported():
  import anna_jax
  assert all(hasattr(anna_jax, name) for name in anna_jax.__all__)
  assert {'reformer_attention', 'full_blockwise_attention', 'make_attention'} <= set(anna_jax.__all__)

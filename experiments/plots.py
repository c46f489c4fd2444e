"""The sweep's figure: error vs depth, one line per k (k-hop) or per attention kind (Match2)."""

import io

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402


def error_vs_depth(results):
  """Returns (png bytes, height, width) of error vs depth for the finished results."""
  kinds = sorted({r['attention'] + (f" (eval {r['eval_attention']})" if r.get('eval_attention') else '')
                  for r in results})
  fig, axes = plt.subplots(1, len(kinds), figsize=(4.5 * len(kinds), 3.6), squeeze=False, sharey=True)
  for ax, kind in zip(axes[0], kinds):
    runs = sorted((r for r in results if r['attention'] + (f" (eval {r['eval_attention']})"
                                                          if r.get('eval_attention') else '') == kind),
                  key=lambda r: r['depth'])
    ks = sorted({int(key.rsplit('k', 1)[1]) for r in runs for key in r if key.startswith('eval/error_k')})
    series = {f'k={k}': f'eval/error_k{k}' for k in ks} or {'all': 'eval/error'}
    for label, key in series.items():
      points = [(r['depth'], r[key]) for r in runs if key in r]
      if points:
        ax.plot(*zip(*points), marker='o', label=label)
    ax.axhline(0.05, color='grey', linestyle=':', linewidth=1)
    ax.set_title(kind)
    ax.set_xlabel('depth')
    ax.legend(fontsize=7)
  axes[0][0].set_ylabel('per-token error')
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format='png', dpi=100)
  width, height = (int(x) for x in fig.canvas.get_width_height())
  plt.close(fig)
  return buffer.getvalue(), height, width

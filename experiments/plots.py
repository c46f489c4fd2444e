"""Figures: the sweep's error vs depth, the grid evaluation's Figure 1 (a: one layer, b: two layers), and the k-hop
tables' heat maps (error per row and k, a panel per kind)."""

import io

import matplotlib
import numpy as np

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def kind_label(result):
  """A result's attention kind, with the kind it was evaluated with if another."""
  evaluated = result.get('evaluation.attention')
  return result['attention.kind'] + (f' (eval {evaluated})' if evaluated else '')


def error_vs_depth(results):
  """Returns (png bytes, height, width) of error vs depth for the finished results."""
  kinds = sorted({kind_label(r) for r in results})
  fig, axes = plt.subplots(1, len(kinds), figsize=(4.5 * len(kinds), 3.6), squeeze=False, sharey=True)
  for ax, kind in zip(axes[0], kinds):
    runs = sorted((r for r in results if kind_label(r) == kind), key=lambda r: r['model.depth'])
    ks = sorted({int(key.rsplit('k', 1)[1]) for r in runs for key in r if key.startswith('eval/error_k')})
    series = {f'k={k}': f'eval/error_k{k}' for k in ks} or {'all': 'eval/error'}
    for label, key in series.items():
      points = [(r['model.depth'], r[key]) for r in runs if key in r]
      if points:
        ax.plot(*zip(*points), marker='o', label=label)
    ax.axhline(0.05, color='grey', linestyle=':', linewidth=1)
    ax.set_title(kind)
    ax.set_xlabel('depth')
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # depth is an integer
    ax.legend(fontsize=7)
  axes[0][0].set_ylabel('per-token error')
  return png(fig)


def png(fig):
  """(png bytes, height, width) of a finished figure, which is closed."""
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format='png', dpi=100)
  width, height = (int(x) for x in fig.canvas.get_width_height())
  plt.close(fig)
  return buffer.getvalue(), height, width


def best_over_hashes(rows):
  """{tables tuple: the row with the lowest mean error over z} for one run's grid rows."""
  best = {}
  for r in rows:
    key = tuple(r.tables)
    if key not in best or r.mean < best[key].mean:
      best[key] = r
  return best


def same_tables_every_layer(rows):
  """Whether every row gives each layer the same table count (one layer, or grid.tables_every_layer)."""
  return all(len(set(r.tables)) == 1 for r in rows)


def grid_figure(rows):
  """Figure 1 of the paper from grid rows: per run, error vs tables with one curve per z (one layer), or a
  heat map of layer-1 x layer-2 tables, best mean over z with the winning z (two layers)."""
  runs = list(dict.fromkeys(r.run for r in rows))
  fig, axes = plt.subplots(1, len(runs), figsize=(5.2 * len(runs), 4.2), squeeze=False)
  for ax, run in zip(axes[0], runs):
    mine = [r for r in rows if r.run == run]
    title = f"{mine[0].attention} beta={mine[0].beta:g}: surrogate {mine[0].surrogate_error:.3f}"
    if same_tables_every_layer(mine):
      for z in sorted({r.hashes for r in mine}):
        points = sorted((r.tables[0], r.mean, r.std) for r in mine if r.hashes == z)
        x, y, e = zip(*points)
        ax.errorbar(x, y, yerr=e, marker='o', markersize=3, capsize=2, label=f'z={z}')
      ax.set_xlabel('hash tables l' + (' (every layer)' if len(mine[0].tables) > 1 else ''))
      ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # tables are integers
      ax.set_ylabel(f"test error (mean over {mine[0].draws} draws)")
      ax.legend(fontsize=7)
    else:
      best = best_over_hashes(mine)
      rows_t, cols_t = sorted({k[0] for k in best}), sorted({k[1] for k in best})
      grid = np.full((len(rows_t), len(cols_t)), np.nan)
      for (a, b), r in best.items():
        grid[rows_t.index(a), cols_t.index(b)] = r.mean
      image = ax.imshow(grid, cmap='viridis_r', vmin=0.0, vmax=max(0.75, float(np.nanmax(grid))), aspect='auto')
      for (a, b), r in best.items():
        ax.text(cols_t.index(b), rows_t.index(a), f"{r.mean:.2f}\nz={r.hashes}", ha='center', va='center',
                fontsize=6, color='white' if r.mean > 0.4 else 'black')
      ax.set_xticks(range(len(cols_t)), cols_t)
      ax.set_yticks(range(len(rows_t)), rows_t)
      ax.set_xlabel('layer-2 tables')
      ax.set_ylabel('layer-1 tables')
      fig.colorbar(image, ax=ax, label='best mean error over z')
    ax.set_title(title, fontsize=9)
  return png(fig)


THEOREM_34 = 'Theorem 3.4: z = Theta(log N) hashes per table, l = Theta(N^(3 rho) log N) tables, rho < 1/3'


def fitted_slope(x, y):
  """Least-squares slope of y on x (None for fewer than 2 distinct points)."""
  x, y = np.asarray(x, float), np.asarray(y, float)
  return float(np.polyfit(x, y, 1)[0]) if len(set(x.tolist())) >= 2 else None


def heat_maps(panels, row_label='depth'):
  """PNG bytes: error per (row, k), one panel per variant, one colour scale (0..1); rows are depths (or what
  `row_label` names)."""
  names = list(panels)
  columns = min(4, len(names))
  rows_ = -(-len(names) // columns)
  fig, axes = plt.subplots(rows_, columns, figsize=(3.6 * columns, 2.9 * rows_), squeeze=False,
                           layout='constrained')  # room for the shared colour bar
  image = None
  for ax, name in zip(axes.flat, names):
    depths = sorted(panels[name])
    ks = sorted({k for d in depths for k in panels[name][d]})
    values = np.full((len(depths), len(ks)), np.nan)
    for i, d in enumerate(depths):
      for j, k in enumerate(ks):
        values[i, j] = panels[name][d].get(k, np.nan)
    image = ax.imshow(values, cmap='viridis_r', vmin=0.0, vmax=1.0, aspect='auto', origin='lower')
    for i in range(len(depths)):
      for j in range(len(ks)):
        if np.isfinite(values[i, j]):
          ax.text(j, i, f'{100 * values[i, j]:.0f}', ha='center', va='center', fontsize=6,
                  color='white' if values[i, j] > 0.5 else 'black')
    ax.set_xticks(range(len(ks)), ks)
    ax.set_yticks(range(len(depths)), depths)
    ax.set_xlabel('k (hops)')
    ax.set_ylabel(row_label)
    ax.set_title(name, fontsize=8)
  for ax in list(axes.flat)[len(names):]:
    ax.axis('off')
  if image is not None:
    fig.colorbar(image, ax=axes.ravel().tolist(), label='error on answer tokens (cells: %)', shrink=0.8)
  buffer = io.BytesIO()  # not png(): its tight layout would undo the constrained one
  fig.savefig(buffer, format='png', dpi=100)
  plt.close(fig)
  return buffer.getvalue()

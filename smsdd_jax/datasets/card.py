"""The dataset card: what a build holds and what was done to make it.

Made once per build (`make`), stored in the build's metadata (`info.metadata
['card']`), written beside the build as `dataset_card.md` and printed when the
build happens. It says: where the files came from (folder and fingerprint),
the preprocessing, counts per class and defect type in every split and fold,
the near-duplicate groups (sizes, the largest, every group that mixes labels
with its files), how many images were enlarged more than
`preprocess.ENLARGEMENT_LIMIT` times along a side (and the worst), files
skipped with their reasons, and warnings (unbalanced folds, a group too large
to be one object, enlarged images, folders labelled by the default rule
beside a classes.json).
"""
from __future__ import annotations

import collections
from typing import Sequence

from smsdd_jax import preprocess

LARGE_GROUP_SHARE = 0.05  # A group holding more of the set than this is suspect.


def _counts(idx: Sequence[int], values: Sequence[str]) -> dict[str, int]:
  return dict(sorted(collections.Counter(values[i] for i in idx).items()))


def group_report(groups: Sequence[int], labels: Sequence[str], files: Sequence[str]) -> dict:
  """Group sizes, the largest group, and every group mixing labels."""
  members = collections.defaultdict(list)
  for i, g in enumerate(groups):
    members[g].append(i)
  sizes = collections.Counter(len(m) for m in members.values())
  mixed = [{'group': int(g), 'files': [f'{files[i]} ({labels[i]})' for i in m]}
           for g, m in sorted(members.items()) if len({labels[i] for i in m}) > 1]
  largest = max(members.values(), key=len) if members else []
  return {'num_groups': len(members),
          'size_histogram': {int(k): int(v) for k, v in sorted(sizes.items())},
          'largest': len(largest),
          'largest_examples': [files[i] for i in largest[:5]],
          'mixed_labels': mixed}


def enlargement_report(factors: Sequence[float], files: Sequence[str],
                       limit: float = preprocess.ENLARGEMENT_LIMIT) -> dict:
  """How many images were enlarged more than `limit` times along a side,
  and the most enlarged one (factors: `preprocess.enlargement`, per file)."""
  over = [i for i, f in enumerate(factors) if f > limit]
  worst = max(over, key=lambda i: factors[i]) if over else None
  return {'limit': float(limit), 'count': len(over),
          'worst': None if worst is None else
                   {'file': files[worst], 'factor': round(float(factors[worst]), 1)}}


def make(*, name: str, source: dict, preprocessing: str, members: dict[str, list[int]],
         labels: Sequence[str], defect_types: Sequence[str], files: Sequence[str],
         groups: Sequence[int], skipped: Sequence[Sequence[str]],
         warnings: Sequence[str], enlargement: Sequence[float] = ()) -> dict:
  """The card as a JSON-able dict. enlargement: per file, how many times
  its most enlarged side grew (empty: not measured)."""
  grouping = group_report(groups, labels, files)
  warnings = list(warnings)
  n = len(labels)
  enlarged = enlargement_report(enlargement, files)
  if enlarged['count']:
    worst = enlarged['worst']
    warnings.append(
        f"{enlarged['count']} of {n} images enlarged more than {enlarged['limit']:g}x "
        f"along a side (worst {worst['file']}: {worst['factor']:g}x): they hold little "
        'detail at this input size; check them, or build at a smaller '
        'config.data.image_size')
  if n and grouping['largest'] > max(6, LARGE_GROUP_SHARE * n):
    warnings.append(
        f"one near-duplicate group holds {grouping['largest']} of {n} images (e.g. "
        f"{', '.join(grouping['largest_examples'][:3])}): grouping may be too coarse "
        'for this data; set config.data.near_dup_threshold lower, or -1 for off')
  if grouping['mixed_labels']:
    warnings.append(f"{len(grouping['mixed_labels'])} group(s) mix good and defective "
                    'images (listed under groups): check those labels')
  return {
      'name': name, 'source': source, 'preprocessing': preprocessing,
      'num_examples': n,
      'classes': {s: _counts(idx, labels) for s, idx in members.items()},
      'defect_types': {s: _counts(idx, defect_types) for s, idx in members.items()},
      'groups': grouping, 'enlarged': enlarged, 'skipped': [list(s) for s in skipped],
      'warnings': warnings}


def _table(rows: dict[str, dict[str, int]]) -> list[str]:
  cols = sorted({c for r in rows.values() for c in r})
  out = ['| split | ' + ' | '.join(cols) + ' |', '|---' * (len(cols) + 1) + '|']
  out += [f'| {s} | ' + ' | '.join(str(r.get(c, 0)) for c in cols) + ' |'
          for s, r in rows.items()]
  return out


def _enlarged_line(enlarged: dict | None) -> str:
  if not enlarged:  # A card made before this was measured.
    return 'Enlarged images: not measured.'
  worst = enlarged['worst']
  return (f"Enlarged more than {enlarged['limit']:g}x along a side: {enlarged['count']}"
          + (f" (worst `{worst['file']}`, {worst['factor']:g}x)." if worst else '.'))


def to_markdown(card: dict) -> str:
  src, grp = card['source'], card['groups']
  lines = [f"# Dataset card: {card['name']}", '',
           f"Source: `{src.get('root', '')}` ({src.get('num_files', '?')} files, "
           f"fingerprint {src.get('fingerprint', '?')[:16]})", '',
           f"Preprocessing: {card['preprocessing']}", '',
           _enlarged_line(card.get('enlarged')), '',
           f"{card['num_examples']} examples in {grp['num_groups']} near-duplicate groups "
           f"(sizes: {grp['size_histogram']}; largest {grp['largest']}).", '',
           '## Classes', '', *_table(card['classes']), '',
           '## Defect types', '', *_table(card['defect_types']), '']
  if grp['mixed_labels']:
    lines += ['## Groups that mix labels', '']
    lines += [f"- group {m['group']}: " + ', '.join(m['files']) for m in grp['mixed_labels']]
    lines.append('')
  lines += [f"## Skipped files ({len(card['skipped'])})", '']
  lines += [f'- `{f}`: {why}' for f, why in card['skipped']] or ['none']
  lines += ['', '## Warnings', '']
  lines += [f'- {w}' for w in card['warnings']] or ['none']
  return '\n'.join(lines) + '\n'


def summary_line(card: dict) -> str:
  """What a build prints: one line, then one per warning."""
  n_by_class = collections.Counter()
  for split, counts in card['classes'].items():
    if not split.startswith('fold_'):
      n_by_class.update(counts)
  classes = ', '.join(f'{v} {k}' for k, v in sorted(n_by_class.items()))
  return (f"{card['name']}: {card['num_examples']} examples ({classes}) in "
          f"{card['groups']['num_groups']} groups; {card['preprocessing']}; "
          f"{len(card['skipped'])} file(s) skipped")

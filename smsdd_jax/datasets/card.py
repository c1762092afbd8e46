"""The dataset card: what a build holds and what was done to make it.

Made once per build (`make`), stored in the build's metadata (`info.metadata
['card']`), written beside the build as `dataset_card.md` and printed when the
build happens. It says: where the files came from (folder and fingerprint),
the preprocessing, counts per class and defect type in every split and fold,
the near-duplicate groups (sizes, the largest, every group that mixes labels
with its files), files skipped with their reasons, and warnings (unbalanced
folds, a group too large to be one object).
"""
from __future__ import annotations

import collections
from typing import Sequence

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


def make(*, name: str, source: dict, preprocessing: str, members: dict[str, list[int]],
         labels: Sequence[str], defect_types: Sequence[str], files: Sequence[str],
         groups: Sequence[int], skipped: Sequence[Sequence[str]],
         warnings: Sequence[str]) -> dict:
  """The card as a JSON-able dict."""
  grouping = group_report(groups, labels, files)
  warnings = list(warnings)
  n = len(labels)
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
      'groups': grouping, 'skipped': [list(s) for s in skipped], 'warnings': warnings}


def _table(rows: dict[str, dict[str, int]]) -> list[str]:
  cols = sorted({c for r in rows.values() for c in r})
  out = ['| split | ' + ' | '.join(cols) + ' |', '|---' * (len(cols) + 1) + '|']
  out += [f'| {s} | ' + ' | '.join(str(r.get(c, 0)) for c in cols) + ' |'
          for s, r in rows.items()]
  return out


def to_markdown(card: dict) -> str:
  src, grp = card['source'], card['groups']
  lines = [f"# Dataset card: {card['name']}", '',
           f"Source: `{src.get('root', '')}` ({src.get('num_files', '?')} files, "
           f"fingerprint {src.get('fingerprint', '?')[:16]})", '',
           f"Preprocessing: {card['preprocessing']}", '',
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

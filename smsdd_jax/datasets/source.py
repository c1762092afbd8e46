"""What a build was made from: the source folder's fingerprint.

TFDS caches a build under name/config/version only, so a second folder built
into the same data_dir used to read the first folder's images without a word.
Every folder-built dataset therefore carries the fingerprint of its source in
its config name (`<config>_<aspect>_<channels>_<fingerprint[:10]>`): another
folder, or the same folder with one file changed, added or removed, builds
into its own place, and two folders never share a build.

The fingerprint is exact and still fast (the public sets hash in well under a
second): sha256 over every file's relative path, size and content sha256, in
sorted order. Hidden files and folders are left out (they are never read).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib

DOWNLOAD = 'download'  # The fingerprint of a build whose files are downloaded.


@dataclasses.dataclass(frozen=True)
class Fingerprint:
  digest: str  # sha256 hex, or DOWNLOAD.
  num_files: int
  num_bytes: int

  @property
  def short(self) -> str:
    return self.digest[:10]


def _files(root: pathlib.Path) -> list[pathlib.Path]:
  out = []
  for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
    dirnames[:] = sorted(d for d in dirnames if not d.startswith('.'))
    out += [pathlib.Path(dirpath, f) for f in filenames if not f.startswith('.')]
  return sorted(out, key=lambda p: p.relative_to(root).as_posix())


def check_root(root: str, field: str = 'config.data.manual_dir') -> pathlib.Path:
  """The folder as a Path, or ValueError in one line saying what is wrong."""
  if not root:
    raise ValueError(f'{field} is empty: this dataset is built from a folder of images')
  path = pathlib.Path(root).expanduser()
  if not path.exists():
    raise ValueError(f'{field}={root!r}: no such folder')
  if not path.is_dir():
    raise ValueError(f'{field}={root!r}: not a folder')
  if not os.access(path, os.R_OK | os.X_OK):
    raise ValueError(f'{field}={root!r}: folder not readable')
  return path.resolve()


def fingerprint(root: pathlib.Path) -> Fingerprint:
  """sha256 of (relative path, size, content sha256) of every file under root."""
  outer = hashlib.sha256()
  count = total = 0
  for p in _files(root):
    try:
      data = p.read_bytes()
    except OSError as e:  # Unreadable files change the build too: hash the reason.
      data = f'<unreadable: {e.strerror}>'.encode()
    outer.update(p.relative_to(root).as_posix().encode() + b'\0')
    outer.update(str(len(data)).encode() + b'\0')
    outer.update(hashlib.sha256(data).digest())
    count, total = count + 1, total + len(data)
  if not count:
    raise ValueError(f'{root}: the folder holds no files')
  return Fingerprint(outer.hexdigest(), count, total)

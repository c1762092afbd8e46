"""Compiles smsdd_jax/onednn's conv library (C++: oneDNN + XLA FFI) when it can.

Everything else of the package is pure Python and described in
pyproject.toml. The library is optional: where it cannot be built (no g++,
no onednn wheels for this platform, SMSDD_NO_ONEDNN=1 in the environment)
the build prints a warning and the install goes on; smsdd_jax.onednn then
falls back to the pure-JAX conv and says so in one line.

Headers and libdnnl come from the build requirements of pyproject.toml,
found through their installed file lists so that pip's isolated build
environment works: oneDNN's from onednn-devel-cpu-gomp (which pulls
onednn-cpu-gomp, the library itself), XLA's FFI headers from jaxlib.
"""
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ONEDNN_HEADERS = ('onednn-devel-cpu-gomp', 'include/oneapi/dnnl/dnnl.hpp')
ONEDNN_LIBRARY = ('onednn-cpu-gomp', 'libdnnl.so.3')
FFI_HEADERS = ('jaxlib', 'jaxlib/include/xla/ffi/api/ffi.h')


def _installed_file(dist: str, suffix: str) -> Path:
  """Absolute path of the file of installed package `dist` ending in suffix."""
  for f in metadata.distribution(dist).files or []:
    if str(f).endswith(suffix):
      return Path(f.locate()).resolve()
  raise FileNotFoundError(f'no {suffix} in the installed {dist} package')


def _include_dir(header: Path, relative: str) -> Path:
  """The directory `relative` (e.g. 'oneapi/dnnl/dnnl.hpp') is found under."""
  return header.parents[len(Path(relative).parts) - 1]


def _compile_command(source: str, output: str) -> list:
  dnnl_hpp = _installed_file(*ONEDNN_HEADERS)
  ffi_h = _installed_file(*FFI_HEADERS)
  libdnnl = _installed_file(*ONEDNN_LIBRARY)
  return [
      os.environ.get('CXX', 'g++'), '-O2', '-std=c++17', '-shared', '-fPIC',
      '-fvisibility=hidden',
      # -isystem: the third-party headers' own warnings are not ours to fix.
      '-isystem', str(_include_dir(dnnl_hpp, 'oneapi/dnnl/dnnl.hpp')),
      '-isystem', str(_include_dir(ffi_h, 'xla/ffi/api/ffi.h')),
      source, '-o', output,
      # Linked by path: the build environment's copy only provides the soname
      # (libdnnl.so.3); at run time the runtime package's copy is found by
      # the rpath below, for the venv layouts <prefix>/lib/pythonX.Y/
      # site-packages/smsdd_jax/onednn (a regular install) and <prefix>/lib
      # of the installing interpreter (an editable one, whose library sits in
      # the source tree). smsdd_jax.onednn also preloads it by its
      # installed path, which covers any other layout.
      str(libdnnl),
      '-Wl,-rpath,$ORIGIN/../../../..',
      f'-Wl,-rpath,{Path(sys.prefix) / "lib"}',
  ]


class BuildOptionalOnednn(build_ext):
  """build_ext that runs g++ itself (the library is not a Python module)
  and turns any failure into a warning."""

  def build_extensions(self):
    # An extension that was not built is dropped from the list, so that the
    # later steps (the copy into the source tree of an editable install, the
    # wheel's file list) do not look for it.
    self.extensions = [ext for ext in self.extensions if self._build(ext)]

  def _build(self, ext) -> bool:
    if os.environ.get('SMSDD_NO_ONEDNN'):
      return self._skip('SMSDD_NO_ONEDNN is set')
    output = self.get_ext_fullpath(ext.name)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    try:
      cmd = _compile_command(ext.sources[0], output)
    except (metadata.PackageNotFoundError, FileNotFoundError) as e:
      return self._skip(f'build requirement missing: {e}')
    print(' '.join(cmd), flush=True)
    try:
      subprocess.run(cmd, check=True)
    except (OSError, subprocess.CalledProcessError) as e:
      return self._skip(f'compiling failed: {e}')
    return True

  @staticmethod
  def _skip(why: str) -> bool:
    print(f'WARNING: smsdd_jax.onednn conv library not built ({why}); '
          'smsdd_jax will use its pure-JAX conv instead.', file=sys.stderr, flush=True)
    return False


setup(
    ext_modules=[Extension('smsdd_jax.onednn._conv_ffi',
                           sources=['smsdd_jax/onednn/conv_ffi.cc'])],
    cmdclass={'build_ext': BuildOptionalOnednn},
)

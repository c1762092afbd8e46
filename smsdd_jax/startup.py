"""A run's start-up, phase by phase, and the compilation cache that shortens it.

Before its first step a run imports its libraries, opens (or builds) its data,
counts its splits, computes its normalisation, initialises and restores the
model, reads its training images and compiles the train and eval steps.
`Clock` times each phase, and how much of it XLA spent compiling, and
train.py logs them as one line before step 1:

  start-up: imports 2.4 s, tensorflow 3.9 s, data 0.6 s, splits 0.9 s, ...,
  init 10.8 s (compiling 10.6 s), restore 0.0 s, pairs 0.4 s, compile 3.1 s
  (compiling 2.6 s); 23.4 s

On a CPU most of it is compiling, and the same programs every time: the
model's initialisation (drawing each layer's random weights compiles one
random-number kernel per layer, ~0.7 s each, whatever the width) and the
steps. JAX's persistent compilation cache keeps compiled programs on disk,
so a later run (of a sweep, or the same command again) loads them instead.
`enable_compile_cache` turns it on (main.py's --compile_cache, which
launch/sweep.py sets for its runs). A cached program is the compiled program
itself: the numbers are the same with and without it (tests/test_startup.py).
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import stat
import time

import jax

from smsdd_jax import rundir

log = logging.getLogger('smsdd_jax')

# XLA's compile of one program (or its load from the persistent cache):
# jax._src.dispatch.BACKEND_COMPILE_EVENT, reported through jax.monitoring.
COMPILE_EVENT = '/jax/core/compile/backend_compile_duration'
CACHE_HIT_EVENT = '/jax/compilation_cache/cache_hits'
# Programs that compile faster than this are not worth a cache entry (a read
# costs a few ms); the steps and the initialisation take seconds.
MIN_COMPILE_SECONDS = 0.1

_totals = {'compile_s': 0.0, 'cache_hits': 0}
_listening = False


def _on_duration(event: str, duration: float, **_) -> None:
  if event == COMPILE_EVENT:
    _totals['compile_s'] += duration


def _on_event(event: str, **_) -> None:
  if event == CACHE_HIT_EVENT:
    _totals['cache_hits'] += 1


def _listen() -> None:
  global _listening
  if not _listening:
    jax.monitoring.register_event_duration_secs_listener(_on_duration)
    jax.monitoring.register_event_listener(_on_event)
    _listening = True


def compile_seconds() -> float:
  """Seconds XLA has spent compiling (or loading from the cache) in this
  process since the first Clock."""
  return _totals['compile_s']


class Clock:
  """The phases of one run's start-up: (name, seconds, of which compiling)."""

  def __init__(self, started: float | None = None, **earlier: float):
    """started: time.perf_counter() when the start-up began (default now);
    earlier: phases timed before the run began, e.g. imports=2.4 (main.py)."""
    _listen()
    self.started = time.perf_counter() if started is None else started
    self.phases = [(name, seconds, 0.0) for name, seconds in earlier.items()]
    self._hits = _totals['cache_hits']
    self.logged = False

  @contextlib.contextmanager
  def phase(self, name: str):
    start, compiled = time.perf_counter(), _totals['compile_s']
    try:
      yield
    finally:
      self.phases.append((name, time.perf_counter() - start,
                          _totals['compile_s'] - compiled))

  def seconds(self) -> dict:
    """{phase: (seconds, of which compiling)} in the order first timed, a
    phase timed twice summed; 'other': the time between phases."""
    out = {}
    for name, seconds, compiled in self.phases:
      was = out.get(name, (0.0, 0.0))
      out[name] = (was[0] + seconds, was[1] + compiled)
    out['other'] = (max(time.perf_counter() - self.started
                        - sum(s for s, _ in out.values()), 0.0), 0.0)
    return out

  def line(self) -> str:
    """'start-up: imports 2.4 s, data 0.6 s, init 10.8 s (compiling 10.6 s),
    ..., other 0.2 s; 23.4 s' and, where the compilation cache served
    programs, how many."""
    phases = self.seconds()
    parts = [f'{name} {seconds:.1f} s' + (f' (compiling {compiled:.1f} s)'
                                          if compiled >= 0.05 else '')
             for name, (seconds, compiled) in phases.items()]
    total = sum(seconds for seconds, _ in phases.values())
    hits = _totals['cache_hits'] - self._hits
    cached = f'; {hits} program(s) from the compilation cache' if hits else ''
    return f'start-up: {", ".join(parts)}; {total:.1f} s{cached}'

  def log_once(self) -> None:
    if not self.logged:
      log.info('%s', self.line())
      self.logged = True


# ------------------------------------------------------------ compile cache


def default_cache_dir() -> str:
  """$XDG_CACHE_HOME/smsdd_jax/jax_compile (~/.cache/... by default)."""
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'smsdd_jax', 'jax_compile')


def machine_key() -> str:
  """The folder of this JAX and this processor inside a cache directory.
  JAX's own keys hold the jaxlib version, the platform, XLA's flags and the
  program; the jax version and the CPU's instruction sets are added, so that
  a cache on a shared home never hands one machine code compiled for another."""
  flags = rundir.cpu_field('flags')
  cpu = hashlib.sha256(f'{platform.machine()} {flags}'.encode()).hexdigest()[:12]
  return f'jax{jax.__version__}-{platform.machine()}-{cpu}'


def _safe(path: str) -> str | None:
  """Why `path` must not hold a compilation cache (None: it may). Whoever
  can write a cache can run code in the processes that read it (JAX's
  warning), so it must be the user's own and closed to others."""
  try:
    info = os.stat(path)
  except OSError as e:
    return f'cannot read it ({e.strerror})'
  if hasattr(os, 'getuid') and info.st_uid != os.getuid():
    return 'it belongs to another user'
  if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
    return 'others may write to it'
  return None


def enable_compile_cache(directory: str) -> str | None:
  """Turns JAX's persistent compilation cache on, in
  directory/<machine_key()>, before anything is compiled; returns that
  folder, or None (with a warning saying why) where it cannot be used
  safely. Entries are written for programs that take MIN_COMPILE_SECONDS
  or more to compile."""
  directory = os.path.abspath(os.path.expanduser(directory))
  folder = os.path.join(directory, machine_key())
  try:
    os.makedirs(folder, mode=0o700, exist_ok=True)
  except OSError as e:
    log.warning('compilation cache off: cannot create %s (%s)', folder, e.strerror)
    return None
  for path in (directory, folder):
    why = _safe(path)
    if why:
      log.warning('compilation cache off: %s: %s', path, why)
      return None
  jax.config.update('jax_compilation_cache_dir', folder)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', MIN_COMPILE_SECONDS)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', -1)
  return folder

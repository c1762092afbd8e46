"""Loss terms of SMSDD and a registry to swap or add them.

The paper's objective (eq. 8) is  L = CE + beta * contrastive.  Here:

  L = terms[config.loss.classification]           (weight 1)
    + beta * terms[config.loss.pair]               (beta = config.loss.beta)
    + sum(w * terms[name] for name, w in config.loss.extra.items())

A research variant is one registered function and one config line. The
function may live in any module imported before the run starts: the config
file itself is the simplest place (configs/examples/smoothed_ce.py):

  @losses.register('my_term', check=lambda cfg: ...)  # check: optional
  def my_term(ctx, cfg):   # ctx: the CONTEXT below; cfg: config.loss
    return ...             # a float32 scalar

  config.loss.extra = {'my_term': 0.5}     # or --config.loss.pair=my_term

A run carries its terms: config.json records the source text of every file
that defined a term in use outside this package (`term_sources`), and
`inference.load_run` runs it again where the term is not registered
(`register_from_run`). So that file is executed on loading: a script keeps
its own work under `if __name__ == '__main__':`.

`ctx`, what a term receives (N pairs per step, so 2N images; traced arrays):

  logits  (2N, 2) float   classifier outputs, images a then images b
  labels  (2N,)   int32   0 good, 1 defective, in the order of logits
  emb_a   (N, d)  float   embeddings of the pairs' first images
  emb_b   (N, d)  float   embeddings of the pairs' second images
  same    (N,)    float32 1.0 for a same-class pair, else 0.0
  rng     PRNG key        fresh per step, for a stochastic term

The float dtype is config.model.dtype's; d depends on config.model.embedding.
With 'flatten_l2' (the default) or 'gap_l2' every embedding has norm 1, so a
penalty on the embedding norm is a constant there (zero gradient).

The base losses below are pure, keyword-only after their tensors, and reduce
to a scalar mean exactly as their docstrings state (reductions differ between
libraries, so beta and margin only transfer between identical reductions).
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import linecache
import math
import os
import sys
import types
from typing import Callable, Mapping, Optional

import jax
import jax.numpy as jnp

LossContext = Mapping[str, jax.Array]
LossTerm = Callable[[LossContext, object], jax.Array]


def pairwise_distance(emb_a: jax.Array, emb_b: jax.Array) -> jax.Array:
  """Euclidean distance per pair, with a finite gradient at distance 0.

  d/dx sqrt(x) is infinite at 0 and identical pairs hit it (jax #4177): the
  clamp keeps sqrt's argument positive, so the gradient there is 0, not NaN.
  """
  sq = jnp.sum(jnp.square(emb_a - emb_b), axis=-1)
  return jnp.sqrt(jnp.maximum(sq, 1e-12))


def contrastive_loss(emb_a: jax.Array, emb_b: jax.Array, same: jax.Array, *,
                     margin: float) -> jax.Array:
  """Hadsell et al. (2006), the paper's eq. 4 with Y in {0, 1}.

  mean over pairs of 0.5 * [same * D^2 + (1 - same) * max(margin - D, 0)^2],
  D the Euclidean distance, `same` 1.0 for a same-class pair, else 0.0.
  """
  # D^2 straight from the sum of squares: exact 0 for identical embeddings.
  sq = jnp.sum(jnp.square(emb_a - emb_b), axis=-1)
  d = pairwise_distance(emb_a, emb_b)
  same = same.astype(d.dtype)
  per_pair = same * sq + (1.0 - same) * jnp.square(jnp.maximum(margin - d, 0.0))
  return 0.5 * jnp.mean(per_pair)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Softmax cross-entropy with integer labels, mean over examples (eq. 3)."""
  return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - pick(logits, labels))


def pick(values: jax.Array, labels: jax.Array) -> jax.Array:
  """values[i, labels[i]], as a one-hot contraction: exactly the picked value
  (the others add 0 x a finite number), and its gradient is no scatter, which
  jax 0.11 refuses to shard on the train step's explicit mesh (the batch
  split over 'data'; take_along_axis, as optax's integer-label cross-entropy
  uses, fails there)."""
  return jnp.sum(values * jax.nn.one_hot(labels, values.shape[-1], dtype=values.dtype),
                 axis=-1)


def focal_loss(logits: jax.Array, labels: jax.Array, *, gamma: float) -> jax.Array:
  """Lin et al. (2017) focal loss, mean over examples; gamma = 0 is CE.

  Down-weights easy examples, a common remedy for a rare defective class.
  """
  log_p = jax.nn.log_softmax(logits)
  log_pt = pick(log_p, labels)
  return jnp.mean(-jnp.power(1.0 - jnp.exp(log_pt), gamma) * log_pt)


def cosine_margin_loss(emb_a: jax.Array, emb_b: jax.Array, same: jax.Array, *,
                       margin: float) -> jax.Array:
  """Pair loss on cosine similarity s: same pairs pull s to 1, different
  pairs push s below `margin`. Mean over pairs of
  same * (1 - s) + (1 - same) * max(s - margin, 0)."""
  s = jnp.sum(emb_a * emb_b, -1) * jax.lax.rsqrt(
      jnp.sum(emb_a ** 2, -1) * jnp.sum(emb_b ** 2, -1) + 1e-12)
  same = same.astype(s.dtype)
  return jnp.mean(same * (1.0 - s) + (1.0 - same) * jnp.maximum(s - margin, 0.0))


# ------------------------------------------------------------------ registry


@dataclasses.dataclass(frozen=True)
class _Entry:
  fn: LossTerm
  check: Optional[Callable[[object], None]]


_TERMS: dict[str, _Entry] = {}
# (file, text) of the recorded source a term was registered from by
# `register_from_run`: the file on disk may have changed since.
_RECORDED: dict[str, tuple[str, str]] = {}


def _origin(fn) -> tuple[str, str]:
  return (getattr(fn, '__module__', '?'), getattr(fn, '__qualname__', repr(fn)))


def _same_function(a, b) -> bool:
  """The same definition, perhaps re-executed: same module and qualified
  name (a notebook cell run again), or same file and qualified name (a config
  file loaded under another module name: ml_collections calls it
  'config_config', importlib by its file name)."""
  if _origin(a) == _origin(b):
    return True
  file_a, file_b = (getattr(getattr(f, '__code__', None), 'co_filename', None) for f in (a, b))
  if file_a is None or file_b is None:
    return False
  # A relative path (a config named relative to the cwd) against an absolute one.
  return (os.path.realpath(file_a) == os.path.realpath(file_b)
          and getattr(a, '__qualname__', None) == getattr(b, '__qualname__', None))


def register(name: str, *, check: Optional[Callable[[object], None]] = None
             ) -> Callable[[LossTerm], LossTerm]:
  """Decorator: registers `fn(ctx, loss_config) -> scalar` under `name`.

  `check(loss_config)`, optional, validates the term's own parameters (its
  fields of config.loss) before anything compiles, raising ValueError in one
  line naming the field; it runs only when the term is in use. Registering the
  same function again (same module, or same file, and qualified name: a
  re-run notebook cell, a config file loaded twice) replaces it; a different
  function under a taken name is refused.
  """
  def wrap(fn: LossTerm) -> LossTerm:
    if name in _TERMS and not _same_function(_TERMS[name].fn, fn):
      raise ValueError(f'loss term {name!r} is already registered by '
                       f'{".".join(_origin(_TERMS[name].fn))}; pick another name')
    _TERMS[name] = _Entry(fn, check)
    _RECORDED.pop(name, None)
    return fn
  return wrap


def get_term(name: str) -> LossTerm:
  if name not in _TERMS:
    raise KeyError(f'unknown loss term {name!r}; registered: {sorted(_TERMS)}')
  return _TERMS[name].fn


def registered() -> list[str]:
  return sorted(_TERMS)


def _finite(loss_config, field: str, low: float, high: float = math.inf, *,
            low_open: bool = False, high_open: bool = False,
            where: str = 'config.loss') -> float:
  """<where>.<field> as a float in the interval, or one-line ValueError."""
  value = loss_config[field]
  try:
    x = float(value)
  except (TypeError, ValueError):
    raise ValueError(f'{where}.{field}={value!r}: must be a number') from None
  below = x <= low if low_open else x < low
  above = x >= high if high_open else x > high
  if not math.isfinite(x) or below or above:
    interval = (f'{"(" if low_open else "["}{low:g}, {high:g}{")" if high_open else "]"}'
                if math.isfinite(high) else f'{">" if low_open else ">="} {low:g}')
    raise ValueError(f'{where}.{field}={value!r}: must be finite and '
                     f'{"in " if math.isfinite(high) else ""}{interval}')
  return x


@register('cross_entropy')
def _cross_entropy_term(ctx, cfg):
  del cfg
  return cross_entropy(ctx['logits'], ctx['labels'])


@register('focal', check=lambda cfg: _finite(cfg, 'focal_gamma', 0.0))
def _focal_term(ctx, cfg):
  return focal_loss(ctx['logits'], ctx['labels'], gamma=cfg.focal_gamma)


@register('contrastive', check=lambda cfg: _finite(cfg, 'margin', 0.0, low_open=True))
def _contrastive_term(ctx, cfg):
  return contrastive_loss(ctx['emb_a'], ctx['emb_b'], ctx['same'], margin=cfg.margin)


# A cosine lies in [-1, 1]: a margin of 1 or more never pushes a different
# pair apart, one below -1 always does, so both are refused.
@register('cosine_margin',
          check=lambda cfg: _finite(cfg, 'cosine_margin', -1.0, 1.0, high_open=True))
def _cosine_margin_term(ctx, cfg):
  return cosine_margin_loss(ctx['emb_a'], ctx['emb_b'], ctx['same'],
                            margin=cfg.cosine_margin)


def terms_in_use(loss_config) -> dict[str, float]:
  """{term: weight} of the objective, in the order combined_loss adds them
  (a term named twice keeps its last weight)."""
  return {loss_config.classification: 1.0, loss_config.pair: float(loss_config.beta),
          **{k: float(w) for k, w in loss_config.extra.items()}}


def _require_config_dict(loss_config) -> None:
  if isinstance(loss_config, Mapping):  # ConfigDict is not a Mapping.
    raise TypeError('loss_config must be an ml_collections.ConfigDict such as '
                    'configs/default.py get_config().loss, not a '
                    f'{type(loss_config).__name__}: wrap it with ConfigDict(...)')


def validate(loss_config) -> None:
  """Fails before any compile on an unknown term, a bad weight, or a bad
  parameter of a term in use (each term's own check); one line naming the
  field. Parameters of terms not in use are not checked."""
  _require_config_dict(loss_config)
  for field in ('classification', 'pair'):
    name = loss_config[field]
    if name not in _TERMS:
      raise ValueError(f'config.loss.{field}={name!r}: unknown loss term; '
                       f'registered: {registered()}')
  for name in loss_config.extra:
    if name not in _TERMS:
      raise ValueError(f'config.loss.extra.{name}: unknown loss term; '
                       f'registered: {registered()}')
    _finite(loss_config.extra, name, 0.0, where='config.loss.extra')
  _finite(loss_config, 'beta', 0.0)
  for name in terms_in_use(loss_config):
    if _TERMS[name].check is not None:
      _TERMS[name].check(loss_config)


def describe(loss_config) -> dict[str, dict]:
  """{term: {'weight', 'module', 'source'}} of the terms in use, for
  config.json: where each term was defined (source relative to the current
  directory when below it)."""
  out = {}
  for name, weight in terms_in_use(loss_config).items():
    fn = get_term(name)
    try:
      source = inspect.getsourcefile(fn) or ''
    except TypeError:  # A builtin or C function.
      source = ''
    if source and os.path.abspath(source).startswith(os.getcwd() + os.sep):
      source = os.path.relpath(source)
    out[name] = {'weight': weight, 'module': fn.__module__,
                 'function': getattr(fn, '__qualname__', ''), 'source': source}
  return out


def _source_of(name: str) -> tuple[str, str]:
  """(file, text) of the file that defined registered term `name`: the
  recorded one it was registered from, else the file as it is now (a
  notebook cell's text through linecache); ('', '') where none is known."""
  if name in _RECORDED:
    return _RECORDED[name]
  fn = _TERMS[name].fn
  code = getattr(fn, '__code__', None)
  if code is None:  # A partial or a callable object: no file to record.
    return '', ''
  file = code.co_filename
  linecache.checkcache(file)  # The file as it is now, not as first read.
  text = ''.join(linecache.getlines(file, getattr(fn, '__globals__', None)))
  if not text:
    return '', ''
  return (file if file.startswith('<') else os.path.abspath(file)), text


def _builtin(name: str) -> bool:
  module = getattr(_TERMS[name].fn, '__module__', None) or ''
  return module.split('.')[0] == __name__.split('.')[0]


def term_sources(loss_config) -> dict[str, dict]:
  """{term: {'file', 'code'}} of the terms in use defined outside this
  package, for config.json: the whole text of the defining file (a config
  file, a module, a notebook cell), so that `register_from_run` can register
  the term again where it was never imported. A term whose text cannot be
  read records code ''."""
  out = {}
  for name in terms_in_use(loss_config):
    get_term(name)  # Unknown: the one-line KeyError.
    if not _builtin(name):
      file, code = _source_of(name)
      out[name] = {'file': file, 'code': code}
  return out


def register_from_run(workdir: str) -> list[str]:
  """Registers the loss terms a run used (config.json's "loss_terms") that
  are not registered here, by running the source text the run recorded
  ("loss_term_sources", `term_sources`); returns the names it registered.

  Raises ValueError in one line naming config.json and the term when a term
  is not registered and the run recorded no source for it, when its recorded
  source fails or does not register it, or when a term of that name is
  registered here from another text (an edited config file: its loss would
  not be the run's)."""
  path = os.path.join(workdir, 'config.json')
  with open(path, encoding='utf-8') as f:
    info = json.load(f)
  names = list(info.get('loss_terms') or {})
  if not names:  # A run from before config.json recorded its terms.
    loss = (info.get('config') or {}).get('loss') or {}
    names = [loss.get('classification'), loss.get('pair'), *(loss.get('extra') or {})]
  recorded = info.get('loss_term_sources') or {}
  added = []
  for name in filter(None, names):
    source = recorded.get(name) or {}
    if name in _TERMS:
      if source.get('code') and _source_of(name)[1] != source.get('code'):
        raise ValueError(f'{path}: loss term {name!r} is registered here from '
                         f'{_source_of(name)[0] or "?"}, which differs from the source the '
                         f'run recorded ({source.get("file")}); load the run in a process '
                         f'where {name!r} is not registered')
      continue
    if not source.get('code'):
      where = source.get('file') or (info.get('loss_terms') or {}).get(name, {}).get('source')
      raise ValueError(f'{path}: loss term {name!r} is not registered and the run recorded '
                       f'no source for it; import the file that defines it first '
                       f'({where or "unknown"})')
    _exec_recorded(name, source['file'], source['code'], path)
    added.append(name)
  return added


def _exec_recorded(name: str, file: str, code: str, where: str) -> None:
  """Runs a recorded source as a fresh module (not '__main__', so a script's
  own work stays out) and keeps its text as the source of every term it
  registers."""
  module = types.ModuleType(f'_smsdd_recorded_{name}')
  module.__file__ = file
  sys.modules[module.__name__] = module  # For dataclasses and pickling in it.
  try:
    exec(compile(code, file or f'<recorded {name}>', 'exec'), module.__dict__)  # noqa: S102
  except Exception as e:  # pylint: disable=broad-except
    sys.modules.pop(module.__name__, None)
    first = (str(e).splitlines() or [''])[0]  # One line, whatever the error says.
    raise ValueError(f'{where}: the source the run recorded for loss term {name!r} '
                     f'({file}) fails: {type(e).__name__}: {first}') from None
  for term, entry in _TERMS.items():
    if getattr(entry.fn, '__module__', None) == module.__name__:
      _RECORDED[term] = (file, code)
  if name not in _TERMS:
    raise ValueError(f'{where}: the source the run recorded for loss term {name!r} '
                     f'({file}) does not register it')


def combined_loss(ctx: LossContext, loss_config) -> tuple[jax.Array, dict]:
  """The total objective and each term's value (for logging).

  Args:
    ctx: the arrays a term reads (the CONTEXT of this module's docstring:
      logits, labels, emb_a, emb_b, same, and rng for stochastic terms).
    loss_config: an ml_collections.ConfigDict shaped like configs/default.py's
      config.loss: classification, pair (term names), beta (float), extra
      (ConfigDict {term: weight}) and the terms' parameters (margin,
      focal_gamma, cosine_margin, ...). A plain dict is refused with a
      TypeError; ml_collections.ConfigDict(d) of a full dict works.

  Weights are Python floats, fixed at trace time: a term with weight 0 is
  still computed for the logs but under stop_gradient and NOT added, so
  beta = 0 is exactly the cross-entropy run (no 0 * inf = NaN either).
  """
  _require_config_dict(loss_config)
  weighted = [(loss_config.classification, 1.0),
              (loss_config.pair, float(loss_config.beta)),
              *((k, float(w)) for k, w in loss_config.extra.items())]
  total = jnp.zeros((), jnp.float32)
  aux = {}
  for name, weight in weighted:
    value = get_term(name)(ctx, loss_config)
    aux[name] = value
    if weight != 0.0:
      total = total + weight * value
    else:
      aux[name] = jax.lax.stop_gradient(value)
  return total, aux

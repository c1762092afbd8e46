"""Train and evaluate SMSDD.

  python -m smsdd_jax.main --config=configs/beta_c.py [--workdir=runs/beta_c]
  python -m smsdd_jax.main --config=configs/beta_c.py:quick --config.loss.beta=0.05

Config keys: every key is declared, each with a one-line comment, in
configs/default.py; a variant (configs/beta_*.py) overrides only what differs,
`:quick` selects the tiny CPU setting and `:learn` the second training
recipe (`:quick,learn` both). Override any key on the command
line as --config.KEY=VALUE, e.g. --config.loss.beta=0.05 --config.num_epochs=3;
an unknown key is refused with one line naming it.

Thin on purpose (as the Flax examples' main.py): flags, device log, then
`train.train_and_evaluate`, which logs the start-up's phases in one line
before step 1 (smsdd_jax/startup.py). --compile_cache=DIR (or
$SMSDD_COMPILE_CACHE; "default": ~/.cache/smsdd_jax/jax_compile) keeps the
compiled programs for the next run: the same numbers, ~10-15 s less start-up
on a CPU; launch/sweep.py turns it on for its runs. The config files in configs/ find
`configs.default` from their own location, so any working directory works.

Exit status: 0 done; 2 bad input (flags, config, data, workdir, init file),
one line on stderr; 1 a non-finite loss; 130 interrupted (Ctrl-C, or the
launcher named by SMSDD_LAUNCHER_PID ended), resumable by the same command.
"""
import logging as pylogging
import os
import re
import signal
import sys
import threading
import time

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

# The start-up's "imports" phase counts from here (absl and ml_collections,
# above, take ~0.05 s): flags, the config file, JAX, the package.
_STARTED = time.perf_counter()

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    'config', None, 'Training config file (path[:quick|:learn|:quick,learn]). Its keys '
    'are declared in configs/default.py; override one with --config.KEY=VALUE.',
    lock_config=True)
flags.DEFINE_string('workdir', None, 'Run directory; default runs/<config file name>.')
flags.DEFINE_bool('distributed', False,
                  'Join a multi-process run via jax.distributed.initialize. The '
                  'three flags below, where not given, are auto-detected from the '
                  'cluster environment (e.g. SLURM).')
flags.DEFINE_string('coordinator_address', None, 'host:port of process 0.')
flags.DEFINE_integer('num_processes', None, 'Processes in the run.')
flags.DEFINE_integer('process_id', None, 'This process, 0 .. num_processes - 1.')
flags.DEFINE_string(
    'compile_cache', os.environ.get('SMSDD_COMPILE_CACHE', ''),
    'Folder of JAX\'s persistent compilation cache: later runs load the '
    'programs compiled here (the same numbers, seconds less start-up); '
    '"default" is ~/.cache/smsdd_jax/jax_compile. Default $SMSDD_COMPILE_CACHE, '
    'set by launch/sweep.py for its runs; empty: off.')
flags.mark_flags_as_required(['config'])

# Set by a launcher (launch/sweep.py) to its own pid: this process then stops
# when the launcher ends, however it ends (kill -9 included), so that no run
# goes on unowned and a rerun of the launcher never meets it.
LAUNCHER_ENV = 'SMSDD_LAUNCHER_PID'
_STOP_GRACE_S = 10.0  # After the Ctrl-C: time to finish the step and save it.


def init_distributed(jax) -> None:
  if not FLAGS.distributed:
    return
  # CPU devices of different processes talk through gloo (GPUs use NCCL).
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                             num_processes=FLAGS.num_processes,
                             process_id=FLAGS.process_id)


def default_workdir(config_path: str) -> str:
  name = os.path.splitext(os.path.basename(config_path.split(':')[0]))[0]
  suffix = config_path.split(':')[1].replace(',', '_') if ':' in config_path else ''
  return os.path.join('runs', f'{name}_{suffix}' if suffix else name)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  # Imported here so that `--help` and flag errors come fast, before TF/JAX load.
  import jax  # pylint: disable=import-outside-toplevel
  from smsdd_jax import startup, train  # pylint: disable=import-outside-toplevel
  clock = startup.Clock(_STARTED, imports=time.perf_counter() - _STARTED)
  cache = _compile_cache(startup)  # Before anything is compiled.
  init_distributed(jax)
  workdir = FLAGS.workdir or default_workdir(FLAGS['config'].config_filename)
  log = pylogging.getLogger('smsdd_jax')
  log.info('JAX %s: process %d of %d, devices %s', jax.__version__,
           jax.process_index(), jax.process_count(), jax.devices())
  log.info('workdir: %s', os.path.abspath(workdir))
  for note in _NOTES:
    log.info('%s', note)
  if cache:
    log.info('compilation cache: %s', cache)
  try:
    train.train_and_evaluate(FLAGS.config, workdir, clock)
  except KeyboardInterrupt:
    print('interrupted: rerun the same command to resume', file=sys.stderr)
    sys.exit(130)
  except (ValueError, FileNotFoundError) as e:
    # Bad input (rundir.WorkdirError and pretrained.PretrainedError included)
    # is a one-line message, not a traceback.
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  except train.NonFiniteLossError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)


def _compile_cache(startup) -> str | None:
  """--compile_cache turned on (startup.enable_compile_cache): its folder."""
  if not FLAGS.compile_cache:
    return None
  where = FLAGS.compile_cache
  return startup.enable_compile_cache(
      startup.default_cache_dir() if where == 'default' else where)


def _stop_with_launcher() -> None:
  """With SMSDD_LAUNCHER_PID set, watches (in a daemon thread) for the
  launcher's end: then stops as Ctrl-C does (the step is saved), or at once
  if that takes over _STOP_GRACE_S. The parent pid is polled rather than
  Linux's PR_SET_PDEATHSIG used: that fires when the launcher's thread that
  started this process ends, and it is Linux only."""
  value = os.environ.get(LAUNCHER_ENV, '')
  if not value.isdigit():
    return
  threading.Thread(target=_watch_launcher, args=(int(value),), daemon=True,
                   name='launcher-watch').start()


def _watch_launcher(launcher: int) -> None:
  parent = os.getppid()  # The launcher, unless a wrapper started this process.
  while os.getppid() == parent and _exists(launcher):  # Re-parented once it ends.
    time.sleep(0.5)
  log = pylogging.getLogger('smsdd_jax')
  log.warning('the launcher (process %d) ended: stopping as on Ctrl-C', launcher)
  os.kill(os.getpid(), signal.SIGINT)
  time.sleep(_STOP_GRACE_S)
  log.warning('not stopped %.0f s after the launcher ended: exiting now', _STOP_GRACE_S)
  for stream in (sys.stdout, sys.stderr):
    stream.flush()
  os._exit(130)  # pylint: disable=protected-access


def _exists(pid: int) -> bool:
  try:
    os.kill(pid, 0)  # Signal 0: only asks whether the process is there.
  except ProcessLookupError:
    return False
  except PermissionError:  # There, someone else's.
    pass
  return True


_HELP_FLAGS = ('help', 'h', '?', 'helpshort', 'helpfull', 'helpxml')


def parse_flags(argv):
  """absl's parser, with any failure (an unknown config key, a missing or
  broken config file, a bad value) reduced to one line naming the culprit.
  --help (or -h) exits 0 (absl's own help exits 1)."""
  end = argv.index('--') if '--' in argv else len(argv)
  argv = [argv[0]] + ['--help' if a == '-h' else a for a in argv[1:end]] + argv[end:]
  _one_config_flag(argv[1:end])
  try:
    rest = FLAGS(argv)
    FLAGS.config.lock()  # Config files load lazily: force it here, errors included.
    _NOTES.extend(filter(None, [learn_rate_follows_width(FLAGS.config, argv[1:end])]))
    return rest
  except SystemExit as e:
    if e.code == 1 and _asked_for_help(argv):
      sys.exit(0)
    raise
  except Exception as e:  # pylint: disable=broad-except
    print(f'error: {_one_line_reason(e, argv)}', file=sys.stderr)
    sys.exit(2)


# Lines for the run's log about what the command line changed (logged by main).
_NOTES: list[str] = []


def _given(args, key: str) -> bool:
  """True where --config.KEY was set on the command line."""
  return any(a.lstrip('-').split('=')[0] == f'config.{key}' for a in args)


def learn_rate_follows_width(config, args) -> str | None:
  """`:learn`'s peak rate depends on the width (configs.default.learn_rate:
  1e-4 at full width, where 1e-3 never fitted magnetic_tile), but a mode sets
  it before the command line's overrides: `:quick,learn
  --config.model.width_mult=1.0` would keep the 1/16 width's 1e-3. A width
  given on the command line without a rate therefore takes the recipe's rate
  for that width; returns the line saying so (None where nothing changed)."""
  from configs import default  # pylint: disable=import-outside-toplevel
  if (config.get('recipe') != default.LEARN or not _given(args, 'model.width_mult')
      or _given(args, 'optimizer.learning_rate')):
    return None
  rate = default.learn_rate(config.model.width_mult)
  if rate == config.optimizer.learning_rate:
    return None
  was, config.optimizer.learning_rate = config.optimizer.learning_rate, rate
  return (f'optimizer.learning_rate {rate:g} (was {was:g}): :learn\'s rate for width '
          f'{config.model.width_mult:g}, set on the command line; give '
          '--config.optimizer.learning_rate to choose another')


def _one_config_flag(args) -> None:
  """Two --config flags: absl takes the last one silently, or, with a
  --config.KEY between them, says "defined twice" about the KEY. One line
  instead (exit 2)."""
  given = [arg if '=' in arg else f'{arg} {args[i + 1]}' for i, arg in enumerate(args)
           if arg.startswith('-') and (arg.lstrip('-').startswith('config=') or (
               arg.lstrip('-') == 'config' and i + 1 < len(args)))]
  if len(given) > 1:
    print(f'error: --config given {len(given)} times ({", ".join(given)}): only one '
          '--config is allowed; set its keys with --config.KEY=VALUE, or its modes '
          'with one argument, e.g. --config=configs/beta_c.py:quick,learn', file=sys.stderr)
    sys.exit(2)


def _asked_for_help(argv) -> bool:
  for arg in argv[1:]:
    if arg == '--':
      return False
    name, _, value = arg.lstrip('-').partition('=')
    if arg.startswith('-') and name in _HELP_FLAGS and value.lower() not in ('0', 'false'):
      return True
  return False


def _key_error_message(error: BaseException) -> str:
  """The text inside a config lookup error, which ml_collections wraps as
  AttributeError(KeyError("'key'\\nDid you mean ...")): str() of that is a
  repr of a repr."""
  while error.args and isinstance(error.args[0], BaseException):
    error = error.args[0]
  return str(error.args[0]) if error.args else str(error)


def _unknown_key_reason(error: BaseException, argv) -> str:
  """'unknown config key 'config.loss.bta' (from '--config.loss.bta=0.05');
  did you mean 'config.loss.beta'?', whatever the nesting."""
  message = _key_error_message(error)
  lines = [line.strip() for line in message.splitlines() if line.strip()]
  key = lines[0].strip('"\' ') if lines else ''
  hint = next((re.search(r'Did you mean "([^"]+)"', line) for line in lines[1:]
               if 'Did you mean' in line), None)
  bad_type = re.match(r"Attribute <class '(\w+)'>\.(\w+) does not exist.*"
                      r'Attempting to lookup: ([\w.]+)', key)
  if bad_type:  # --config.loss.beta.x=1: beta is a float.
    kind, child, path = bad_type.groups()
    parent = path[:-len(child) - 1] if path.endswith('.' + child) else path
    return (f"unknown config key 'config.{path}': config.{parent} is a {kind}, "
            'not a group of keys (see configs/default.py)')
  for arg in argv[1:]:
    path = arg.split('=')[0].lstrip('-')
    parts = path.split('.')
    if parts[0] == 'config' and key in parts[1:]:
      reason = f'unknown config key {path!r} (from {arg!r})'
      if parts[1:3] == ['loss', 'extra'] and len(parts) == 4:
        return f'{reason}; {_extra_hint(parts[3], arg)}'
      if hint:
        suggested = '.'.join(parts[:parts.index(key, 1)] + [hint.group(1)])
        return f'{reason}; did you mean {suggested!r}?'
      return f'{reason}; the keys are declared in configs/default.py'
  if hint:
    return f'unknown config key {key!r}; did you mean {hint.group(1)!r}?'
  return f'unknown config key {key!r}; the keys are declared in configs/default.py'


def _extra_hint(term: str, arg: str) -> str:
  """loss.extra starts empty, so its entries are no keys to set one by one:
  the whole dict is one value."""
  weight = arg.partition('=')[2] or '0.5'
  return (f'config.loss.extra is a dict of extra terms, set whole: '
          f'--config.loss.extra="{{{term!r}: {weight}}}"')


def _one_line_reason(error: Exception, argv) -> str:
  if isinstance(error, (AttributeError, KeyError)):
    return _unknown_key_reason(error, argv)
  # Config-file errors embed a whole traceback: its last line is the reason.
  lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
  reason = lines[-1] if lines else type(error).__name__
  config_arg = next((a for a in argv[1:] if a.startswith('--config=')), '')
  if 'config' in str(error).split('\n')[0] and config_arg and config_arg not in reason:
    return f'{config_arg}: {reason}'
  return reason


def _setup_logging() -> None:
  """Our progress lines at INFO; other libraries' absl INFO hidden."""
  logging.set_verbosity(logging.WARNING)
  handler = pylogging.StreamHandler(sys.stdout)
  handler.setFormatter(pylogging.Formatter('%(asctime)s %(message)s', '%H:%M:%S'))
  logger = pylogging.getLogger('smsdd_jax')
  logger.addHandler(handler)
  logger.setLevel(pylogging.INFO)
  logger.propagate = False


def run():
  _setup_logging()
  _stop_with_launcher()
  app.run(main, flags_parser=parse_flags)


if __name__ == '__main__':
  run()

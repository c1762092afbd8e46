"""TensorFlow's start-up lines stay out of a training's terminal."""
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_loading_tensorflow_prints_no_onednn_line_and_keeps_warnings():
  env = {k: v for k, v in os.environ.items()
         if k not in ('TF_CPP_MIN_LOG_LEVEL', 'TF_ENABLE_ONEDNN_OPTS')}
  code = ('import os\n'
          'from smsdd_jax import input_pipeline\n'
          'input_pipeline.load_tensorflow()\n'
          "print(os.environ['TF_CPP_MIN_LOG_LEVEL'])\n")
  proc = subprocess.run([sys.executable, '-c', code], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  assert 'oneDNN' not in proc.stderr and 'cpu_feature_guard' not in proc.stderr, proc.stderr
  assert proc.stdout.strip() == '1'  # INFO hidden; warnings and errors still shown.

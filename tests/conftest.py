"""Shared fixtures. Tests run on CPU with tiny models; real data is optional."""
import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='session')
def shared_data() -> pathlib.Path:
  """The workplace's real images, if present (SMSDD_SHARED_DATA overrides);
  tests that need them skip cleanly elsewhere."""
  root = pathlib.Path(os.environ.get('SMSDD_SHARED_DATA', REPO.parent / 'shared' / 'data'))
  if not root.is_dir():
    pytest.skip(f'shared real data not found at {root}')
  return root

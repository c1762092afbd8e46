"""The data mesh: batches split over the devices of every process, and back.

  mesh = make_mesh()                       # 1-D, axis 'data'
  batch = to_global(local_rows, NamedSharding(mesh, P('data')))
  arrays = to_host(outputs)                # full numpy arrays on every process

Training (train.py) feeds each process's rows of a batch to the mesh; the
evaluation (evaluation.py) feeds every process the same batch, cut into
shares by process_rows, and gathers the outputs back whole. With one process
these are plain device puts and gets.
"""
from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh


def make_mesh() -> Mesh:
  """A 1-D mesh over all devices; batches are split along its 'data' axis."""
  return jax.make_mesh((jax.device_count(),), ('data',))


def to_global(local_batch: dict, sharding) -> dict:
  """This process's rows -> one global array per key, split over the mesh.
  With one process, local and global are the same batch."""
  return jax.tree_util.tree_map(
      lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)


def process_rows(batch: dict) -> dict:
  """This process's contiguous share of a batch every process holds whole."""
  n, i = jax.process_count(), jax.process_index()
  return jax.tree_util.tree_map(
      lambda x: x[i * (len(x) // n):(i + 1) * (len(x) // n)], batch)


def to_host(tree):
  """Global arrays -> full numpy arrays on every process."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)


def params_fingerprint(params) -> float:
  """A number that differs if this process's copy of the params differs:
  processes of one data-parallel run must all print the same one."""
  leaves = jax.tree_util.tree_leaves(params)
  return float(sum(np.sum(np.asarray(x.addressable_data(0), np.float64) *
                          (1.0 + np.arange(x.size).reshape(x.shape) % 7))
                   for x in leaves))

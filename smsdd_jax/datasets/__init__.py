"""TFDS builders. Importing a builder module registers it with tensorflow-datasets."""


def register_all() -> None:
  """Imports every builder so `tfds.builder(name)` finds it."""
  # pylint: disable=import-outside-toplevel,unused-import
  from smsdd_jax.datasets import synthetic_screens  # noqa: F401

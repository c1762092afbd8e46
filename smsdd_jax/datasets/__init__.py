"""TFDS builders. Importing a builder module registers it with tensorflow-datasets.

  synthetic_screens  the embedded default: generated raw frames, ROI at build time
  msd_screens        real raw phone-screen frames from a manual dir
  magnetic_tile      real magnetic-tile crops (manual dir or download)
  image_folder       any folder of class sub-folders
"""


def register_all() -> None:
  """Imports every builder so `tfds.builder(name)` finds it."""
  # pylint: disable=import-outside-toplevel,unused-import
  from smsdd_jax.datasets import image_folder  # noqa: F401
  from smsdd_jax.datasets import magnetic_tile  # noqa: F401
  from smsdd_jax.datasets import msd_screens  # noqa: F401
  from smsdd_jax.datasets import synthetic_screens  # noqa: F401

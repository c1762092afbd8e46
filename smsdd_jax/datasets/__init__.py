"""TFDS builders. Importing a builder module registers it with tensorflow-datasets."""

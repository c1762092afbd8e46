"""smsdd-jax: the SMSDD Siamese VGG16 defect detector in JAX/Flax.

Module map (imports only point down):
  main.py           flags -> train.train_and_evaluate
  train.py          the run's set-up and the loop (the step itself: step.py)
  startup.py        the start-up's phases (one logged line); JAX's compilation cache
  evaluation.py     predict a split, its metrics, the final threshold and eval.json
  run_records.py    config.json, preprocessing.json, data_stats.json; what a resume checks
  data_parallel.py  the data mesh: batches split over devices and gathered back
  input_pipeline.py training images and eval batches over a TFDS dataset (or an export)
  numpy_pipeline.py the same from a dataset export, in numpy (no TensorFlow)
  pairs.py          the one pair sampler both use: pairs and augmentation, seeded
  dataset_export.py a built dataset as one file: write (from TFDS); export_reader.py loads
  data_splits.py    split names, class counts, pixel statistics (below the pipelines)
  datasets/         TFDS builders (synthetic_screens, ...)
  models.py         shared tower + 2-way classifier, pure forward()
  backbones/        the towers config.model.backbone picks (vgg16, resnet18)
  losses.py         cross-entropy, contrastive and extra loss terms (registry)
  checkpointing.py  Orbax save / restore / resume
  rundir.py         the workdir's files: names, atomic writes, readers, resolve_run
  roi/              Hough-based screen finder and perspective rectification
"""

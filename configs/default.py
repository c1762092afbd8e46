"""Every field of an SMSDD run, each with its default and why.

Variants (beta_a.py ... beta_e.py) import this and override only beta. Every
config file takes an optional argument after a colon:

  --config=configs/beta_c.py          the paper's setting
  --config=configs/beta_c.py:quick    same program, tiny width and data, runs
                                      end to end in well under a minute on CPU
  --config=configs/beta_c.py:learn    the second training recipe (apply_learn:
                                      AdamW, batch norm, warm-up + cosine, weight
                                      decay, augmentation); ':quick,learn' both
"""
import ml_collections

QUICK = 'quick'
LEARN = 'learn'


def get_config(arg=None):
  config = ml_collections.ConfigDict()
  # Which training recipe made this run: 'paper' (the literal recipe: VGG16
  # from scratch, no batch norm, SGD at a constant 0.01) or 'learn' (`:learn`,
  # apply_learn below). Every result records it through config.json.
  config.recipe = 'paper'
  config.seed = 0  # Seeds init, pair sampling, shuffling and dropout-free RNG.

  config.data = ml_collections.ConfigDict()
  config.data.name = 'synthetic_screens'  # TFDS builder name.
  # A named config of the builder; '' = its default (synthetic_screens: 1200
  # frames, 168 defective, the paper's balance; in quick mode its 'small').
  config.data.builder_config = ''
  config.data.quick = False  # Set by ':quick': the builder's small config, if it has one.
  config.data.data_dir = ''  # TFDS data_dir; '' = TFDS default (~/tensorflow_datasets).
  config.data.manual_dir = ''  # For builders that read a user's files; '' = none.
  config.data.image_size = (110, 230)  # (height, width) of the screen ROI, as the paper.
  # Preprocessing of whole images (ready crops; ROIs found in raw frames are
  # warped to image_size directly): 'stretch' to image_size, 'letterbox'
  # (aspect kept, black pad) or 'rotate' (portrait turned landscape, then
  # stretched). See smsdd_jax/preprocess.py; predict applies the same.
  config.data.aspect = 'stretch'
  config.data.channels = 'rgb'  # 'rgb' (gray files replicated) | 'gray' (colour -> luma).
  # Near-duplicate grouping threshold in hash bits (of 127); None = the
  # builder's tuned value (screens 22, magnetic tiles 4, other crops 6); -1 = off.
  config.data.near_dup_threshold = ml_collections.config_dict.placeholder(int)
  config.data.train_split = 'train'
  config.data.val_split = 'validation'
  config.data.test_split = 'test'
  # k-fold (for small sets such as msd_screens' 143 frames): with kfold = k > 0
  # the builder's fold_0..fold_{k-1} splits replace the three above: test =
  # fold_i, validation = fold_{i+1 mod k}, train = the rest. 0 = off.
  config.data.kfold = 0
  config.data.fold = 0  # i, in [0, kfold).
  # Label-preserving augmentation of training images only (off at eval):
  config.data.augment_flips = False  # Random horizontal and vertical flips.
  config.data.augment_jitter = 0.0  # Max brightness shift / contrast change (0 = off).
  config.data.defective_fraction = 0.5  # Share of defective images among sampled images.
  config.data.normalize = 'fixed'  # 'fixed' ([0,255] -> [-1,1]) | 'train_stats'.
  # Keep the decoded, normalised training share in memory for later runs of the
  # same process on the same build (the sets are small); False reads it again
  # for each run (it is held in memory while a run trains either way: pairs
  # pick images at random, smsdd_jax/pairs.py).
  config.data.cache = True
  # Where examples come from: 'tfds' (the TFDS build, read with tf.data) or
  # 'export' (export_path: one file written by `python -m
  # smsdd_jax.dataset_export` from that build, read in numpy without
  # TensorFlow: smsdd_jax/numpy_pipeline.py; same pairs rules and splits).
  config.data.source = 'tfds'
  config.data.export_path = ''  # The export's .npz, with source 'export'.

  config.model = ml_collections.ConfigDict()
  # The conv tower (smsdd_jax/backbones/): 'vgg16' (the paper's) | 'resnet18'
  # (ResNet-18-style basic blocks, always with batch norm).
  config.model.backbone = 'vgg16'
  config.model.width_mult = 1.0  # 1.0 = the paper's VGG16 (64..512 channels).
  config.model.batch_norm = False  # False = the paper; True = the common VGG16-BN.
  # Vector compared by the contrastive loss. The paper: flattened tower output
  # (3x7x512 = 10752 ReLU dims, distances in the hundreds). '_l2' normalises it
  # so distances lie in [0, 2] and margin=1 is meaningful (docs/loss-terms.md).
  config.model.embedding = 'flatten_l2'  # 'flatten' | 'flatten_l2' | 'gap' | 'gap_l2'
  # What the classifier reads: 'flatten' (the paper: the 3x7xC map, one weight
  # per position) | 'gap' | 'gmp' (global average / max over positions).
  config.model.head = 'flatten'
  config.model.num_classes = 2  # 0 good, 1 defective.
  config.model.dtype = 'float32'  # Compute dtype; params stay float32.
  # 'auto' (onednn_fused on CPU where built, else custom; xla on GPU/TPU:
  # models.resolve_conv_impl) | 'xla'
  # (lax) | 'custom' (conv.py's 3x3 conv + 2x2 pool backward) | 'custom_fused'
  # (+ bias and ReLU in the same custom_vjp) | 'onednn' (oneDNN's primitives
  # through XLA's FFI, smsdd_jax/onednn; 'custom' where not built) |
  # 'onednn_fused' (conv + bias + ReLU as one oneDNN primitive) | 'winograd'
  # (Winograd F(4,3)/F(2,3) per layer, mostly the weight gradient).
  config.model.conv_impl = 'auto'
  config.model.init = ''  # '' = from scratch (the paper); else local VGG16 weights .pth/.safetensors/.h5.

  config.loss = ml_collections.ConfigDict()
  config.loss.classification = 'cross_entropy'  # Term with weight 1 (eq. 3).
  config.loss.pair = 'contrastive'  # Term with weight beta (eq. 4).
  config.loss.beta = 0.01  # eq. 8; Table 1: A 0, B 0.1, C 0.01, D 0.001, E 0.0001.
  config.loss.margin = 1.0  # Contrastive margin m, on the embedding's scale (paper: unstated).
  config.loss.focal_gamma = 2.0  # Used by the 'focal' term only.
  config.loss.cosine_margin = 0.5  # Used by the 'cosine_margin' term only.
  config.loss.extra = ml_collections.ConfigDict()  # More terms: {'name': weight}.

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = 'sgd'  # 'sgd' (paper) | 'adamw'.
  config.optimizer.learning_rate = 0.01  # Peak rate; "0.01 in all epochs" (paper).
  config.optimizer.schedule = 'constant'  # 'constant' (paper) | 'warmup_cosine'.
  config.optimizer.warmup_steps = 0  # Linear warm-up of 'warmup_cosine'.
  config.optimizer.weight_decay = 0.0  # Decoupled; biases and BN scales exempt.
  config.optimizer.momentum = 0.9  # SGD momentum (paper: unstated).
  config.optimizer.nesterov = False
  # Global-norm gradient clipping (0 = off). With the init in models.py the
  # full VGG16 showed gradient norms of 0.3-3.2 over its first 30 steps at
  # lr 0.01 (no divergence), so 10 never touches a normal step: it only
  # bounds a rare spike, which from scratch without batch norm can diverge.
  config.optimizer.grad_clip_norm = 10.0

  config.batch_size = 8  # Pairs per step (16 images through the tower).
  config.num_epochs = 30  # An epoch = as many sampled images as the train split holds.
  config.eval_batch_size = 32  # Single images per eval batch (last one padded + masked).
  config.log_every_steps = 10  # Train metrics to terminal, metrics.jsonl, TensorBoard.

  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.every_steps = 0  # 0 = at the end of every epoch.
  config.checkpoint.max_to_keep = 3  # Periodic checkpoints kept (oldest pruned).
  # The best checkpoint by this val metric lives apart (checkpoints_best/) and
  # is never pruned; predict.py uses it by default.
  config.checkpoint.best_metric = 'val/balanced_accuracy'
  config.checkpoint.best_mode = 'max'  # 'max' or 'min' (e.g. for val/cross_entropy).
  # A tie in best_metric goes to the better of these, in order ('metric:max|min').
  config.checkpoint.best_tie_breakers = ('val/auroc:max', 'val/cross_entropy:min')

  # The final evaluation (end of training): decision threshold and which state.
  config.eval = ml_collections.ConfigDict()
  # How the defect-probability threshold is chosen on the validation split and
  # then applied unchanged to test (written to <workdir>/threshold.json):
  # 'argmax' = 0.5 | 'best_f1' | 'max_escape' (lowest overkill at an escape
  # rate <= max_escape_rate). Data-driven rules refuse a val split lacking a class.
  config.eval.threshold_rule = 'argmax'
  config.eval.max_escape_rate = 0.05  # Escape-rate target of 'max_escape' only.
  # State evaluated at the end: 'best' = checkpoints_best/ (the one predict.py
  # uses, so threshold.json fits it) | 'final' = the last step.
  config.eval.checkpoint = 'best'

  parts = [a.strip() for a in (arg or '').split(',') if a.strip()]
  for part in parts:
    if part not in MODES:
      raise ValueError(f'unknown config argument {part!r} (in {arg!r}): expected nothing '
                       f'or a comma-separated list of {tuple(MODES)}')
  # In MODES' order whatever the order given: ':learn' reads the width ':quick' sets.
  for part in sorted(set(parts), key=list(MODES).index):
    MODES[part](config)
  return config


def apply_quick(config):
  """big_vision's `runlocal` idea: the same program, small enough for a CPU."""
  config.data.quick = True
  config.model.width_mult = 1 / 16
  config.batch_size = 4
  config.num_epochs = 10  # ~160 steps: enough to see it learn the small set.
  config.eval_batch_size = 16
  config.log_every_steps = 5
  return config


def apply_learn(config):
  """The second recipe (':learn', combinable: ':quick,learn'): what a VGG16
  from scratch needs to train dependably on small sets nobody tuned it to.
  Chosen by ablation on magnetic_tile (grouped 5-fold, quick size, beta = 0,
  paired by fold; docs/results.md "Choosing the recipe"):

  - AdamW at 1e-3 (1e-4 at full width, below) instead of SGD at 0.01: the paper's SGD barely moved the
    training loss there (cross-entropy ~0.69 for 1000 steps) and 3 of 25
    runs collapsed; Adam fits the training set, and with batch norm beside
    it learns steadily (AdamW alone overfits and one fold stayed dead);
  - batch norm: with SGD at 0.01 it made things worse (loss spikes to 4.5 in
    the first 50 steps), with AdamW it is what made the runs dependable;
  - warm-up (50 steps) then cosine decay, weight decay 5e-4 (biases and BN
    scales exempt), flips and brightness/contrast jitter 0.1: the network
    memorised the ~800 training crops (loss -> 0.01); these keep it from it.
  The paper's configs stay exactly reproducible without ':learn'.
  """
  config.recipe = LEARN
  config.model.batch_norm = True
  config.optimizer.name = 'adamw'
  # Full width (plain ':learn') needs a tenth of the rate: at 1e-3 the full
  # VGG16 never fitted magnetic_tile (fold 0: val AUROC at chance for 1000
  # steps, training loss above ln 2), at 1e-4 it learns (test AUROC 0.827;
  # docs/results.md, "The paper's own scale"). Adam moves every weight by
  # about the rate whatever the width, so a 16x wider layer's outputs move
  # ~16x more per step. Only the width ':quick' set is read here; a width
  # given on the command line without a rate takes learn_rate's for it
  # (smsdd_jax/main.py, learn_rate_follows_width), the run's log says so.
  config.optimizer.learning_rate = learn_rate(config.model.width_mult)
  config.optimizer.schedule = 'warmup_cosine'
  config.optimizer.warmup_steps = 50
  config.optimizer.weight_decay = 5e-4
  config.data.augment_flips = True
  config.data.augment_jitter = 0.1
  return config


def learn_rate(width_mult: float) -> float:
  """':learn''s AdamW peak rate for a tower of this width (apply_learn): a
  script that sets the width after building the config asks here."""
  return 1e-3 if width_mult < 1.0 else 1e-4


MODES = {QUICK: apply_quick, LEARN: apply_learn}

"""ISIC 2017, the paper's protocol (Sec. III).

ResNet-50, images resized to 256x256 and randomly cropped to 224, rotations and
flips, SGD (momentum 0.9, weight decay 5e-4), batch 10, lr 1e-3 divided by 10
every 2000 iterations, lambda = 7.5, ImageNet weights from ``model.pretrained``.

    python -m rapool_jax.main --config configs/isic2017.py --workdir runs/isic \
        --config.data.manual_dir=/path/to/isic2017 \
        --config.model.pretrained=/path/to/resnet50.safetensors

Variants (``--config configs/isic2017.py:NAME``):
  paper      the protocol above (default).
  runlocal   CPU-sized: ResNet-18 at 1/2 width from scratch, 128 px crops of
             144 px images, output stride 16, 1000 / 200 / 800 steps of batch 32,
             each stage a cosine schedule (Step 4 from lr 0.01, a fifth of Step
             2's peak, so that it fine-tunes Step 2 instead of restarting it);
             reported on the official test split, as the paper; thresholds
             and plateau rules from the validation split.
  crossval   one fold of the stratified 5-fold cross-validation over train +
             validation (2,150 images; ``--config.data.crossval.fold=F``),
             CPU-sized (ResNet-18 at 1/4 width, 112 px crops of 128 px), with
             every Step-4 arm branching from the same Step 2/3 state: RAP at
             lambda 7.5 / 1 / 0.1, GAP + segmentation loss, normalised RAP,
             the ground-truth-mask oracle and a GAP-only control trained as
             long as Step 2 + Step 4; RankOpt and a balanced logistic
             regression on the RAP features. Run all folds with
             ``launch/crossval.py``.
  runlocal,testsplit  recipe 2 of the robustness study: runlocal's recipe
             with testsplit's arms (GAP control 800 steps) on the official
             splits.
  testsplit  the crossval recipe and its primary arms (RAP at lambda 7.5, GAP
             + segmentation loss, the GAP control; RankOpt and logistic
             regression on RAP) trained on the official training split,
             thresholds from validation, reported on the 600 test images (no
             test masks, so no mask oracle); one seed per run
             (``--config.seed=S``), seeds paired by ``launch/testsplit_report.py``.
  crossval,fullsize  the same folds and arms at the paper's size (ResNet-50,
             224 px crops of 256 px, output stride 32), from scratch: for an
             accelerator.
  three_class  the challenge's melanoma / seborrheic keratosis / nevus head.
The paper does not state step counts; Step 2 and 4 lengths follow its lr
schedule (three lr levels of 2000 iterations), Step 3 stops on a plateau of
validation Jaccard ("when the loss ... does not tend to increase").
"""

from rapool_jax import config_lib


def get_config(arg: str = "paper"):
  variants = set(arg.split(",")) if arg else {"paper"}
  unknown = variants - {"paper", "runlocal", "crossval", "fullsize",
                       "three_class", "testsplit"}
  if unknown:
    raise ValueError(f"configs/isic2017.py: unknown variant(s) {sorted(unknown)}; "
                     "use paper, runlocal, crossval, fullsize, three_class, "
                     "testsplit")
  if "fullsize" in variants and not variants & {"crossval", "testsplit"}:
    raise ValueError("configs/isic2017.py: 'fullsize' modifies 'crossval'; "
                     "use crossval,fullsize")
  c = config_lib.base_config()
  c.data.name = "isic2017"
  c.data.image_size = 256
  c.data.crop_size = 224
  c.data.rotate_degrees = 180.0
  c.data.eval_split = "test"
  c.model.depth = "50"
  c.model.output_stride = 32
  c.model.dropout_rate = 0.2
  c.train.batch_size = 10
  c.train.eval_batch_size = 50
  c.train.log_every = 100
  c.train.checkpoint_every = 1000
  c.stages = config_lib.paper_stages(
      classification_steps=6000, segmentation_steps=4000, joint_steps=6000,
      lr=1e-3, decay_every=2000, lambda_seg=7.5)
  c.stages.segmentation.plateau = config_lib.plateau_rule(
      "val_jaccard", patience=3, eval_every=500)
  if "three_class" in variants:
    c.data.task = "three_class"
  if "runlocal" in variants:
    c.data.image_size = 144
    c.data.crop_size = 128
    c.model.depth = "18"
    c.model.width = 0.5
    c.model.output_stride = 16
    c.model.dropout_rate = 0.1
    c.train.batch_size = 32
    c.train.eval_batch_size = 75
    c.train.log_every = 25
    c.train.checkpoint_every = 100
    c.stages = config_lib.paper_stages(
        classification_steps=1000, segmentation_steps=200, joint_steps=800,
        lr=0.05, lambda_seg=7.5, schedule="cosine")
    c.stages.joint.lr = 0.01
  if "runlocal" in variants and "testsplit" in variants:
    add_arms(c, ("joint", "joint_gap_seg"), c.stages.joint.max_steps)
    official_splits(c)
  elif variants & {"crossval", "testsplit"}:
    crossval(c)
    if "testsplit" in variants:
      official_splits(c)
  if "fullsize" in variants:
    c.data.image_size, c.data.crop_size = 256, 224
    c.model.depth, c.model.width = "50", 1.0
    c.model.output_stride, c.model.dropout_rate = 32, 0.2
  return c


# Arms of the cross-validation: stage name -> (report_as, changes to Step 4).
CROSSVAL_ARMS = {
    "joint": ("RAP (lambda 7.5)", {}),
    "joint_lambda1": ("RAP (lambda 1)", dict(lambda_seg=1.0)),
    "joint_lambda0_1": ("RAP (lambda 0.1)", dict(lambda_seg=0.1)),
    "joint_gap_seg": ("GAP + seg loss (lambda 7.5)", dict(pooling="gap")),
    "joint_region_normalized": ("RAP normalized (lambda 7.5)",
                                dict(pooling="region_normalized")),
    "joint_mask_oracle": ("mask oracle (lambda 7.5)",
                          dict(pooling="mask_oracle")),
}


# The CV's paired comparisons by arm (a stage above, "classification",
# "gap_control", or the heads "rankopt" and "logistic_regression"):
# (name, arm a, arm b, question), the primary first. A report leaves out
# those whose arm the run's stage_order does not train, saying so.
CROSSVAL_COMPARISONS = (
    ("RAP vs GAP control (primary)", "joint", "gap_control",
     "Does region pooling beat GAP trained as long?"),
    ("RAP vs Step 2", "joint", "classification",
     "Does Step 4 keep (or raise) Step 2's AUC?"),
    ("RAP vs GAP + seg loss", "joint", "joint_gap_seg",
     "Is the gain the pooling, given the same segmentation loss?"),
    ("GAP control vs Step 2", "gap_control", "classification",
     "What do the extra steps alone give?"),
    ("RAP lambda 1 vs 7.5", "joint_lambda1", "joint", "lambda"),
    ("RAP lambda 0.1 vs 7.5", "joint_lambda0_1", "joint", "lambda"),
    ("RAP normalized vs RAP", "joint_region_normalized", "joint",
     "Eq. 1 divides by WH, not by the lesion area"),
    ("mask oracle vs RAP", "joint_mask_oracle", "joint",
     "How much would a perfect lesion map add?"),
    ("RankOpt vs RAP softmax", "rankopt", "joint",
     "Does RankOpt raise AUC on the same features?"),
    ("RankOpt vs logistic regression", "rankopt", "logistic_regression",
     "RankOpt against a plain linear baseline"),
)
# Sensitivities compared at matched specificity: (name, arm a, arm b).
SENSITIVITY_COMPARISONS = (
    ("RankOpt vs RAP softmax", "rankopt", "joint"),
    ("RankOpt vs logistic regression", "rankopt", "logistic_regression"),
    ("RAP vs GAP control", "joint", "gap_control"),
)


def crossval(c):
  """The ``crossval`` variant (see the module docstring), applied to ``c``."""
  c.data.image_size, c.data.crop_size = 128, 112
  c.data.crossval.num_folds = 5
  c.data.train_split, c.data.val_split, c.data.eval_split = (
      "cv_train", "cv_val", "cv_test")
  c.model.depth, c.model.width = "18", 0.25
  c.model.output_stride, c.model.dropout_rate = 16, 0.1
  c.train.batch_size, c.train.eval_batch_size = 32, 64
  c.train.log_every, c.train.checkpoint_every = 50, 100
  c.stages = config_lib.paper_stages(
      classification_steps=800, segmentation_steps=100, joint_steps=250,
      lr=0.05, lambda_seg=7.5, schedule="cosine")
  c.stages.classification.warmup_steps = 40
  add_arms(c, CROSSVAL_ARMS, 250)
  c.rankopt.threshold_split = "cv_val"
  # Every fold x seed x arm model also scores the official test split.
  c.data.report_splits = ("test",)
  c.rankopt.report_as = "RAP + RankOpt"
  c.rankopt.logistic_regression = True
  c.rankopt.logistic_regression_report_as = "RAP + logistic regression"
  c.report.comparisons = CROSSVAL_COMPARISONS
  c.report.sensitivity_comparisons = SENSITIVITY_COMPARISONS


def add_arms(c, arms, step4_steps: int):
  """Step-4 ``arms`` (of ``CROSSVAL_ARMS``) branching from Step 3, and the
  GAP control: Step 2 trained ``step4_steps`` more with GAP."""
  for name in arms:
    report_as, changes = CROSSVAL_ARMS[name]
    arm = c.stages.joint.copy_and_resolve_references()
    arm.update(dict(lr=0.01, report_as=report_as, init_from="segmentation",
                    **changes))
    c.stages[name] = arm
  control = c.stages.classification.copy_and_resolve_references()
  control.update(dict(lr=0.01, warmup_steps=0, max_steps=step4_steps,
                      report_as="GAP control", init_from="classification"))
  c.stages.gap_control = control
  c.stage_order = ("classification", "segmentation", *arms, "gap_control")


# The test split has no masks: the oracle arm cannot be scored there.
TESTSPLIT_ARMS = ("joint", "joint_gap_seg", "gap_control")
_COMPARISON = {c[0]: c for c in CROSSVAL_COMPARISONS}
TESTSPLIT_COMPARISONS = tuple(_COMPARISON[name] for name in (
    "RAP vs GAP control (primary)", "RAP vs GAP + seg loss",
    "RankOpt vs RAP softmax", "GAP control vs Step 2",
    "RankOpt vs logistic regression"))


def official_splits(c):
  """The ``testsplit`` variant: ``crossval``'s recipe on the official splits."""
  c.data.crossval.num_folds = 0
  c.data.train_split, c.data.val_split, c.data.eval_split = (
      "train", "validation", "test")
  c.data.report_splits = ()
  c.rankopt.threshold_split = "validation"
  c.stage_order = ("classification", "segmentation", *TESTSPLIT_ARMS)
  c.report.comparisons = TESTSPLIT_COMPARISONS
  c.report.sensitivity_comparisons = SENSITIVITY_COMPARISONS

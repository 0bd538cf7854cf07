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
             144 px images, output stride 16, 1000 / 200 / 800 steps of batch 32;
             evaluated on the validation split (the shared copy has no test).
  three_class  the challenge's melanoma / seborrheic keratosis / nevus head.
The paper does not state step counts; Step 2 and 4 lengths follow its lr
schedule (three lr levels of 2000 iterations), Step 3 stops on a plateau of
validation Jaccard ("when the loss ... does not tend to increase").
"""

from rapool_jax import config_lib


def get_config(arg: str = "paper"):
  variants = set(arg.split(",")) if arg else {"paper"}
  unknown = variants - {"paper", "runlocal", "three_class"}
  if unknown:
    raise ValueError(f"configs/isic2017.py: unknown variant(s) {sorted(unknown)}; "
                     "use paper, runlocal, three_class")
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
  seg = c.stages.segmentation
  seg.plateau_metric, seg.plateau_eval_every, seg.plateau_patience = (
      "val_jaccard", 500, 3)
  if "three_class" in variants:
    c.data.task = "three_class"
  if "runlocal" in variants:
    # The shared development copy has no test split: evaluate on validation.
    c.data.image_size = 144
    c.data.crop_size = 128
    c.data.eval_split = "validation"
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
        lr=0.05, decay_every=400, lambda_seg=7.5)
  return c

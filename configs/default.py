"""Default: the whole method on the embedded synthetic data set, CPU-sized.

No download. ResNet-18 at 1/4 width on 64 px images cropped to 56; output
stride 8 gives a 7x7 score map, the paper's grid size at 224 px / stride 32.
"""

from rapool_jax import config_lib


def get_config():
  c = config_lib.base_config()
  c.data.name = "synthetic_derm"
  c.data.image_size = 64
  c.data.crop_size = 56
  c.data.num_train, c.data.num_validation, c.data.num_test = 1200, 300, 600
  c.model.depth = "18"
  c.model.width = 0.25
  c.model.output_stride = 8
  c.model.dropout_rate = 0.1
  c.train.batch_size = 32
  c.train.eval_batch_size = 100
  c.train.log_every = 25
  c.train.checkpoint_every = 100
  c.stages = config_lib.paper_stages(
      classification_steps=300, segmentation_steps=100, joint_steps=300,
      lr=0.05, decay_every=200, lambda_seg=7.5)
  # Step 3 is shorter than one decay period: give it its own, so it anneals.
  c.stages.segmentation.decay_every = 50
  return c

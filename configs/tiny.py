"""Smallest config that exercises every step; used by the end-to-end tests."""

from rapool_jax import config_lib


def get_config():
  c = config_lib.base_config()
  c.data.name = "synthetic_derm"
  c.data.image_size = 32
  c.data.crop_size = 32
  c.data.num_train, c.data.num_validation, c.data.num_test = 40, 20, 20
  c.model.depth = "tiny"
  c.model.width = 0.0625
  c.model.output_stride = 8
  c.model.dropout_rate = 0.1
  c.train.batch_size = 8
  c.train.eval_batch_size = 20
  c.train.log_every = 2
  c.train.checkpoint_every = 2
  c.stages = config_lib.paper_stages(
      classification_steps=4, segmentation_steps=3, joint_steps=4,
      lr=0.05, decay_every=3)
  c.stages.segmentation.decay_every = 2  # anneals within its 3 steps
  c.rankopt.max_steps = 50
  c.report.num_cam_images = 2
  return c

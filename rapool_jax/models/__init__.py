"""Models: the ResNet backbone and the two-branch region-pooling network."""

from rapool_jax.models.resnet import ResNet, resnet
from rapool_jax.models.rapool_net import RAPoolNet, SegmentationUpsample

__all__ = ["ResNet", "resnet", "RAPoolNet", "SegmentationUpsample"]

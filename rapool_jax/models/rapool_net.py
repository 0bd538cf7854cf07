"""The two-branch network of the paper (Fig. 4): backbone -> {segmentation, classification}.

Segmentation branch: a 1x1 conv to two channels (h0 background, h1 lesion); the
score map ``S = softmax(h)[..., 1]`` (Eq. 2) at feature resolution weights the
pooling; the logits are upsampled by the output stride to the input size for a
pixel-wise loss. Classification branch: pooling chosen by name, then a dense layer.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rapool_jax import config_lib
from rapool_jax import errors
from rapool_jax import pooling as pooling_lib
from rapool_jax.models import dropout as dropout_lib
from rapool_jax.models import vgg as vgg_lib
from rapool_jax.models.resnet import resnet as make_resnet


def bilinear_kernel(stride: int, channels: int) -> np.ndarray:
  """FCN's bilinear init for a ``2*stride`` transposed conv, ``[k, k, C, C]``."""
  # FCN's upsample_filt for the even size 2s: center s - 0.5, factor s.
  og = np.arange(2 * stride, dtype=np.float32)
  filt1d = 1 - np.abs(og - (stride - 0.5)) / stride
  # Each channel is upsampled on its own: the filter on the channel diagonal.
  return (np.outer(filt1d, filt1d)[:, :, None, None]
          * np.eye(channels, dtype=np.float32))


def subpixel_phase_kernel(kernel, stride: int):
  """A transposed conv's ``[2s, 2s, Cin, Cout]`` kernel as the 3x3 kernel
  ``[3, 3, Cin, s*s*Cout]`` of its ``s*s`` output phases (crop ``s/2``)."""
  s = stride
  k = kernel.shape[0]
  if k != 2 * s or s % 2:
    raise ValueError(f"subpixel upsampling needs kernel 2*stride, even stride; "
                     f"got kernel {k}, stride {s}")
  p = s // 2
  cin, cout = kernel.shape[2], kernel.shape[3]
  # Output row o = s*q + r gets input row q + d with kernel tap r + p - d*s.
  r = np.arange(s)
  taps = np.stack([r + p + s, r + p, r + p - s])          # [3 (d=-1,0,1), s]
  valid = (taps >= 0) & (taps < k)
  taps = np.clip(taps, 0, k - 1)
  # w3[dy, dx, ry, rx, cin, cout]
  w3 = kernel[taps[:, None, :, None], taps[None, :, None, :]]
  w3 = w3 * jnp.asarray(valid[:, None, :, None] & valid[None, :, None, :],
                        kernel.dtype)[..., None, None]
  return jnp.transpose(w3, (0, 1, 4, 2, 3, 5)).reshape(3, 3, cin, s * s * cout)


def depth_to_space(y, stride: int):
  """``[B, h, w, s*s*C]`` phases (row phase major) -> ``[B, s*h, s*w, C]``."""
  b, h, w, c = y.shape
  cout = c // (stride * stride)
  y = y.reshape(b, h, w, stride, stride, cout)
  return jnp.transpose(y, (0, 1, 3, 2, 4, 5)).reshape(
      b, h * stride, w * stride, cout)


def transposed_conv_as_subpixel(x, kernel, stride: int):
  """Transposed conv (kernel ``2s``, stride ``s``, crop ``s/2``) without zero-stuffing.

  Same result as torch ``ConvTranspose2d(k=2s, stride=s, padding=s//2)`` with
  output ``[B, s*h, s*w, Cout]``, computed as a 3x3 conv to ``s*s*Cout``
  phase channels followed by depth-to-space. XLA lowers a plain transposed conv
  as a conv over an ``s``-times dilated input, i.e. ``s^2`` times the work
  (mostly multiplications by zero); this formulation does only the useful ones.

  Args:
    x: ``[B, h, w, Cin]``.
    kernel: ``[2s, 2s, Cin, Cout]`` (torch layout transposed to HWIO).
    stride: s, even.
  """
  w3 = subpixel_phase_kernel(kernel, stride)
  y = jax.lax.conv_general_dilated(
      x, w3.astype(x.dtype), window_strides=(1, 1), padding=((1, 1), (1, 1)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return depth_to_space(y, stride)


class SegmentationUpsample(nn.Module):
  """Upsamples ``[B, h, w, C]`` logits by ``stride`` to ``[B, sh, sw, C]``.

  ``mode="transposed"``: learned transposed conv initialised to bilinear (FCN);
  ``mode="bilinear"``: fixed bilinear resize, no parameters.
  """

  stride: int
  mode: str = "transposed"

  @nn.compact
  def __call__(self, x):
    x = x.astype(jnp.float32)
    if self.mode == "bilinear":
      b, h, w, c = x.shape
      return jax.image.resize(x, (b, h * self.stride, w * self.stride, c),
                              method="bilinear")
    if self.mode != "transposed":
      raise errors.UserError(
          f"model.upsample must be 'transposed' or 'bilinear', "
          f"got {self.mode!r}")
    c = x.shape[-1]
    kernel = self.param(
        "kernel", lambda *_: jnp.asarray(bilinear_kernel(self.stride, c)))
    bias = self.param("bias", nn.initializers.zeros, (c,))
    return transposed_conv_as_subpixel(x, kernel, self.stride) + bias


class RAPoolNet(nn.Module):
  """Backbone + segmentation branch + pooled classifier.

  ``__call__(images [B, H, W, 3], train, pooling=None, mask=None)`` returns a
  dict: ``logits [B, K]``, ``seg_logits [B, H, W, 2]`` (float32),
  ``score_map [B, h, w]`` (S of Eq. 2), ``pooled [B, C]``, ``features [B, h, w, C]``.
  ``bn_train=False`` keeps BatchNorm statistics fixed while training (Step 3).
  ``pooling`` overrides the module default per call, so one set of parameters
  serves the GAP step and the region-pooling step. ``mask [B, H, W]`` is only
  read by the ``mask_oracle`` pooling.
  """

  backbone: nn.Module
  num_classes: int = 2
  pooling: str = "gap"
  upsample: str = "transposed"

  @nn.compact
  def __call__(self, images, train: bool = False, pooling: str | None = None,
               mask=None, bn_train: bool | None = None):
    features = self.backbone(images, train=train, bn_train=bn_train)
    stride = images.shape[1] // features.shape[1]
    # The 2-channel head runs in float32: its softmax is the pooling weight.
    seg = nn.Conv(2, (1, 1), dtype=jnp.float32, name="seg_conv")(
        features.astype(jnp.float32))
    score_map = jax.nn.softmax(seg, axis=-1)[..., 1]
    seg_logits = SegmentationUpsample(stride, self.upsample,
                                      name="seg_upsample")(seg)
    pool_fn = pooling_lib.get_pooling(pooling or self.pooling)
    pooled = pool_fn(features, score_map, mask)
    logits = nn.Dense(self.num_classes, dtype=jnp.float32,
                      name="classifier")(pooled)
    return {"logits": logits, "seg_logits": seg_logits, "score_map": score_map,
            "pooled": pooled, "features": features}


DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def build_model(model_config, systems=None) -> RAPoolNet:
  """Builds the network from ``config.model`` (depth, width, output_stride,
  ...) and ``config.systems`` (default: ``config_lib.systems_config()``)."""
  systems = systems or config_lib.systems_config()
  errors.check_choice("config.model.dtype", model_config.dtype, tuple(DTYPES))
  errors.check_range("config.model.width", model_config.width, low=0,
                     low_open=True)
  rng, bits = systems.dropout_rng, systems.dropout_bits
  dropout_lib.check_dropout(model_config.dropout_rate, bits, rng)
  # flax's nn.Dropout unless config.systems chooses cheaper masks.
  dropout = (nn.Dropout if (rng, bits) == ("threefry", 32) else
             functools.partial(dropout_lib.Dropout, bits=bits, rng=rng))
  kwargs = dict(width=model_config.width,
                output_stride=model_config.output_stride,
                dropout_rate=model_config.dropout_rate, dropout=dropout,
                dtype=DTYPES[model_config.dtype])
  name = model_config.get("backbone", "resnet")
  if name == "resnet":
    backbone = make_resnet(model_config.depth, **kwargs)
  elif name in ("vgg11", "vgg13", "vgg16", "vgg19"):
    backbone = vgg_lib.vgg(name, batch_norm=model_config.get("batch_norm", True),
                           **kwargs)
  else:
    raise errors.UserError(f"config.model.backbone={name!r}: choose 'resnet', "
                           "'vgg11', 'vgg13', 'vgg16' or 'vgg19'")
  return RAPoolNet(backbone=backbone, num_classes=model_config.num_classes,
                   upsample=model_config.upsample)

"""A small decoder-only transformer language model, in Flax linen and in Flax NNX.

For a sequence of tokens :math:`t_1..t_T` (bytes, by default: vocabulary 256) the model
computes next-token logits at every position:

.. math::
  h^0_i = E[t_i] + P_i, \\qquad
  a^l = h^{l-1} + \\mathrm{MHA}(\\mathrm{LN}(h^{l-1}); \\text{causal}), \\qquad
  h^l = a^l + W_2\\,\\mathrm{gelu}(W_1\\,\\mathrm{LN}(a^l) + b_1) + b_2,

  \\text{logits}_i = W_o\\,\\mathrm{LN}(h^L_i) + b_o

a pre-LayerNorm decoder (Radford et al. 2019, GPT-2; Xiong et al. 2020): token
embedding :math:`E`, positions :math:`P` learned or sinusoidal (Vaswani et al. 2017,
Sec. 3.5), ``depth`` blocks of causal multi-head self-attention and a ``4·width``
GELU MLP, a final LayerNorm and an untied output layer. No dropout: at the sizes this
project trains on one CPU the model underfits.

Both APIs name every parameter alike, so ``nnx.state(model, nnx.Param)`` as a pure
dict *is* the linen ``params`` tree: :func:`flax_models.load_linen_params` and
:func:`linen_params` move weights between them unchanged. The attention projections
are ``nn.MultiHeadDotProductAttention`` / ``nnx.MultiHeadAttention`` (``DenseGeneral``
/ ``LinearGeneral`` kernels), the MLP and the output layer ``Dense`` / ``Linear``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = [
  "TransformerLM",
  "TransformerLMNNX",
  "linen_params",
  "sinusoidal_positions",
]

POSITIONS = ("learned", "sinusoidal")


def sinusoidal_positions(context: int, width: int) -> np.ndarray:
  """Vaswani et al.'s encoding: ``sin`` on even features, ``cos`` on odd, wavelengths
  ``2π·10000^(2k/width)``; a ``(context, width)`` float32 array."""
  pos = np.arange(context)[:, None]
  k = np.arange(0, width, 2)[None, :]
  angle = pos / np.power(10000.0, k / width)
  table = np.zeros((context, width), np.float32)
  table[:, 0::2] = np.sin(angle)
  table[:, 1::2] = np.cos(angle[:, : width // 2])
  return table


def _check_config(vocab_size, width, depth, heads, context, positions) -> None:
  for name, v in (("vocab_size", vocab_size), ("width", width), ("depth", depth)):
    if v < 1:
      raise ValueError(f"{name} must be >= 1, got {v}")
  if heads < 1 or width % heads:
    raise ValueError(f"heads must be >= 1 and divide width={width}, got {heads}")
  if context < 1:
    raise ValueError(f"context must be >= 1, got {context}")
  if positions not in POSITIONS:
    raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}")


def _check_tokens(x, context: int) -> None:
  if x.ndim != 2 or x.shape[1] > context:
    raise ValueError(
      f"expected tokens of shape (batch, length <= context={context}), got {x.shape}"
    )


# --------------------------------------------------------------------------- linen


class _Block(nn.Module):
  width: int
  heads: int
  dtype: Any

  @nn.compact
  def __call__(self, h, mask):
    a = nn.LayerNorm(dtype=self.dtype, name="ln_attn")(h)
    a = nn.MultiHeadDotProductAttention(self.heads, dtype=self.dtype, name="attn")(a, mask=mask)
    h = h + a
    m = nn.LayerNorm(dtype=self.dtype, name="ln_mlp")(h)
    m = nn.gelu(nn.Dense(4 * self.width, dtype=self.dtype, name="mlp_in")(m))
    return h + nn.Dense(self.width, dtype=self.dtype, name="mlp_out")(m)


class TransformerLM(nn.Module):
  """Decoder-only transformer LM (linen): int tokens ``(batch, T)`` → logits ``(batch, T, vocab)``.

  Attributes:
    vocab_size: Tokens (256 for bytes).
    width: Model width (embedding size); ``heads`` must divide it.
    depth: Number of blocks.
    heads: Attention heads.
    context: Longest sequence (the size of the learned position table).
    positions: ``"learned"`` or ``"sinusoidal"``.
    dtype: Computation dtype (parameters stay float32).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> model = TransformerLM(width=32, depth=1, heads=2, context=16)
    >>> x = jnp.zeros((2, 16), jnp.int32)
    >>> variables = model.init({'params': jax.random.key(0)}, x, train=False)
    >>> model.apply(variables, x, train=False).shape
    (2, 16, 256)

  References:
    Vaswani et al., *Attention Is All You Need*, NeurIPS 2017; Radford et al.,
    *Language Models are Unsupervised Multitask Learners*, 2019 (GPT-2, pre-LN);
    Xiong et al., *On Layer Normalization in the Transformer Architecture*, ICML 2020.
  """

  vocab_size: int = 256
  width: int = 128
  depth: int = 2
  heads: int = 4
  context: int = 128
  positions: str = "learned"
  dtype: Any = jnp.float32

  def __post_init__(self):
    _check_config(self.vocab_size, self.width, self.depth, self.heads, self.context, self.positions)
    super().__post_init__()

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # no dropout
    _check_tokens(x, self.context)
    h = nn.Embed(self.vocab_size, self.width, name="embed")(x)
    if self.positions == "learned":
      table = nn.Embed(self.context, self.width, name="pos_embed").embedding
    else:
      table = jnp.asarray(sinusoidal_positions(self.context, self.width))
    h = (h + table[: x.shape[1]]).astype(self.dtype)
    mask = nn.make_causal_mask(x)
    for i in range(self.depth):
      h = _Block(self.width, self.heads, self.dtype, name=f"block_{i}")(h, mask)
    h = nn.LayerNorm(dtype=self.dtype, name="ln_final")(h)
    return nn.Dense(self.vocab_size, dtype=self.dtype, name="head")(h)


# --------------------------------------------------------------------------- NNX


class _BlockNNX(nnx.Module):
  def __init__(self, width: int, heads: int, dtype, rngs: nnx.Rngs):
    self.ln_attn = nnx.LayerNorm(width, dtype=dtype, rngs=rngs)
    self.attn = nnx.MultiHeadAttention(
      heads, width, dtype=dtype, decode=False, keep_rngs=False, rngs=rngs
    )
    self.ln_mlp = nnx.LayerNorm(width, dtype=dtype, rngs=rngs)
    self.mlp_in = nnx.Linear(width, 4 * width, dtype=dtype, rngs=rngs)
    self.mlp_out = nnx.Linear(4 * width, width, dtype=dtype, rngs=rngs)

  def __call__(self, h, mask):
    h = h + self.attn(self.ln_attn(h), mask=mask, deterministic=True)
    return h + self.mlp_out(nnx.gelu(self.mlp_in(self.ln_mlp(h))))


class TransformerLMNNX(nnx.Module):
  """The same model as :class:`TransformerLM`, in Flax NNX, parameters named alike.

  Examples:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> model = TransformerLMNNX(width=32, depth=1, heads=2, context=16, rngs=nnx.Rngs(0))
    >>> model(jnp.zeros((2, 16), jnp.int32)).shape
    (2, 16, 256)
    >>> sorted(linen_params(model))
    ['block_0', 'embed', 'head', 'ln_final', 'pos_embed']
  """

  def __init__(
    self,
    vocab_size: int = 256,
    width: int = 128,
    depth: int = 2,
    heads: int = 4,
    context: int = 128,
    positions: str = "learned",
    dtype: Any = jnp.float32,
    *,
    rngs: nnx.Rngs,
  ):
    _check_config(vocab_size, width, depth, heads, context, positions)
    self.context, self.depth, self.positions, self.dtype = context, depth, positions, dtype
    self.vocab_size, self.width = vocab_size, width
    self.embed = nnx.Embed(vocab_size, width, rngs=rngs)
    if positions == "learned":
      self.pos_embed = nnx.Embed(context, width, rngs=rngs)
    for i in range(depth):
      setattr(self, f"block_{i}", _BlockNNX(width, heads, dtype, rngs))
    self.ln_final = nnx.LayerNorm(width, dtype=dtype, rngs=rngs)
    self.head = nnx.Linear(width, vocab_size, dtype=dtype, rngs=rngs)

  def __call__(self, x, train: bool = False):
    del train
    _check_tokens(x, self.context)
    if self.positions == "learned":
      table = self.pos_embed.embedding[...]
    else:
      table = jnp.asarray(sinusoidal_positions(self.context, self.width))
    h = (self.embed(x) + table[: x.shape[1]]).astype(self.dtype)
    mask = nnx.make_causal_mask(x)
    for i in range(self.depth):
      h = getattr(self, f"block_{i}")(h, mask)
    return self.head(self.ln_final(h))


# --------------------------------------------------------------------------- weights


def linen_params(model: nnx.Module) -> dict:
  """An NNX model's ``nnx.Param`` values as a pure nested dict: for a model whose
  parameters are named as its linen twin's, that twin's ``params``."""
  return nnx.state(model, nnx.Param).to_pure_dict()

"""`layers.project`: values and hand-written gradients against NumPy float64 formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.models.layers import causal_attention, project


def _numpy_project_and_grads(x, kernel, grad_out, contract):
  """y = x . W over the last `contract` axes, and for L = sum(y * G):
  dL/dx = G . W^T and dL/dW = x^T . G, both as explicit float64 loops over flat axes."""
  x64, k64, g64 = (np.asarray(a, np.float64) for a in (x, kernel, grad_out))
  lead, inner = x64.shape[: x64.ndim - contract], x64.shape[x64.ndim - contract:]
  outer = k64.shape[contract:]
  x2 = x64.reshape(-1, int(np.prod(inner)))
  k2 = k64.reshape(int(np.prod(inner)), -1)
  g2 = g64.reshape(x2.shape[0], -1)
  y = np.zeros((x2.shape[0], k2.shape[1]))
  for n in range(x2.shape[0]):
    for i in range(x2.shape[1]):
      y[n] += x2[n, i] * k2[i]
  grad_x = np.stack([k2 @ g2[n] for n in range(x2.shape[0])])
  grad_k = sum(np.outer(x2[n], g2[n]) for n in range(x2.shape[0]))
  return (y.reshape(*lead, *outer), grad_x.reshape(x64.shape), grad_k.reshape(k64.shape))


@pytest.mark.parametrize(
    "x_shape, kernel_shape, contract",
    [
        ((2, 3, 4), (4, 5), 1),  # d -> f (MLP, output layer)
        ((2, 3, 4), (4, 2, 3), 1),  # d -> heads x head_dim (query/key/value)
        ((2, 3, 2, 3), (2, 3, 4), 2),  # heads x head_dim -> d (attention output)
        ((5, 4), (4, 1), 1),  # no batch axis, one output
    ],
)
def test_project_values_and_gradients_match_numpy(x_shape, kernel_shape, contract):
  rng = np.random.default_rng(0)
  x = rng.normal(size=x_shape).astype(np.float32)
  kernel = rng.normal(size=kernel_shape).astype(np.float32)
  out_shape = x_shape[: len(x_shape) - contract] + kernel_shape[contract:]
  grad_out = rng.normal(size=out_shape).astype(np.float32)
  want_y, want_dx, want_dk = _numpy_project_and_grads(x, kernel, grad_out, contract)

  y = jax.jit(project, static_argnums=2)(x, kernel, contract)
  loss = lambda x, k: jnp.sum(project(x, k, contract) * grad_out)
  dx, dk = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, kernel)

  assert y.shape == want_y.shape and dx.shape == x.shape and dk.shape == kernel.shape
  np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dx, want_dx, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dk, want_dk, rtol=1e-5, atol=1e-5)


def test_project_gradient_through_a_nonlinearity_matches_tensordot():
  """The custom VJP composes with what surrounds it: the SwiGLU of the feed-forward layer
  differentiated through `project` equals the same function written with tensordot."""
  rng = np.random.default_rng(1)
  x = rng.normal(size=(3, 7, 8)).astype(np.float32)
  gate, up = (rng.normal(size=(8, 16)).astype(np.float32) * 0.3 for _ in range(2))
  down = rng.normal(size=(16, 8)).astype(np.float32) * 0.3

  def swiglu(dot, x, gate, up, down):
    return jnp.sum(jnp.tanh(dot(jax.nn.silu(dot(x, gate)) * dot(x, up), down)))

  ours = jax.grad(lambda *a: swiglu(project, *a), argnums=(0, 1, 2, 3))(x, gate, up, down)
  plain = jax.grad(lambda *a: swiglu(lambda u, w: jnp.tensordot(u, w, 1), *a),
                   argnums=(0, 1, 2, 3))(x, gate, up, down)
  for a, b in zip(ours, plain):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_project_keeps_bfloat16():
  x = jnp.ones((2, 4), jnp.bfloat16)
  kernel = jnp.full((4, 3), 0.5, jnp.bfloat16)
  y, grads = jax.value_and_grad(lambda x, k: project(x, k).astype(jnp.float32).sum(),
                                argnums=(0, 1))(x, kernel)
  assert float(y) == 12.0  # 2 x 3 outputs, each 4 x 0.5
  assert grads[0].dtype == jnp.bfloat16 and grads[1].dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(grads[0], np.float32), np.full((2, 4), 1.5))
  np.testing.assert_array_equal(np.asarray(grads[1], np.float32), np.full((4, 3), 2.0))


def test_project_rejects_mismatched_axes():
  with pytest.raises(ValueError, match=r"x ends in \(4,\), but the kernel starts with \(5,\)"):
    project(jnp.ones((2, 4)), jnp.ones((5, 3)))


def test_project_gradients_keep_each_input_dtype_when_they_differ():
  """float32 activations through a bfloat16 kernel: `x @ w` promotes to float32, and each
  gradient comes back in its own input's dtype, equal to the same product by tensordot."""
  rng = np.random.default_rng(2)
  x = rng.normal(size=(3, 4)).astype(np.float32)
  kernel = jnp.asarray(rng.normal(size=(4, 2)), jnp.bfloat16)
  loss = lambda dot: (lambda x, k: jnp.sum(jnp.sin(dot(x, k))))
  ours = jax.grad(loss(project), argnums=(0, 1))(x, kernel)
  plain = jax.grad(loss(lambda u, w: jnp.tensordot(u, w, 1)), argnums=(0, 1))(x, kernel)
  assert ours[0].dtype == jnp.float32 and ours[1].dtype == jnp.bfloat16
  for a, b in zip(ours, plain):
    assert a.dtype == b.dtype
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=1e-2, atol=1e-2)


def _attention_numpy(q, k, v, mask):
  """Float64 loops: out[b, t, h] = sum_s softmax over allowed s of q.k / sqrt(Dh), times v."""
  batch, length, heads, dim = q.shape
  repeats = heads // k.shape[2]
  out = np.zeros(q.shape)
  for b in range(batch):
    for h in range(heads):
      for t in range(length):
        allowed = np.flatnonzero(mask[b, 0, t])
        scores = np.array([q[b, t, h] @ k[b, s, h // repeats] for s in allowed]) / np.sqrt(dim)
        weights = np.exp(scores - scores.max())
        weights /= weights.sum()
        out[b, t, h] = sum(w * v[b, s, h // repeats] for w, s in zip(weights, allowed))
  return out


def _causal_padding_segment_mask(lengths, segments, length):
  slots = np.arange(length)
  mask = (slots[None, :] <= slots[:, None])[None] & (slots[None, None, :] < np.asarray(lengths)[:, None, None])
  same = segments[:, :, None] == segments[:, None, :]
  prefix = (segments == 0)[:, None, :]
  return (mask & (same | prefix))[:, None]


@pytest.mark.parametrize("query_blocks", [1, 2, 4])
@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2)])
def test_causal_attention_matches_numpy_and_xla(query_blocks, heads, kv_heads):
  rng = np.random.default_rng(query_blocks * 10 + kv_heads)
  batch, length, dim = 3, 8, 4
  q = rng.normal(size=(batch, length, heads, dim))
  k = rng.normal(size=(batch, length, kv_heads, dim))
  v = rng.normal(size=(batch, length, kv_heads, dim))
  segments = np.array([[0] * 8, [0, 0, 0, 1, 1, 2, 2, 2], [0, 0, 1, 1, 1, 1, 2, 2]])
  mask = _causal_padding_segment_mask([8, 6, 3], segments, length)
  out = causal_attention(*(jnp.asarray(x, jnp.float32) for x in (q, k, v)), jnp.asarray(mask),
                         query_blocks=query_blocks)
  # Rows 1 and 2 end in padding queries, whose outputs are never read: compare real rows.
  real = np.arange(length)[None, :] < np.array([8, 6, 3])[:, None]
  np.testing.assert_allclose(np.asarray(out)[real], _attention_numpy(q, k, v, mask)[real], atol=1e-5)

  weight = jnp.asarray(rng.normal(size=q.shape) * real[:, :, None, None], jnp.float32)

  def loss(fn):
    return lambda q, k, v: jnp.sum(fn(q, k, v) * weight)

  args = tuple(jnp.asarray(x, jnp.float32) for x in (q, k, v))
  ours = jax.grad(loss(lambda q, k, v: causal_attention(q, k, v, jnp.asarray(mask), query_blocks)),
                  argnums=(0, 1, 2))(*args)
  xla = jax.grad(loss(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=jnp.asarray(mask))),
                 argnums=(0, 1, 2))(*args)
  for a, b in zip(ours, xla):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)

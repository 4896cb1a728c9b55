"""The transformer's pieces: derivatives to second order, causality, batch invariance."""
import math

import numpy as np
import pytest

import scratchmeta as sm
from scratchmeta import functional as F
from scratchmeta import transformer as tf
from scratchmeta.optim import Adam


def _randn(rng, *shape):
    return rng.standard_normal(shape)


# -- first- and second-order derivatives of every piece ----------------------------
def test_layer_norm_grads_order2():
    rng = np.random.default_rng(0)
    x, w, b = _randn(rng, 2, 3, 4), _randn(rng, 4), _randn(rng, 4)
    sm.check_grads(lambda x, w, b: F.layer_norm(x, w, b), (x, w, b), order=2)


def test_gelu_grads_order2():
    x = np.linspace(-3, 3, 11)
    sm.check_grads(F.gelu, (x,), order=2)


def test_read_in_and_read_out_linear_grads_order2():
    rng = np.random.default_rng(1)
    x, w, b = _randn(rng, 2, 3, 4), _randn(rng, 5, 4), _randn(rng, 5)
    sm.check_grads(F.linear, (x, w, b), order=2)


@pytest.mark.parametrize("causal", [True, False])
def test_attention_grads_order2(causal):
    rng = np.random.default_rng(2)
    q, k, v = (_randn(rng, 2, 4, 3) for _ in range(3))
    sm.check_grads(lambda q, k, v: tf.attention(q, k, v, causal=causal), (q, k, v), order=2)


def test_multi_head_attention_grads_order2():
    rng = np.random.default_rng(3)
    D, H = 4, 2
    h = _randn(rng, 2, 3, D)
    w_qkv, b_qkv = 0.5 * _randn(rng, 3 * D, D), 0.1 * _randn(rng, 3 * D)
    w_out, b_out = 0.5 * _randn(rng, D, D), 0.1 * _randn(rng, D)
    sm.check_grads(lambda *a: tf.multi_head_attention(*a, n_heads=H),
                   (h, w_qkv, b_qkv, w_out, b_out), order=2)


def test_whole_model_grads_order2():
    model = tf.Transformer(n_dims=3, width=4, depth=1, heads=2, max_len=6, mlp_ratio=2)
    params = model.init(0)
    rng = np.random.default_rng(4)
    tokens = _randn(rng, 2, 3, 3)

    # differentiate with respect to the tokens and the read-in weights (the rest fixed)
    def f(tokens, w_in, pos):
        p = dict(params, **{"read_in.w": w_in, "pos": pos})
        return model(p, tokens)

    sm.check_grads(f, (tokens, params["read_in.w"].data * 10, params["pos"].data * 10), order=2)


# -- the attention computes what Eq. 1 says ---------------------------------------
def test_attention_matches_explicit_softmax():
    rng = np.random.default_rng(5)
    q, k, v = (_randn(rng, 3, 2) for _ in range(3))
    s = q @ k.T / math.sqrt(2)
    s = np.where(np.tril(np.ones((3, 3), bool)), s, -np.inf)
    a = np.exp(s - s.max(1, keepdims=True))
    a /= a.sum(1, keepdims=True)
    out = tf.attention(q, k, v, causal=True)
    np.testing.assert_allclose(out.numpy(), a @ v, rtol=1e-12)
    # the first query sees only the first key: its output is v_1 exactly
    np.testing.assert_allclose(out.numpy()[0], v[0], rtol=1e-12)


def test_heads_are_independent_attentions():
    """MultiHead = concat of per-head attentions, then W^O (Vaswani et al. Sec. 3.2.2)."""
    rng = np.random.default_rng(6)
    B, L, D, H = 2, 3, 4, 2
    h = _randn(rng, B, L, D)
    w_qkv, w_out = _randn(rng, 3 * D, D), _randn(rng, D, D)
    out = tf.multi_head_attention(h, w_qkv, None, w_out, None, n_heads=H).numpy()
    q, k, v = np.split(h @ w_qkv.T, 3, axis=-1)
    dh = D // H
    heads = [tf.attention(q[..., i * dh:(i + 1) * dh], k[..., i * dh:(i + 1) * dh],
                          v[..., i * dh:(i + 1) * dh]).numpy() for i in range(H)]
    np.testing.assert_allclose(out, np.concatenate(heads, -1) @ w_out.T, rtol=1e-10)


# -- causality, checked by gradients ----------------------------------------------
@pytest.mark.parametrize("positions", ["learned", "sinusoidal"])
def test_causal_mask_stops_gradient_from_later_positions(positions):
    model = tf.Transformer(n_dims=3, width=8, depth=2, heads=2, max_len=8, positions=positions)
    params = model.init(1)
    rng = np.random.default_rng(7)
    tokens = sm.tensor(_randn(rng, 2, 6, 3), requires_grad=True)
    out = model(params, tokens)                                   # (2, 6, 1)
    for i in range(6):
        (g,) = sm.grad(out[:, i].sum(), tokens)
        g = np.abs(g.numpy()).sum(axis=(0, 2))                    # per input position
        assert np.all(g[i + 1:] == 0.0), f"output {i} depends on later tokens: {g}"
        assert np.all(g[:i + 1] > 0.0), f"output {i} ignores an earlier token: {g}"


def test_second_order_also_respects_the_mask():
    """The Hessian-vector product through attention keeps the future out too."""
    model = tf.Transformer(n_dims=2, width=4, depth=1, heads=1, max_len=4)
    params = model.init(2)
    rng = np.random.default_rng(8)
    tokens = sm.tensor(_randn(rng, 1, 4, 2), requires_grad=True)
    out = model(params, tokens)
    (g,) = sm.grad((out[:, 1] ** 2).sum(), tokens, create_graph=True)
    (hv,) = sm.grad((g * g).sum(), tokens)
    assert np.all(hv.numpy()[:, 2:] == 0.0)
    assert np.any(hv.numpy()[:, :2] != 0.0)


def test_output_invariant_to_batch_order():
    model = tf.Transformer(n_dims=3, width=8, depth=2, heads=4, max_len=10)
    params = model.init(3)
    rng = np.random.default_rng(9)
    tokens = _randn(rng, 5, 7, 3)
    perm = rng.permutation(5)
    out = model(params, tokens).numpy()
    out_perm = model(params, tokens[perm]).numpy()
    np.testing.assert_allclose(out_perm, out[perm], rtol=1e-12, atol=1e-14)
    # and a prompt's output does not depend on the other prompts in the batch
    np.testing.assert_allclose(model(params, tokens[2:3]).numpy(), out[2:3], rtol=1e-12, atol=1e-14)


def test_prefix_outputs_do_not_change_when_the_sequence_grows():
    model = tf.Transformer(n_dims=2, width=8, depth=2, heads=2, max_len=8)
    params = model.init(4)
    tokens = np.random.default_rng(10).standard_normal((3, 8, 2))
    full = model(params, tokens).numpy()
    np.testing.assert_allclose(model(params, tokens[:, :5]).numpy(), full[:, :5], rtol=1e-10, atol=1e-13)


# -- positions ------------------------------------------------------------------
def test_sinusoidal_positions_closed_form():
    pe = tf.sinusoidal_positions(5, 6).numpy()
    p, i = 3, 2                                                   # position 3, pair 2
    np.testing.assert_allclose(pe[p, 2 * i], math.sin(p / 10000 ** (2 * i / 6)))
    np.testing.assert_allclose(pe[p, 2 * i + 1], math.cos(p / 10000 ** (2 * i / 6)))
    np.testing.assert_allclose(pe[0], [0, 1, 0, 1, 0, 1])
    assert tf.sinusoidal_positions(4, 5).shape == (4, 5)         # odd width


def test_positions_break_permutation_symmetry():
    """Without positions causal attention sees a set; with them, order matters."""
    model = tf.Transformer(n_dims=2, width=8, depth=1, heads=2, max_len=4)
    params = model.init(5)
    t = np.random.default_rng(11).standard_normal((1, 3, 2))
    swapped = t[:, [1, 0, 2]]

    def last(p, tokens):              # the last output sees both orders of the same set
        return model(p, tokens).numpy()[0, 2]

    no_pos = dict(params, pos=sm.tensor(np.zeros_like(params["pos"].numpy())))
    np.testing.assert_allclose(last(no_pos, t), last(no_pos, swapped), rtol=1e-12, atol=1e-14)
    assert np.abs(last(params, t) - last(params, swapped)).max() > 1e-9


# -- bad input --------------------------------------------------------------------
def test_bad_sequences_raise_clear_errors():
    model = tf.Transformer(n_dims=3, width=8, depth=1, heads=2, max_len=4)
    params = model.init(0)
    with pytest.raises(ValueError, match="longer than the model's context"):
        model(params, np.zeros((1, 5, 3)))
    with pytest.raises(ValueError, match="n_dims=3"):
        model(params, np.zeros((1, 2, 4)))
    with pytest.raises(ValueError, match="empty"):
        model(params, np.zeros((1, 0, 3)))
    with pytest.raises(ValueError, match=r"\(batch, length, n_dims\)"):
        model(params, np.zeros((2, 3)))


def test_bad_model_arguments():
    with pytest.raises(ValueError, match="divisible"):
        tf.Transformer(n_dims=2, width=10, heads=4)
    with pytest.raises(ValueError, match="positions"):
        tf.Transformer(n_dims=2, positions="rotary")
    with pytest.raises(ValueError, match="depth"):
        tf.Transformer(n_dims=2, depth=0)


def test_init_shapes_and_config_round_trip():
    model = tf.Transformer(n_dims=5, width=16, depth=2, heads=4, max_len=12)
    params = model.init(0)
    assert params["read_in.w"].shape == (16, 5) and params["pos"].shape == (12, 16)
    assert params["block1.attn.w_qkv"].shape == (48, 16) and params["read_out.w"].shape == (1, 16)
    cfg = model.config()
    cfg.pop("model")
    again = tf.Transformer(**cfg).init(0)
    assert all(np.array_equal(params[k].numpy(), again[k].numpy()) for k in params)
    assert "pos" not in tf.Transformer(n_dims=5, width=16, positions="sinusoidal").init(0)



def test_io_init_pytorch_default_and_gpt2():
    """Read-in/read-out start as torch.nn.Linear does (Garg et al.'s code), or as GPT-2's blocks."""
    width, d = 64, 5
    torch_like = tf.Transformer(n_dims=d, width=width, depth=1, heads=4).init(3)
    for name, fan_in in (("read_in", d), ("read_out", width)):
        for part in ("w", "b"):
            v = torch_like[f"{name}.{part}"].numpy()
            bound = 1 / math.sqrt(fan_in)
            assert np.abs(v).max() <= bound and np.abs(v).max() > 0.8 * bound   # U(-b, b) fills it
    # inside the blocks nothing changes: N(0, 0.02^2), zero biases
    assert abs(torch_like["block0.attn.w_qkv"].numpy().std() - 0.02) < 0.002
    gpt2 = tf.Transformer(n_dims=d, width=width, depth=1, heads=4, io_init="gpt2").init(3)
    assert abs(gpt2["read_in.w"].numpy().std() - 0.02) < 0.005
    assert not gpt2["read_in.b"].numpy().any() and not gpt2["read_out.b"].numpy().any()
    with pytest.raises(ValueError, match="io_init"):
        tf.Transformer(n_dims=d, io_init="xavier")

# -- AdamW, the optimiser the transformer trains with ---------------------------------
def test_adamw_first_step_closed_form():
    """Step 1: mhat = g, vhat = g^2, so theta - lr (g / (|g| + eps) + wd theta)."""
    theta = {"w": sm.tensor(np.array([1.0, -2.0, 3.0]), requires_grad=True)}
    g = {"w": sm.tensor(np.array([0.5, -0.1, 0.0]))}
    lr, wd, eps = 0.1, 0.01, 1e-8
    new = Adam(lr=lr, eps=eps, weight_decay=wd).step(theta, g)["w"].numpy()
    gw, w = g["w"].numpy(), theta["w"].numpy()
    np.testing.assert_allclose(new, w - lr * (gw / (np.abs(gw) + eps) + wd * w), rtol=1e-12)

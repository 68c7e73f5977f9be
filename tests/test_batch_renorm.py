"""BatchRenorm against a plain numpy transcription of ``dime.md`` §4.2 (train/eval, running stats, warm-up)."""

import numpy as np
import pytest
import torch

from dime.batch_renorm import BatchRenorm


class NumpyBatchRenorm:
    """The spec's pseudo-code, line by line, in float64 numpy (one member)."""

    def __init__(self, features, warmup, momentum=0.99, eps=1e-3, r_max=3.0, d_max=5.0):
        self.mean, self.var, self.steps = np.zeros(features), np.ones(features), 0
        self.warmup, self.momentum, self.eps, self.r_max, self.d_max = warmup, momentum, eps, r_max, d_max

    def train(self, x, gamma, beta):
        mu = x.mean(0)
        v = np.maximum(0.0, (x**2).mean(0) - mu**2)
        if self.steps >= self.warmup:
            r = np.clip(np.sqrt(v + self.eps) / np.sqrt(self.var + self.eps), 1 / self.r_max, self.r_max)
            d = np.clip((mu - self.mean) / np.sqrt(self.var + self.eps), -self.d_max, self.d_max)
            m_star, v_star = mu - d * np.sqrt(v) / r, v / r**2
        else:
            m_star, v_star = mu, v
        y = (x - m_star) / np.sqrt(v_star + self.eps) * gamma + beta
        self.mean = self.momentum * self.mean + (1 - self.momentum) * mu
        self.var = self.momentum * self.var + (1 - self.momentum) * v
        self.steps += 1
        return y

    def eval(self, x, gamma, beta):
        return (x - self.mean) / np.sqrt(self.var + self.eps) * gamma + beta


def _batches(rng, n_batches, rows, features):
    """Batches whose scale and offset drift, so that r and d leave 1 and 0 and hit their clips."""
    out = []
    for i in range(n_batches):
        scale = np.array([1.0, 10.0, 0.05, 2.0])[:features] * (1 + 0.3 * i)
        shift = np.array([0.0, 40.0, -0.1, 1.0])[:features] * (1 + 0.5 * i)
        out.append(rng.normal(size=(rows, features)) * scale + shift)
    return out


def test_train_eval_and_running_stats_match_numpy_before_and_after_warmup():
    rng = np.random.default_rng(0)
    features, warmup = 4, 3
    layer = BatchRenorm(features, warmup_steps=warmup)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([1.0, 0.5, 2.0, -1.0]))
        layer.bias.copy_(torch.tensor([0.0, 1.0, -1.0, 0.3]))
    gamma, beta = layer.weight.detach().double().numpy(), layer.bias.detach().double().numpy()
    reference = NumpyBatchRenorm(features, warmup)
    renorm_was_active = False
    for step, x in enumerate(_batches(rng, 7, 64, features)):
        expected = reference.train(x, gamma, beta)
        plain_bn = (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-3) * gamma + beta
        y = layer(torch.tensor(x, dtype=torch.float32), training=True)
        np.testing.assert_allclose(y.detach().numpy(), expected, rtol=2e-4, atol=2e-4)
        np.testing.assert_allclose(layer.running_mean.numpy(), reference.mean, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(layer.running_var.numpy(), reference.var, rtol=1e-5, atol=1e-5)
        assert int(layer.steps) == step + 1
        if step < warmup:  # plain batch norm (biased variance) during warm-up
            np.testing.assert_allclose(expected, plain_bn, rtol=1e-10, atol=1e-10)
        else:
            renorm_was_active |= not np.allclose(expected, plain_bn, atol=1e-2)
        x_eval = rng.normal(size=(5, features)) * 3
        before = layer.running_mean.clone(), layer.running_var.clone(), layer.steps.clone()
        y_eval = layer(torch.tensor(x_eval, dtype=torch.float32), training=False)
        np.testing.assert_allclose(y_eval.detach().numpy(), reference.eval(x_eval, gamma, beta), rtol=1e-4, atol=1e-4)
        for b, a in zip(before, (layer.running_mean, layer.running_var, layer.steps)):
            assert torch.equal(b, a), "eval mode must not touch the running statistics"
    assert renorm_was_active, "test data never moved the renorm correction away from plain batch norm"


def test_ensemble_members_keep_their_own_statistics():
    rng = np.random.default_rng(1)
    members, features, warmup = 2, 3, 2
    layer = BatchRenorm(features, ensemble_size=members, warmup_steps=warmup)
    references = [NumpyBatchRenorm(features, warmup) for _ in range(members)]
    ones, zeros = np.ones(features), np.zeros(features)
    for step in range(5):
        x = np.stack([b for b in _batches(rng, 2, 32, features)]) * np.array([1.0, 3.0])[:, None, None] + step
        y = layer(torch.tensor(x, dtype=torch.float32), training=True)
        for m in range(members):
            np.testing.assert_allclose(y[m].detach().numpy(), references[m].train(x[m], ones, zeros), atol=3e-4)
            np.testing.assert_allclose(layer.running_mean[m, 0].numpy(), references[m].mean, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(layer.running_var[m, 0].numpy(), references[m].var, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(layer.running_var[0], layer.running_var[1])
    x_eval = rng.normal(size=(members, 4, features))
    y_eval = layer(torch.tensor(x_eval, dtype=torch.float32), training=False)
    for m in range(members):
        np.testing.assert_allclose(y_eval[m].detach().numpy(), references[m].eval(x_eval[m], ones, zeros), atol=1e-4)


@pytest.mark.parametrize("warmed_up", [False, True])
def test_gradient_flows_through_batch_stats_but_not_r_d(warmed_up):
    """d y / d x equals autograd of the spec's formula with r and d held constant (stop-gradient)."""
    torch.manual_seed(0)
    layer = BatchRenorm(3, warmup_steps=0 if warmed_up else 10).double()
    with torch.no_grad():
        layer.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
        layer.running_var.copy_(torch.tensor([0.3, 4.0, 1.0]))
    x = (torch.randn(16, 3, dtype=torch.float64) * 2).requires_grad_()
    upstream = torch.randn(16, 3, dtype=torch.float64)
    (grad,) = torch.autograd.grad((layer(x, training=True) * upstream).sum(), x)

    x2 = x.detach().clone().requires_grad_()
    mu, v = x2.mean(0), (x2 * x2).mean(0) - x2.mean(0) ** 2
    if warmed_up:
        rm, rv = torch.tensor([0.5, -1.0, 2.0]).double(), torch.tensor([0.3, 4.0, 1.0]).double()
        r = (torch.sqrt(v + 1e-3) / torch.sqrt(rv + 1e-3)).clamp(1 / 3, 3).detach()
        d = ((mu - rm) / torch.sqrt(rv + 1e-3)).clamp(-5, 5).detach()
        mu, v = mu - d * torch.sqrt(v) / r, v / r**2
    y2 = (x2 - mu) / torch.sqrt(v + 1e-3)
    (expected,) = torch.autograd.grad((y2 * upstream).sum(), x2)
    torch.testing.assert_close(grad, expected)


def test_zero_variance_feature_gives_finite_gradients():
    """A feature constant over the batch (a dead ReLU unit) must not produce NaN gradients (dime.md §9.9)."""
    layer = BatchRenorm(2, warmup_steps=0)
    x = torch.stack([torch.randn(8), torch.zeros(8)], dim=1).requires_grad_()
    layer(x, training=True).square().sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(layer.weight.grad).all()

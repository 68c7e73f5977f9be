"""The DIME agent: update schedule, α direction, critic/actor losses against independent computations, options,
exact resumption, and the Gaussian-actor ablation."""

import copy
import io
import math

import numpy as np
import pytest
import torch

from dime.agents import ConfigError, load_algorithm
from dime.dime_agent import DIME, clip_gradients_elementwise_
from dime.gauss_ablation import DIMEGauss, TanhGaussianActor
from dime.replay import ReplayBuffer
from dime.tasks import get_task
from tests.test_categorical import _naive_projection

OBS, ACT = 3, 2
TINY = {
    "batch_size": 16,
    "critic_width": 32,
    "score_width": 16,
    "diffusion_steps": 3,
    "num_atoms": 11,
    "v_min": -20.0,
    "v_max": 20.0,
}


def _agent(cls=DIME, seed=0, **overrides):
    torch.manual_seed(seed)
    task = get_task("gym/Pendulum-v1")
    tiny = TINY if cls is DIME else {k: v for k, v in TINY.items() if k not in ("score_width", "diffusion_steps")}
    config = cls.default_config(task).replace(**{**tiny, **overrides})
    return cls(task, OBS, ACT, config, torch.device("cpu"))


def _buffer(rows=200, seed=0):
    rng = np.random.default_rng(seed)
    buffer = ReplayBuffer(OBS, ACT, 1000, "cpu", seed=seed)
    for _ in range(rows):
        obs, action, next_obs = rng.normal(size=OBS), rng.uniform(-1, 1, ACT), rng.normal(size=OBS)
        buffer.add(obs, action, rng.normal(), next_obs, rng.random() < 0.2)
    return buffer


def test_default_config_takes_the_critic_support_from_the_task():
    for name, (low, high) in [("dmc/cheetah-run", (-200, 200)), ("gym/Hopper-v4", (-1600, 1600))]:
        config = DIME.default_config(get_task(name))
        assert (config.v_min, config.v_max) == (low, high)
    myo = get_task("myo/reach-hard")
    assert (DIME.default_config(myo).v_min, DIME.default_config(myo).v_max) == (myo.v_min, myo.v_max)
    config = DIME.default_config(get_task("dmc/cheetah-run"))
    assert (config.diffusion_steps, config.critic_width, config.num_atoms, config.utd, config.policy_delay) == (
        16,
        2048,
        101,
        2,
        3,
    )
    assert config.alpha is None and config.eval_deterministic is False and config.learning_starts == 5000
    assert config.eval_episodes == 5 and config.brn_warmup_steps == 100_000
    assert load_algorithm("dime") is DIME and load_algorithm("dime-gauss") is DIMEGauss


def test_user_options_reach_the_networks():
    agent = _agent(diffusion_steps=5, critic_width=24, alpha="0.05", v_min=-7, v_max=3)
    assert agent.actor.num_steps == 5 and agent.actor.dt_shape.shape == (5,)
    assert agent.critic.linears[0].weight.shape == (2, OBS + ACT, 24)
    assert float(agent.critic.atoms[0]) == -7 and float(agent.critic.atoms[-1]) == 3
    assert agent.alpha_optimizer is None and float(agent.alpha) == pytest.approx(0.05)
    buffer = _buffer()
    for _ in range(4):
        metrics = agent.update(buffer, 0)
    assert float(metrics["alpha"]) == pytest.approx(0.05), "a fixed α must not be tuned"
    with pytest.raises(ConfigError):
        _agent(eval_deterministic=True)  # the diffusion policy has no deterministic mode
    with pytest.raises(ConfigError):
        _agent(DIMEGauss, diffusion_steps=4)  # not an option of the Gaussian ablation


def _spy(agent, buffer):
    """Record every sample / critic / actor call with what it was given (the real methods still run)."""
    calls = []
    sample, critic_step, actor_step = buffer.sample, agent._critic_step, agent._actor_step

    def spy_sample(n):
        batch = sample(n)
        calls.append(("sample", n, batch.obs.clone()))
        return batch

    def spy_critic(batch, alpha):
        calls.append(("critic", batch.obs.clone(), float(alpha), float(agent.alpha)))
        return critic_step(batch, alpha)

    def spy_actor(obs, alpha):
        calls.append(("actor", obs.clone(), float(alpha), float(agent.alpha)))
        return actor_step(obs, alpha)

    buffer.sample, agent._critic_step, agent._actor_step = spy_sample, spy_critic, spy_actor
    return calls


def test_update_schedule_utd_policy_delay_and_minibatches():
    agent, buffer = _agent(), _buffer()
    calls = _spy(agent, buffer)
    for _ in range(5):
        agent.update(buffer, 0)
    kinds = "".join(c[0][0] for c in calls)
    # s = one replay draw per env step, c = critic update g = 0..9, a = actor+α after g = 2, 5, 8 (g ≡ 2 mod 3)
    assert kinds == "scc" + "scac" + "scca" + "scc" + "scac"
    assert agent.critic_updates == 10 and agent.gradient_steps == 10
    b = agent.config.batch_size
    draw = None
    for i, call in enumerate(calls):
        if call[0] == "sample":
            assert call[1] == 2 * b, "one draw of utd × batch_size rows"
            draw, part = call[2], 0
        elif call[0] == "critic":
            assert torch.equal(call[1], draw[part * b : (part + 1) * b]), "consecutive minibatches of the one draw"
            part += 1
            assert call[2] == call[3], "critic uses the current α"
        else:
            previous = calls[i - 1]
            assert previous[0] == "critic" and torch.equal(call[1], previous[1]), "actor on the critic's minibatch"
            assert call[2] == previous[2], "actor uses the α the critic used (before the temperature step)"
    alphas = [c[2] for c in calls if c[0] == "critic"]
    assert alphas[3] != alphas[2] and alphas[2] == alphas[1], "α changes right after an actor step, not before"


@pytest.mark.parametrize("target_entropy_per_dim", [-4.0, 4.0, -1.5])
def test_alpha_moves_towards_the_running_cost_target(target_entropy_per_dim):
    """L_α = −α (c̄ − 4A) on the running cost c̄ only: α grows iff c̄ > target cost (first Adam step: ±lr)."""
    agent = _agent(target_entropy_per_dim=target_entropy_per_dim)
    obs = _buffer().sample(256).obs
    before = float(agent.log_alpha.detach())
    metrics = agent._actor_step(obs, agent.alpha)
    running, terminal = float(metrics["running_cost"]), float(metrics["terminal_cost"])
    target_cost = -target_entropy_per_dim * ACT
    step = float(agent.log_alpha.detach()) - before
    assert step == pytest.approx(1e-3 * math.copysign(1.0, running - target_cost), rel=1e-4)
    if target_entropy_per_dim == -1.5:
        # Running cost above and running + terminal below the target: tuning on the full cost would shrink α.
        assert running > target_cost > running + terminal


def test_critic_loss_matches_independent_computation():
    agent, buffer = _agent(gamma=0.9), _buffer()
    reference = copy.deepcopy(agent)
    batch = buffer.sample(agent.config.batch_size)
    assert 0 < float(batch.terminated.sum()) < len(batch.terminated)
    alpha = torch.tensor(0.7)
    torch.manual_seed(5)
    metrics = agent._critic_step(batch, alpha)

    torch.manual_seed(5)
    with torch.no_grad():
        following = reference.actor(batch.next_obs)
        probs = reference.critic(
            torch.cat([batch.obs, batch.next_obs]), torch.cat([batch.actions, following.actions]), training=True
        ).double()
    b, atoms = agent.config.batch_size, np.linspace(-20, 20, 11)
    cost = (following.running_cost + following.terminal_cost).double().numpy()
    not_done = 1 - batch.terminated.double().numpy()
    rewards = batch.rewards.double().numpy()
    target_atoms = np.clip(
        (rewards - not_done * 0.9 * 0.7 * cost)[:, None] + (not_done * 0.9)[:, None] * atoms, -20, 20
    )
    target = np.mean([_naive_projection(probs[c, b:].numpy(), target_atoms, -20, 20) for c in range(2)], axis=0)
    log_p = np.log(probs[:, :b].numpy() + 1e-15)
    expected = sum(
        -(target * log_p[c]).sum(-1).mean() + 0.005 * (probs[c, :b].numpy() * log_p[c]).sum(-1).mean() for c in range(2)
    )
    assert float(metrics["critic_loss"]) == pytest.approx(expected, rel=1e-4)
    q = probs[:, :b].numpy() @ atoms
    assert float(metrics["q_value"]) == pytest.approx(q.min(0).mean(), rel=1e-4, abs=1e-4)
    for (name, p), p_ref in zip(agent.actor.named_parameters(), reference.actor.parameters()):
        assert torch.equal(p, p_ref), f"critic step changed actor parameter {name}"
    assert not torch.equal(agent.critic.linears[0].weight, reference.critic.linears[0].weight)


def test_actor_loss_uses_mean_of_eval_mode_critics_and_leaves_the_critic_alone():
    agent, buffer = _agent(), _buffer()
    for _ in range(3):  # move BRN running statistics away from their init so train and eval modes differ
        agent.update(buffer, 0)
    reference = copy.deepcopy(agent)
    critic_grads = [p.grad.clone() for p in agent.critic.parameters()]  # left over from the last critic step
    obs, alpha = buffer.sample(64).obs, torch.tensor(0.3)
    torch.manual_seed(9)
    metrics = agent._actor_step(obs, alpha)

    torch.manual_seed(9)
    with torch.no_grad():
        sample = reference.actor(obs)
        q = reference.critic.expected_value(reference.critic(obs, sample.actions, training=False))
        cost = alpha * (sample.running_cost + sample.terminal_cost)
    expected_mean, with_min = (cost - q.mean(0)).mean(), (cost - q.min(0).values).mean()
    assert float(metrics["actor_loss"]) == pytest.approx(float(expected_mean), rel=1e-5)
    assert abs(float(expected_mean) - float(with_min)) > 1e-3, "test cannot tell mean from min"
    critic_state, reference_state = agent.critic.state_dict(), reference.critic.state_dict()
    for key in critic_state:
        assert torch.equal(critic_state[key], reference_state[key]), f"actor step touched critic {key}"
    for p, grad in zip(agent.critic.parameters(), critic_grads):
        assert torch.equal(p.grad, grad), "no gradient may reach the critic's parameters from the actor loss"
    assert not torch.equal(agent.actor.score.input_layer.weight, reference.actor.score.input_layer.weight)


def test_elementwise_gradient_clipping_after_nan_to_zero():
    p = torch.nn.Parameter(torch.zeros(6))
    p.grad = torch.tensor([float("nan"), float("inf"), -float("inf"), 5.0, -0.5, 1.0])
    clip_gradients_elementwise_([p], 1.0)
    assert torch.equal(p.grad, torch.tensor([0.0, 1.0, -1.0, 1.0, -0.5, 1.0]))


@pytest.mark.parametrize("cls", [DIME, DIMEGauss])
def test_state_dict_resumes_bit_exactly(cls):
    agent, buffer = _agent(cls, seed=0), _buffer()
    for _ in range(4):
        agent.update(buffer, 0)
    saved = io.BytesIO()
    torch.save({"agent": agent.state_dict(), "rng": torch.get_rng_state(), "buffer": buffer.state_dict()}, saved)
    continued = [agent.update(buffer, 0) for _ in range(3)]

    saved.seek(0)
    state = torch.load(saved, weights_only=False)
    resumed, resumed_buffer = _agent(cls, seed=1), _buffer(seed=1)
    resumed.load_state_dict(state["agent"])
    resumed_buffer.load_state_dict(state["buffer"])
    torch.set_rng_state(state["rng"])
    assert resumed.critic_updates == 8
    replayed = [resumed.update(resumed_buffer, 0) for _ in range(3)]
    for a, b in zip(continued, replayed):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key
    for p, q in zip(agent.actor.parameters(), resumed.actor.parameters()):
        assert torch.equal(p, q)


def test_update_and_act_have_no_host_syncs_in_metrics():
    agent, buffer = _agent(), _buffer()
    metrics = agent.update(buffer, 0)
    assert set(metrics) == {"critic_loss", "q_value", "actor_loss", "running_cost", "terminal_cost", "alpha"}
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 and not v.requires_grad for v in metrics.values())
    actions = agent.act(torch.zeros(4, OBS), deterministic=False)
    assert actions.shape == (4, ACT) and torch.all(actions.abs() <= 1)


def test_gauss_actor_log_prob_matches_torch_distributions():
    torch.manual_seed(0)
    actor = TanhGaussianActor(OBS, ACT, 16, 2, -20.0, 2.0).double()
    obs = torch.randn(50, OBS, dtype=torch.float64)
    torch.manual_seed(1)
    sample = actor(obs)
    mean, log_std = actor.net(obs).chunk(2, dim=-1)
    torch.manual_seed(1)
    pre_tanh = mean + log_std.clamp(-20, 2).exp() * torch.randn_like(mean)
    dist = torch.distributions.TransformedDistribution(
        torch.distributions.Normal(mean, log_std.clamp(-20, 2).exp()), [torch.distributions.TanhTransform()]
    )
    with torch.no_grad():
        torch.testing.assert_close(sample.actions, torch.tanh(pre_tanh))
        torch.testing.assert_close(sample.running_cost, dist.log_prob(torch.tanh(pre_tanh)).sum(-1))
        assert torch.all(sample.terminal_cost == 0)


def test_gauss_ablation_swaps_only_the_actor():
    agent = _agent(DIMEGauss)
    assert isinstance(agent.actor, TanhGaussianActor)
    assert agent.target_cost == pytest.approx(ACT), "SAC's target entropy −|A|: mean log π tuned towards +|A|"
    assert DIMEGauss.update is DIME.update and DIMEGauss._critic_step is DIME._critic_step
    obs = torch.randn(5, OBS)
    deterministic = agent.act(obs, deterministic=True)
    assert torch.equal(deterministic, agent.act(obs, deterministic=True))
    assert not torch.equal(agent.act(obs, deterministic=False), agent.act(obs, deterministic=False))
    metrics = [agent.update(_buffer(), 0) for _ in range(2)][-1]
    assert all(torch.isfinite(v) for v in metrics.values())

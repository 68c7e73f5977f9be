"""The environment factory across the three suites, and the critic support of each task."""

import math

import numpy as np
import pytest

from dime.tasks import GYM_REWARD_RANGES, UnknownTaskError, critic_support, get_task, make_env, registry

ONE_PER_SUITE = ["dmc/cartpole-swingup", "gym/Hopper-v4", "myo/reach-hard"]


def test_registry_covers_the_paper_tasks_and_every_dmc_task():
    from dm_control import suite

    tasks = registry()
    for domain, task in suite.ALL_TASKS:
        assert f"dmc/{domain}-{task}" in tasks
    paper = [
        "dmc/dog-run",
        "dmc/dog-trot",
        "dmc/dog-walk",
        "dmc/dog-stand",
        "dmc/humanoid-run",
        "dmc/humanoid-walk",
        "dmc/humanoid-stand",
        "gym/Ant-v4",
        "gym/Humanoid-v4",
        "gym/Ant-v5",
        "gym/Humanoid-v5",
        "myo/obj-hold-hard",
        "myo/reach-hard",
        "myo/key-turn-hard",
        "myo/pen-twirl-hard",
    ]
    for name in paper:
        assert name in tasks, name
    assert get_task("dmc/dog-run").value_range == (-200.0, 200.0)
    assert get_task("gym/Humanoid-v4").value_range == (-1600.0, 1600.0)
    assert get_task("myo/key-turn-hard").env_id == "myoHandKeyTurnRandom-v0"
    assert get_task("myo/key-turn-hard").episode_length == 200
    assert get_task("myo/pen-twirl-hard").metric == "success"
    assert get_task("dmc/dog-run").metric == "return"


def test_unknown_task_names_close_matches():
    with pytest.raises(UnknownTaskError) as info:
        get_task("dmc/dog-runn")
    message = str(info.value)
    assert "dmc/dog-run" in message and "\n" not in message


@pytest.mark.parametrize("name", ONE_PER_SUITE)
def test_env_contract(name):
    spec = get_task(name)
    env = make_env(spec, seed=3)
    obs, _ = env.reset(seed=3)
    assert obs.dtype == np.float32 and obs.ndim == 1
    assert env.observation_space.shape == obs.shape
    assert env.action_space.low.min() == -1.0 and env.action_space.high.max() == 1.0
    obs2, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert obs2.dtype == np.float32 and np.isfinite(obs2).all()
    assert isinstance(terminated, bool | np.bool_) and isinstance(truncated, bool | np.bool_)
    if spec.suite == "myo":
        assert "solved" in info


def test_actions_are_rescaled_to_native_bounds():
    env = make_env("gym/Humanoid-v4", seed=0)  # native bounds [-0.4, 0.4]
    inner = env.unwrapped.action_space
    assert np.allclose(env.action(np.ones(17)), inner.high)
    assert np.allclose(env.action(-np.ones(17)), inner.low)
    assert np.allclose(env.action(np.full(17, 5.0)), inner.high), "out-of-range actions are clipped"


@pytest.mark.parametrize("name", ONE_PER_SUITE)
def test_seeding_is_reproducible(name):
    def rollout(seed):
        env = make_env(name)
        obs, _ = env.reset(seed=seed)
        rng = np.random.default_rng(0)
        out = [obs]
        for _ in range(20):
            obs, *_ = env.step(rng.uniform(-1, 1, env.action_space.shape))
            out.append(obs)
        return np.stack(out)

    np.testing.assert_array_equal(rollout(7), rollout(7))
    assert not np.array_equal(rollout(7), rollout(8))


def test_dmc_truncates_at_1000_steps_and_never_terminates():
    env = make_env("dmc/cartpole-swingup", seed=0)
    env.reset(seed=0)
    for step in range(1, 1001):
        _, _, terminated, truncated, _ = env.step(np.zeros(1, dtype=np.float32))
        assert not terminated
        if truncated:
            break
    assert step == 1000 and truncated


def test_gym_terminates_on_unhealthy_state_not_by_truncation():
    env = make_env("gym/Hopper-v4", seed=0)
    env.reset(seed=0)
    for step in range(1, 1001):
        _, _, terminated, truncated, _ = env.step(np.ones(3, dtype=np.float32))
        if terminated or truncated:
            break
    assert terminated and not truncated and step < 1000


def test_myosuite_time_limit_truncates():
    spec = get_task("myo/pen-twirl-hard")
    env = make_env(spec, seed=0)
    env.reset(seed=0)
    for step in range(1, spec.episode_length + 1):
        _, _, terminated, truncated, _ = env.step(np.zeros(env.action_space.shape, dtype=np.float32))
        if terminated or truncated:
            break
    assert step <= spec.episode_length
    assert terminated or truncated


def test_critic_support_contains_each_tasks_discounted_values_with_headroom():
    """Time limits bootstrap, so values reach r/(1 − γ); the support holds that bound plus a quarter of the value
    range on each side (DIME's γ = 0.99). Reward bounds written from the envs' reward definitions."""
    scale = 1.0 / (1.0 - 0.99)
    pendulum = -(math.pi**2 + 0.1 * 8.0**2 + 0.001 * 2.0**2)  # angle, max speed 8, max torque 2
    reacher = -(0.1 + 0.11 + 0.2 + 2.0)  # fingertip reach + target radius, control Σa² with a ∈ [-1, 1]²
    bounds = {
        "gym/Pendulum-v1": (pendulum, 0.0),
        "gym/Reacher-v4": (reacher, 0.0),
        "gym/Reacher-v5": (reacher, 0.0),
        "gym/InvertedPendulum-v4": (0.0, 1.0),
        "dmc/cheetah-run": (0.0, 1.0),  # DMC rewards lie in [0, 1]
    }
    for name, (low, high) in bounds.items():
        v_min, v_max = get_task(name).value_range
        value_low, value_high = low * scale, high * scale
        headroom = 0.25 * (value_high - value_low)
        assert v_min <= value_low - headroom and value_high + headroom <= v_max, name
    # Finer than the authors' Gym value where rewards are small: Reacher's 101 atoms are ~5 apart, not 32.
    assert get_task("gym/Reacher-v4").value_range == (-370.0, 130.0)
    assert get_task("gym/Pendulum-v1").value_range == (-2450.0, 820.0)
    # The authors' values stay where they chose one.
    assert get_task("gym/Ant-v4").value_range == (-1600.0, 1600.0)
    assert get_task("gym/Humanoid-v5").value_range == (-1600.0, 1600.0)
    assert get_task("dmc/dog-run").value_range == (-200.0, 200.0)


def test_support_rule_widens_the_value_range_by_half_on_each_side():
    assert critic_support(0.0, 1.0) == (-50.0, 150.0)
    assert critic_support(-1.0, 1.0) == (-200.0, 200.0)
    assert critic_support(-2.41, 0.0) == (-370.0, 130.0)  # rounded outward to multiples of 10


@pytest.mark.parametrize("name", ["gym/Pendulum-v1", "gym/Reacher-v4", "gym/InvertedPendulum-v4"])
def test_declared_reward_ranges_hold_under_random_and_extreme_actions(name):
    task = get_task(name)
    low, high = GYM_REWARD_RANGES[task.env_id.split("-")[0]]
    env = make_env(task, seed=0)
    rng = np.random.default_rng(0)
    rewards = []
    for episode in range(2):
        env.reset(seed=episode)
        for _ in range(200):
            action = rng.uniform(-1, 1, env.action_space.shape)
            _, reward, terminated, truncated, _ = env.step(np.sign(action) if episode else action)
            rewards.append(reward)
            if terminated or truncated:
                break
    assert low <= min(rewards) and max(rewards) <= high

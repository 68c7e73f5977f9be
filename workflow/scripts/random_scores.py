"""Measure the uniform-random-policy return of Gym tasks: the zero point of the Gym normalisation.

    python workflow/scripts/random_scores.py gym/Ant-v4 gym/Humanoid-v4 --episodes 20

Actions are drawn uniformly in [-1, 1]^A and go through :func:`dime.tasks.make_env` (the same action mapping, time
limits and termination as training). Prints YAML lines for ``config/normalisation.yaml``.
"""

from __future__ import annotations

import argparse

import numpy as np

from dime.tasks import make_env


def random_return(task: str, episodes: int, seed: int = 0) -> tuple[float, float]:
    """Mean and standard deviation of the undiscounted return of uniform random actions over ``episodes``."""
    env = make_env(task)
    rng = np.random.default_rng(seed)
    returns = []
    for episode in range(episodes):
        env.reset(seed=seed + episode)
        total, done = 0.0, False
        while not done:
            action = rng.uniform(-1.0, 1.0, env.action_space.shape).astype(np.float32)
            _, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return float(np.mean(returns)), float(np.std(returns))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tasks", nargs="+")
    parser.add_argument("--episodes", type=int, default=20)
    args = parser.parse_args(argv)
    for task in args.tasks:
        mean, std = random_return(task, args.episodes)
        print(f"  {task}: {{random: {mean:.1f}}}  # std {std:.1f} over {args.episodes} episodes")


if __name__ == "__main__":
    main()

"""The DIME agent (Celik et al., ICML 2025) as the authors' JAX code runs it (``dime.md`` §2.5, §4, §5).

CrossQ-style max-entropy actor-critic with a diffusion actor (:mod:`dime.diffusion_policy`) whose entropy bound
(:func:`dime.diffusion_policy.entropy_bound_costs`) replaces SAC's log π, and a categorical critic ensemble
(:mod:`dime.categorical`). Per env step (``update``), from ONE draw of ``utd × batch_size`` replay rows split into
``utd`` consecutive minibatches, for each minibatch:

1. critic update: next actions and costs from the current actor (no target networks), one train-mode pass over
   [(s, a); (s', a')] (joint batch-renorm statistics), C51 target = mean of both critics' projections, loss =
   cross-entropy − 0.005·entropy summed over the critics; Adam(β1 = 0.5);
2. if the global critic-update index g (0-based) satisfies g ≡ policy_delay − 1 (mod policy_delay), i.e. g = 2, 5,
   8, … for delay 3: actor update on the SAME minibatch's observations against the eval-mode critic (mean of the
   two critics, critic parameters frozen), gradients NaN→0 then clipped element-wise to ±1, Adam(β1 = 0.5); then
   one temperature step on the batch-mean running cost c̄ of that actor pass: L_α = −α·(c̄ − 4|A|), α grows while
   c̄ > 4|A| (``target_entropy_per_dim = −4``).

α enters the critic target and the actor loss with its value from before that step's temperature update.
Oddities kept on purpose (``dime.md`` §9): mean (not min) of the critics in the actor, averaged projected targets,
stochastic evaluation (5 episodes), α tuned on the running cost only.

Deviations from the official code (``ALRhub/DIME`` at ``7082bb7``):

+------------------------------------------+----------------------------------------+----------------------------------+
| What differs from the official code      | Why                                    | Expected effect                  |
+==========================================+========================================+==================================+
| A PyTorch port of the JAX/flax code: the | The suite is PyTorch.                  | None in distribution; runs are   |
| same update order, losses, optimisers    |                                        | not bitwise comparable with the  |
| and initialisers; random streams differ  |                                        | reference's.                     |
| (torch generators instead of JAX keys;   |                                        |                                  |
| replay rows from a torch generator       |                                        |                                  |
| instead of numpy's global RNG).          |                                        |                                  |
+------------------------------------------+----------------------------------------+----------------------------------+
| Critic support: ±200 on DMC and ±1600 on | The authors give values only for their | None on the paper's DMC and Gym  |
| Ant/Humanoid as the authors; the other   | tasks (the MyoSuite one is not in the  | tasks; a finer support on        |
| Gym tasks get the registry's rule        | repository).                           | Reacher, one containing          |
| (``dime.tasks``), MyoSuite ±1000.        |                                        | Pendulum's values.               |
+------------------------------------------+----------------------------------------+----------------------------------+
| Gym tasks are Gymnasium ``-v4``/``-v5``  | mujoco-py is unmaintained; one env     | Gym returns not strictly         |
| (``-v3`` needs mujoco-py); Ant-v4's      | factory for the suite.                 | comparable with the paper's      |
| observation has no contact forces.       |                                        | ``-v3`` numbers.                 |
+------------------------------------------+----------------------------------------+----------------------------------+
| Evaluation envs are re-seeded per        | Exact resumption after preemption      | None.                            |
| evaluation, and training episodes reset, | (``dime.trainer``).                    |                                  |
| with seeds derived from the run seed     |                                        |                                  |
| (``SeedSequence``) instead of a list of  |                                        |                                  |
| 10M ``jax.random.randint`` seeds.        |                                        |                                  |
+------------------------------------------+----------------------------------------+----------------------------------+
| Metrics go to ``metrics.jsonl`` (and the | One log format for all methods.        | None on learning.                |
| run's loggers) instead of SB3's logger   |                                        |                                  |
| and wandb; calls without an actor step   |                                        |                                  |
| report the last actor step's losses      |                                        |                                  |
| instead of 0.                            |                                        |                                  |
+------------------------------------------+----------------------------------------+----------------------------------+
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from dime.agents import Agent, AgentConfig, at_least, check, positive, unit_interval
from dime.categorical import DistributionalCritic, categorical_critic_loss, project_distribution
from dime.diffusion_policy import DiffusionPolicy, PolicySample
from dime.nn import log_temperature
from dime.replay import Batch, ReplayBuffer
from dime.tasks import TaskSpec


@dataclass
class DIMETrainingConfig(AgentConfig):
    """Critic, optimiser and schedule settings shared by DIME and its Gaussian-actor ablation (``dime.md`` §1).

    ``v_min``/``v_max``: critic support; :meth:`DIME.default_config` takes them from the task registry (the
    authors' ±200 on DMC and ±1600 on Ant/Humanoid, a per-task rule elsewhere: ``dime.tasks``). ``alpha``: a fixed
    temperature (0 = no entropy term, the paper's α ablation at its limit), or None to auto-tune log α from
    ``init_alpha``. ``target_entropy_per_dim``: in SAC's sign convention (as in ``baselines.sac``), α is tuned so
    that the batch mean of the running cost approaches −target_entropy_per_dim·|A|, i.e. the entropy proxy
    −running cost approaches target_entropy_per_dim·|A|. The reference hard-codes "target entropy 4·|A|" but tunes
    the running cost, a log-probability-like quantity, towards +4·|A| (``dime.md`` §5.2, §9.3); that is −4 here.
    ``brn_warmup_steps`` counts critic updates (100k ≈ 50k env steps at UTD 2).
    """

    eval_deterministic: bool = False
    critic_width: int = 2048
    num_atoms: int = 101
    v_min: float = -200.0
    v_max: float = 200.0
    critic_entropy_coef: float = 0.005
    brn_warmup_steps: int = 100_000
    brn_momentum: float = 0.99
    utd: int = 2
    policy_delay: int = 3
    lr_actor: float = 3e-4
    lr_critic: float = 3e-4
    lr_alpha: float = 1e-3
    adam_beta1: float = 0.5
    adam_beta2: float = 0.999
    actor_grad_clip: float = 1.0
    alpha: float | None = None
    init_alpha: float = 1.0
    target_entropy_per_dim: float = -4.0

    def validate(self) -> None:
        super().validate()
        at_least(self, 1, "critic_width", "utd", "policy_delay")
        at_least(self, 2, "num_atoms")
        at_least(self, 0, "brn_warmup_steps", "critic_entropy_coef")
        check(
            self,
            "v_max",
            math.isfinite(self.v_min) and math.isfinite(self.v_max) and self.v_min < self.v_max,
            f"a finite critic support v_min < v_max (v_min={self.v_min!r})",
        )
        unit_interval(self, "brn_momentum")
        positive(self, "lr_actor", "lr_critic", "lr_alpha", "actor_grad_clip", "init_alpha")
        for beta in ("adam_beta1", "adam_beta2"):
            check(self, beta, 0.0 <= getattr(self, beta) < 1.0, "a number in [0, 1)")
        check(
            self,
            "alpha",
            self.alpha is None or 0.0 <= self.alpha < math.inf,
            "null (tuned from init_alpha) or a fixed temperature >= 0 (0: no entropy term)",
        )
        check(self, "target_entropy_per_dim", math.isfinite(self.target_entropy_per_dim), "a finite number")


@dataclass
class DIMEConfig(DIMETrainingConfig):
    """DIME's hyperparameters: the shipped DMC config of the reference (``dime.md`` §1), plus the diffusion actor.

    ``diffusion_steps``: N Euler–Maruyama steps; ``score_width``/``score_layers``: the score network's hidden size
    and number of hidden state-time layers; ``init_dt``/``init_friction``: initial softplus values of the learned
    step-size scale and per-dim friction; ``prior_std``: σ₀ of the prior; ``schedule_s``/``schedule_min``: the
    cosine dt profile.
    """

    diffusion_steps: int = 16
    score_width: int = 256
    score_layers: int = 3
    init_dt: float = 0.1
    init_friction: float = 1.0
    prior_std: float = 2.5
    schedule_s: float = 0.008
    schedule_min: float = 0.001

    def validate(self) -> None:
        super().validate()
        check(
            self,
            "eval_deterministic",
            not self.eval_deterministic,
            "false: the diffusion policy has no deterministic mode and the reference evaluates stochastically "
            "(dime.md §9.1)",
        )
        at_least(self, 1, "diffusion_steps", "score_width", "score_layers")
        positive(self, "init_dt", "init_friction", "prior_std")
        at_least(self, 0, "schedule_s")
        check(self, "schedule_min", 0.0 < self.schedule_min <= 1.0, "a number in (0, 1]")


def clip_gradients_elementwise_(parameters: Iterable[torch.Tensor], clip: float) -> None:
    """The reference's actor gradient chain before Adam: optax.zero_nans, then optax.clip (``dime.md`` §5.1).

    NaN entries become 0, then every entry is clamped to [−clip, clip] (±inf become ±clip). Element-wise, not a
    global-norm clip.
    """
    for p in parameters:
        if p.grad is not None:
            p.grad.nan_to_num_(nan=0.0).clamp_(-clip, clip)


class DIME(Agent):
    """DIME with a diffusion actor; subclasses swap the actor via :meth:`build_actor` (see ``DIMEGauss``)."""

    Config = DIMEConfig
    compiled_methods = ("act", "_critic_step", "_actor_step")

    def __init__(self, task: TaskSpec, obs_dim: int, act_dim: int, config: DIMETrainingConfig, device: torch.device):
        super().__init__(task, obs_dim, act_dim, config, device)
        self.actor = self.build_actor().to(device)
        self.critic = DistributionalCritic(
            obs_dim,
            act_dim,
            config.v_min,
            config.v_max,
            hidden=config.critic_width,
            num_atoms=config.num_atoms,
            brn_warmup_steps=config.brn_warmup_steps,
            brn_momentum=config.brn_momentum,
        ).to(device)
        # fused: one kernel per optimiser step, and the step counters stay on the device (no `.item()` sync).
        adam = {"betas": (config.adam_beta1, config.adam_beta2), "fused": True}
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=config.lr_actor, **adam)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=config.lr_critic, **adam)
        self.auto_alpha = config.alpha is None
        initial_alpha = config.init_alpha if config.alpha is None else config.alpha
        # A fixed α = 0 keeps log α = −inf, so α = exp(log α) is exactly 0 in the target and the actor loss.
        self.log_alpha = torch.tensor(log_temperature(initial_alpha), device=device, requires_grad=self.auto_alpha)
        self.alpha_optimizer = (
            torch.optim.Adam([self.log_alpha], lr=config.lr_alpha, fused=True) if self.auto_alpha else None
        )
        self.target_cost = -config.target_entropy_per_dim * act_dim
        self.critic_updates = 0  # global critic-update counter: host state, decides the policy delay
        zero = torch.zeros((), device=device)
        self.last_actor_metrics = {"actor_loss": zero, "running_cost": zero, "terminal_cost": zero}

    @classmethod
    def default_config(cls, task: TaskSpec) -> DIMETrainingConfig:
        return cls.Config(v_min=task.v_min, v_max=task.v_max)

    def build_actor(self) -> nn.Module:
        """The policy module: ``actor(obs)`` returns a :class:`PolicySample` with gradients to its parameters."""
        c = self.config
        return DiffusionPolicy(
            self.obs_dim,
            self.act_dim,
            num_steps=c.diffusion_steps,
            hidden=c.score_width,
            num_layers=c.score_layers,
            init_dt=c.init_dt,
            init_friction=c.init_friction,
            prior_std=c.prior_std,
            schedule_s=c.schedule_s,
            schedule_min=c.schedule_min,
        )

    @property
    def gradient_steps(self) -> int:
        """Critic updates so far (the trainer reports updates/s from it)."""
        return self.critic_updates

    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.detach().exp()

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool) -> torch.Tensor:
        """A fresh stochastic sample of the diffusion policy; ``deterministic`` is ignored as in the reference."""
        return self.actor(obs).actions

    def update(self, buffer: ReplayBuffer, env_step: int) -> dict[str, torch.Tensor]:
        """``utd`` critic updates on consecutive slices of one replay draw, each followed by an actor and a
        temperature update when its global index g satisfies (g + 1) % policy_delay == 0.

        Metrics: the last critic update's loss and min-over-critics Q, the latest actor update's loss and costs
        (kept across calls without an actor update; the reference logs 0 there), and α after this call.
        """
        c = self.config
        rows = buffer.sample(c.utd * c.batch_size)
        metrics: dict[str, torch.Tensor] = {}
        for i in range(c.utd):
            part = slice(i * c.batch_size, (i + 1) * c.batch_size)
            batch = Batch(*(field[part] for field in rows))
            alpha = self.alpha
            metrics = self._critic_step(batch, alpha)
            self.critic_updates += 1
            if self.critic_updates % c.policy_delay == 0:
                self.last_actor_metrics = self._actor_step(batch.obs, alpha)
        return {**metrics, **self.last_actor_metrics, "alpha": self.alpha}

    def _critic_step(self, batch: Batch, alpha: torch.Tensor) -> dict[str, torch.Tensor]:
        """One categorical critic update with the CrossQ joint pass (``dime.md`` §4.3)."""
        c = self.config
        with torch.no_grad():
            following: PolicySample = self.actor(batch.next_obs)
            discount = c.gamma * (1.0 - batch.terminated)
            bonus = -discount * alpha * (following.running_cost + following.terminal_cost)
            shifted = (batch.rewards + bonus).unsqueeze(-1) + discount.unsqueeze(-1) * self.critic.atoms
            target_atoms = shifted.clamp(c.v_min, c.v_max)
        probs = self.critic(
            torch.cat([batch.obs, batch.next_obs]), torch.cat([batch.actions, following.actions]), training=True
        )
        current, following_probs = probs[:, : c.batch_size], probs[:, c.batch_size :]
        with torch.no_grad():
            target = project_distribution(following_probs, target_atoms, c.v_min, c.v_max).mean(0)
        loss = categorical_critic_loss(current, target, c.critic_entropy_coef)
        self.critic_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.critic_optimizer.step()
        q_min = self.critic.expected_value(current.detach()).min(0).values
        return {"critic_loss": loss.detach(), "q_value": q_min.mean()}

    def _actor_step(self, obs: torch.Tensor, alpha: torch.Tensor) -> dict[str, torch.Tensor]:
        """Actor update (``dime.md`` §5.1) followed by the temperature update (§5.2)."""
        sample: PolicySample = self.actor(obs)
        # Detached parameters: the gradient reaches the actions but no critic weight; eval-mode BRN leaves the
        # running statistics untouched.
        frozen = {name: p.detach() for name, p in self.critic.named_parameters()}
        probs = functional_call(self.critic, frozen, (obs, sample.actions), {"training": False})
        q_mean = self.critic.expected_value(probs).mean(0)
        loss = (alpha * (sample.running_cost + sample.terminal_cost) - q_mean).mean()
        self.actor_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip_gradients_elementwise_(self.actor.parameters(), self.config.actor_grad_clip)
        self.actor_optimizer.step()
        running = sample.running_cost.detach().mean()
        if self.alpha_optimizer is not None:
            alpha_loss = -self.log_alpha.exp() * (running - self.target_cost)
            self.alpha_optimizer.zero_grad(set_to_none=True)
            alpha_loss.backward()
            self.alpha_optimizer.step()
        return {
            "actor_loss": loss.detach(),
            "running_cost": running,
            "terminal_cost": sample.terminal_cost.detach().mean(),
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "log_alpha": self.log_alpha.detach().clone(),
            "actor_optimizer": self.actor_optimizer.state_dict(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "alpha_optimizer": None if self.alpha_optimizer is None else self.alpha_optimizer.state_dict(),
            "critic_updates": self.critic_updates,
            "last_actor_metrics": {k: v.clone() for k, v in self.last_actor_metrics.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        if self.alpha_optimizer is not None:
            self.alpha_optimizer.load_state_dict(state["alpha_optimizer"])
        self.critic_updates = state["critic_updates"]
        self.last_actor_metrics = {k: v.to(self.device) for k, v in state["last_actor_metrics"].items()}

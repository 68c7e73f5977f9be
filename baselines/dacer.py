"""DACER — diffusion actor-critic with entropy regulator (Wang et al., NeurIPS 2024), ``baselines.md`` §9.

As ``scripts/train_mujoco.py --alg dacer`` runs it (the README's command), translated to one env:

* policy: a DDPM over actions, T = 20 VP steps, x̂_0 clipped at every step, 3 × 256 Mish ε-network with DACER's
  time features (scaled sinusoid, 16 → 32 → 16); every action the agent uses (acting, the critic target, the
  actor loss, the entropy estimate) gets additive Gaussian noise of scale exp(log α)·s and is clipped to [−1, 1]
  (the paper's entropy-regulated sampling; evaluation uses the diffusion sample without that noise); s = 0.15 on
  Humanoid and HalfCheetah, 0.1 elsewhere (the code's values and its "other envs" comment);
* actor loss: −E min(Q₁, Q₂)(s, a_θ) with a_θ the noisy sample, back-propagated through the whole reverse chain
  (paper eq. 11); updated every 2nd update ("delay_update"), targets with the same delay;
* critic: DSAC-T-style Gaussian critics (Duan et al. 2023): each Q_j outputs a mean and a softplus std; with
  reward scale 0.2, y = r + γ(1 − d)·min-mean target, y_s the corresponding target sample (z clipped to ±3); the
  loss per critic is the DSAC-T surrogate
  −(b² + ε)·E[ Q̄·sg(y − Q̄)/(sg(σ)² + ε) + σ·((sg(Q̄) − ŷ)² − sg(σ)²)/(sg(σ)³ + ε) ], ε = 0.1,
  with ŷ = sg(Q̄ + clip(y_s − Q̄, ±3b)) and b a running mean (τ = 0.005) of the critic's mean std;
  no entropy term in the target; Adam lr 1e-4 for critics and actor;
* entropy regulator: every 10 000 updates the policy entropy is estimated from 200 noisy samples per state of a
  minibatch by fitting a 3-component full-covariance Gaussian mixture per state, H ≈ Σ_k w_k H(N_k) − Σ_k w_k
  log w_k, averaged over states, and log α takes one Adam step (lr 3e-2) on −log α·(H̄ − H), H̄ = −0.9|A|;
  log α starts at log 3. ``--set alpha=…`` fixes α instead (0: no action noise at all);
* every dense layer initialised as haiku's ``hk.Linear`` (truncated normal with σ = 1/√fan_in, zero bias);
* the loop: one update every 20 env steps (the official trainer steps 20 vector envs per update), 2e5 uniform
  warm-up steps on Humanoid and HalfCheetah and 3e4 elsewhere (the code's ``start_step`` and its "other envs"
  comment; the README: "the existing parameters in the code are used for Humanoid-v3 and HalfCheetah-v3").

The mixture is fitted by a batched EM in torch (k-means-free random-point initialisation, fixed iteration count,
sklearn's ``reg_covar`` = 1e-6) on the training device, instead of scikit-learn behind ``jax.pure_callback``:
no host round-trip, same estimator up to EM's initialisation and stopping rule.

Observed on Pendulum-v1 (64-unit test nets, lr 1e-4 and 1e-3, one update per env step): the sampler's output
saturated at ±1 within a few thousand updates and stayed there, since the x̂_0 clip (as in the official sampler)
passes no gradient once every step's x̂_0 is outside [−1, 1]; the learning test therefore uses InvertedPendulum,
where it learns.

Deviations from the official code (``happy-yan/DACER-Diffusion-with-Online-RL`` at ``848c1f2``):

+------------------------------------------+----------------------------------------+----------------------------------+
| What differs from the official code      | Why                                    | Expected effect                  |
+==========================================+========================================+==================================+
| One env, one update every 20 env steps;  | The suite runs one env per job;        | Small: the same update budget;   |
| official: 20 vector envs, one update per | updates per env step are preserved.    | official data holds more         |
| vector step, and every env is reset      | The all-env reset, which cuts episodes | early-episode states.            |
| whenever any one of them is done.        | short, is not reproduced.              |                                  |
+------------------------------------------+----------------------------------------+----------------------------------+
| Hidden width 512 for the critic and the  | The authors' setting to reproduce      | Intended: the published Humanoid |
| diffusion net on Humanoid-class tasks    | Humanoid (DACER issue #9).             | numbers.                         |
| (gym Humanoid, DMC humanoid and dog),    |                                        |                                  |
| 256 elsewhere; official default 256.     |                                        |                                  |
+------------------------------------------+----------------------------------------+----------------------------------+
| Entropy by a batched torch EM            | No host round-trip; runs on the        | Small: α adapts only every 10k   |
| (random-point initialisation, 50         | training device.                       | updates, from a noisy estimate   |
| iterations) instead of sklearn's         |                                        | in both codes.                   |
| GaussianMixture (k-means initialisation, |                                        |                                  |
| up to 100 iterations).                   |                                        |                                  |
+------------------------------------------+----------------------------------------+----------------------------------+
| Evaluation: 5 episodes of the noise-free | One protocol for all methods (5        | None on learning.                |
| policy at the study's cadence on a       | episodes, as DIME, BRO and CrossQ).    |                                  |
| separate env; official: the evaluator's  |                                        |                                  |
| own count and cadence.                   |                                        |                                  |
+------------------------------------------+----------------------------------------+----------------------------------+
| DMC runs keep the DSAC-T critic; the     | The suggestion is not code; the study  | None on the study's tasks.       |
| README suggests swapping in CrossQ's     | runs DACER on Gym only.                |                                  |
| critic for DMC.                          |                                        |                                  |
+------------------------------------------+----------------------------------------+----------------------------------+
| Environments: Gymnasium ``-v4``/``-v5``, | ``-v3`` needs mujoco-py; one env       | Gym returns not strictly         |
| DMC and MyoSuite through                 | factory for the suite.                 | comparable with ``-v3`` numbers. |
| ``dime.tasks.make_env``; official: gym   |                                        |                                  |
| ``-v3`` (mujoco210). Time limits         |                                        |                                  |
| bootstrap in both codes.                 |                                        |                                  |
+------------------------------------------+----------------------------------------+----------------------------------+
| Twin critics as one batched module (two  | One batched matmul instead of two      | None.                            |
| members, each with its own parameters    | haiku networks (speed).                |                                  |
| and haiku's init law).                   |                                        |                                  |
+------------------------------------------+----------------------------------------+----------------------------------+
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from baselines.diffusion_utils import (
    BETA_SCHEDULES,
    DiffusionSchedule,
    EpsilonMLP,
    TwinCritic,
    agent_state,
    haiku_linear,
    is_humanoid_class,
    load_agent_state,
    repeat_obs,
)
from dime.agents import Agent, AgentConfig, at_least, check, nonempty_widths, positive, unit_interval
from dime.compilation import saved_for_backward
from dime.nn import log_temperature, polyak_update
from dime.replay import Batch, ReplayBuffer
from dime.tasks import TaskSpec

_LOG_2PI = math.log(2.0 * math.pi)


#: The two tasks the official hyperparameters were written for (README "Tips"); other tasks get its "other envs" values.
_OFFICIAL_TASKS = ("Humanoid", "HalfCheetah")


@dataclass
class DACERConfig(AgentConfig):
    """``train_mujoco.py`` with its "other envs" values; :meth:`DACER.default_config` sets the Humanoid/HalfCheetah
    ones. ``train_every``: env steps per update (the official 20 vector envs). ``alpha``: a fixed temperature
    (None: tuned from ``init_alpha``)."""

    learning_starts: int = 30_000
    eval_deterministic: bool = True  # diffusion sample without the α-scaled noise
    hidden: tuple[int, ...] = (256, 256, 256)
    diffusion_hidden: tuple[int, ...] = (256, 256, 256)
    diffusion_steps: int = 20
    beta_schedule: str = "vp"
    lr: float = 1e-4
    alpha_lr: float = 3e-2
    tau: float = 0.005
    delay_update: int = 2
    alpha_every: int = 10_000
    reward_scale: float = 0.2
    noise_scale: float = 0.1
    alpha: float | None = None
    init_alpha: float = 3.0
    target_entropy_per_dim: float = -0.9
    entropy_samples: int = 200
    gmm_components: int = 3
    gmm_iterations: int = 50
    dsac_epsilon: float = 0.1
    target_clip: float = 3.0
    train_every: int = 20

    def validate(self) -> None:
        super().validate()
        nonempty_widths(self, "hidden", "diffusion_hidden")
        at_least(self, 1, "diffusion_steps", "delay_update", "alpha_every", "gmm_components", "gmm_iterations")
        at_least(self, 1, "train_every")
        check(self, "beta_schedule", self.beta_schedule in BETA_SCHEDULES, f"one of {', '.join(BETA_SCHEDULES)}")
        positive(self, "lr", "alpha_lr", "reward_scale", "init_alpha", "dsac_epsilon", "target_clip")
        at_least(self, 0, "noise_scale", "alpha")
        unit_interval(self, "tau")
        check(self, "entropy_samples", self.entropy_samples > self.gmm_components, "a number > gmm_components")


def gmm_entropy(samples: torch.Tensor, components: int, iterations: int, reg: float = 1e-6) -> torch.Tensor:
    """Mean over states of Σ_k w_k H(N(μ_k, Σ_k)) − Σ_k w_k log w_k for a full-covariance GMM fitted by EM.

    ``samples`` is (S, N, D): N draws for each of S states; one mixture per state, all fitted in one batched EM
    (responsibilities from Cholesky-whitened distances; M-step with ``reg``·I added to every covariance).
    """
    s, n, d = samples.shape
    x = samples.double()
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    start = torch.rand(s, n, device=x.device).argsort(-1)[:, :components]
    means = x.gather(1, start.unsqueeze(-1).expand(-1, -1, d))  # (S, K, D)
    centred = x - x.mean(1, keepdim=True)
    cov = (centred.transpose(1, 2) @ centred / n + reg * eye).unsqueeze(1).expand(-1, components, -1, -1)
    log_w = torch.full((s, components), -math.log(components), dtype=x.dtype, device=x.device)
    for _ in range(iterations):
        chol = torch.linalg.cholesky_ex(cov)[0]  # (S, K, D, D)
        diff = x.unsqueeze(1) - means.unsqueeze(2)  # (S, K, N, D)
        white = torch.linalg.solve_triangular(chol, diff.transpose(-1, -2), upper=False)  # (S, K, D, N)
        log_det = 2.0 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)  # (S, K)
        log_p = -0.5 * (white.pow(2).sum(-2) + d * _LOG_2PI + log_det.unsqueeze(-1)) + log_w.unsqueeze(-1)
        resp = torch.softmax(log_p, dim=1)  # (S, K, N)
        counts = resp.sum(-1) + 10.0 * torch.finfo(x.dtype).eps  # (S, K)
        log_w = (counts / n).log()
        means = resp @ x / counts.unsqueeze(-1)
        diff = x.unsqueeze(1) - means.unsqueeze(2)
        cov = (resp.unsqueeze(-1) * diff).transpose(-1, -2) @ diff / counts[..., None, None] + reg * eye
    log_det = torch.linalg.slogdet(cov)[1]
    component_entropy = 0.5 * d * (1.0 + _LOG_2PI) + 0.5 * log_det
    w = log_w.exp()
    return ((w * component_entropy).sum(-1) - (w * log_w).sum(-1)).mean().float()


class DACER(Agent):
    Config = DACERConfig
    compiled_methods = (
        "act",
        "_critic_backward",
        "_actor_backward",
        "_alpha_step",
        "_critic_optimizer_step",
        "_actor_optimizer_step",
    )
    config: DACERConfig
    _STATE = (
        "actor",
        "critic",
        "critic_target",
        "log_alpha",
        "mean_q_std",
        "entropy",
        "actor_optimizer",
        "critic_optimizer",
        "alpha_optimizer",
        "gradient_steps",
        "last_metrics",
    )

    def __init__(self, task: TaskSpec, obs_dim: int, act_dim: int, config: DACERConfig, device: torch.device):
        super().__init__(task, obs_dim, act_dim, config, device)
        c = config
        self.actor = EpsilonMLP(
            obs_dim, act_dim, c.diffusion_hidden, embedding="scaled_sinusoidal", linear=haiku_linear
        ).to(device)
        self.critic = TwinCritic(obs_dim, act_dim, c.hidden, out_features=2, linear=haiku_linear).to(device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.schedule = DiffusionSchedule.make(c.beta_schedule, c.diffusion_steps).to(device)
        tuned = c.alpha is None
        initial_log_alpha = log_temperature(c.init_alpha if tuned else c.alpha)
        self.log_alpha = torch.tensor(initial_log_alpha, device=device, requires_grad=tuned)
        self.mean_q_std = torch.full((2,), -1.0, device=device)  # −1: not yet initialised (as the original)
        self.entropy = torch.zeros((), device=device)  # the last GMM estimate
        self.target_entropy = c.target_entropy_per_dim * act_dim
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=c.lr, fused=True)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=c.lr, fused=True)
        self.alpha_optimizer = torch.optim.Adam([self.log_alpha], lr=c.alpha_lr, fused=True) if tuned else None
        self.gradient_steps = 0
        self.last_metrics: dict[str, torch.Tensor] = {}

    @classmethod
    def default_config(cls, task: TaskSpec) -> DACERConfig:
        width = 512 if is_humanoid_class(task) else 256
        official = task.suite == "gym" and task.env_id.split("-")[0] in _OFFICIAL_TASKS
        return DACERConfig(
            hidden=(width,) * 3,
            diffusion_hidden=(width,) * 3,
            learning_starts=200_000 if official else 30_000,
            noise_scale=0.15 if official else 0.1,
        )

    def noise_std(self) -> torch.Tensor:
        """Scale of the entropy-regulating action noise, exp(log α)·s (0-d tensor, no gradient)."""
        return self.log_alpha.detach().exp() * self.config.noise_scale

    def policy_action(self, obs: torch.Tensor, noisy: bool = True) -> torch.Tensor:
        actions = self.schedule.sample(self.actor, obs, self.act_dim, clip_x0=True)
        if not noisy:
            return actions
        return (actions + self.noise_std() * torch.randn_like(actions)).clamp(-1.0, 1.0)

    def act(self, obs: torch.Tensor, deterministic: bool) -> torch.Tensor:
        return self.policy_action(obs, noisy=not deterministic)

    def critic_loss(self, obs, actions, rewards, next_obs, terminated) -> tuple[torch.Tensor, torch.Tensor]:
        """Sum over the twin Gaussian critics of the DSAC-T surrogate; also returns the critics' means (2, B)."""
        c = self.config
        rewards = rewards * c.reward_scale
        with torch.no_grad():
            out = self.critic_target(next_obs, self.policy_action(next_obs))
            next_mean, next_std = out[..., 0], F.softplus(out[..., 1])
            next_sample = next_mean + next_std * torch.randn_like(next_mean).clamp(-3.0, 3.0)
            lower = next_mean[0] < next_mean[1]
            discount = c.gamma * (1.0 - terminated)
            backup = rewards + discount * torch.minimum(next_mean[0], next_mean[1])
            backup_sample = rewards + discount * torch.where(lower, next_sample[0], next_sample[1])
        out = self.critic(obs, actions)
        q_mean, q_std = out[..., 0], F.softplus(out[..., 1])
        with torch.no_grad():
            batch_std = q_std.mean(-1)
            previous = self.mean_q_std
            b = saved_for_backward(
                lambda: torch.where(previous < 0, batch_std, c.tau * batch_std + (1 - c.tau) * previous)
            )
            self.mean_q_std.copy_(b)  # in place: CUDA graphs read it at a fixed address
            bound = c.target_clip * b.unsqueeze(-1)
            bounded = q_mean + torch.maximum(torch.minimum(backup_sample - q_mean, bound), -bound)
            std = q_std.clamp(min=0.0)
        eps = c.dsac_epsilon
        surrogate = q_mean * (backup - q_mean.detach()) / (std.pow(2) + eps) + q_std * (
            (q_mean.detach() - bounded).pow(2) - std.pow(2)
        ) / (std.pow(3) + eps)
        loss = -((b.pow(2) + eps) * surrogate.mean(-1)).sum()
        return loss, q_mean.detach()

    def estimate_entropy(self, obs: torch.Tensor) -> torch.Tensor:
        c = self.config
        with torch.no_grad():
            samples = self.policy_action(repeat_obs(obs, c.entropy_samples))
        samples = samples.view(obs.shape[0], c.entropy_samples, self.act_dim)
        return gmm_entropy(samples, c.gmm_components, c.gmm_iterations)

    def update(self, buffer: ReplayBuffer, env_step: int) -> dict[str, torch.Tensor]:
        """Host schedule of the original's joint update, on every ``train_every``-th env step (the last update's
        metrics in between): the critic's gradient, every ``delay_update`` updates the actor's (against the critic
        before this update's step), every ``alpha_every`` updates a GMM entropy estimate and a temperature step
        (unless α is fixed), then the critic's step and, when delayed, the actor's step and the Polyak step."""
        c = self.config
        if env_step % c.train_every:
            return self.last_metrics
        batch = buffer.sample(c.batch_size)
        metrics = self._critic_backward(batch)
        delayed = self.gradient_steps % c.delay_update == 0
        if delayed:
            metrics.update(self._actor_backward(batch.obs))
        if self.alpha_optimizer is not None and self.gradient_steps % c.alpha_every == 0:
            self.entropy.copy_(self._alpha_step(batch.obs))
        self._critic_optimizer_step()
        if delayed:
            self._actor_optimizer_step()
        self.gradient_steps += 1
        metrics["alpha"] = self.log_alpha.detach().exp()
        metrics["entropy"] = self.entropy
        self.last_metrics = metrics
        return metrics

    def _critic_backward(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The critics' DSAC-T loss and its gradient; the step waits for the actor's backward pass."""
        critic_loss, q_mean = self.critic_loss(
            batch.obs, batch.actions, batch.rewards, batch.next_obs, batch.terminated
        )
        self.critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.backward()
        return {"critic_loss": critic_loss.detach(), "q_mean": q_mean.mean(), "q_std": self.mean_q_std.mean()}

    def _actor_backward(self, obs: torch.Tensor) -> dict[str, torch.Tensor]:
        """−min_j Q_j(s, a_θ) and its gradient for the actor (the critic's parameters get none)."""
        self.critic.requires_grad_(False)
        out = self.critic(obs, self.policy_action(obs))
        self.critic.requires_grad_(True)
        actor_loss = -out[..., 0].min(0).values.mean()
        self.actor_optimizer.zero_grad(set_to_none=True)
        actor_loss.backward()
        return {"actor_loss": actor_loss.detach()}

    def _alpha_step(self, obs: torch.Tensor) -> torch.Tensor:
        """A temperature step towards the target entropy from a fresh GMM estimate, which it returns."""
        entropy = self.estimate_entropy(obs)
        alpha_loss = -self.log_alpha * (self.target_entropy - entropy)
        self.alpha_optimizer.zero_grad(set_to_none=True)
        alpha_loss.backward()
        self.alpha_optimizer.step()
        return entropy

    def _critic_optimizer_step(self) -> None:
        self.critic_optimizer.step()

    def _actor_optimizer_step(self) -> None:
        self.actor_optimizer.step()
        polyak_update(self.critic_target, self.critic, self.config.tau)

    def state_dict(self) -> dict[str, Any]:
        return agent_state(self, self._STATE)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_agent_state(self, state, self._STATE)

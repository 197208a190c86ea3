"""What the offline multi-agent agents (DOM2, DoF, MADiff) share: joint minibatches and decentralised execution.

Training reads a multi-agent dataset (:func:`diffrl_ref.rl.datasets.load_joint`): the single-agent state,
each agent's local observation o_j, the joint action (agent j acts on its entries ``action_split[j]``) and
the team reward. Execution is decentralised: :meth:`DecentralisedAgent.act` receives the single-agent
observation (evaluation runs the single-agent v5 task, whose dynamics and reward equal the partition's bit
for bit, ``marl.equivalence``), cuts each agent's local view out of it (the dataset's ``local_view``, the
env's own map) and lets every agent choose its own action from its own view alone; the joint action is
their concatenation in the partition's order.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .datasets import JointTransitions
from .diffusion_ql import OfflineAgent


class JointBatch:
    """One minibatch: per-agent o_j, o'_j, a_j (lists in agent order), the state, team reward and done."""

    def __init__(self, obs: list[Tensor], next_obs: list[Tensor], actions: list[Tensor], state: Tensor,
                 next_state: Tensor, joint_action: Tensor, r: Tensor, done: Tensor) -> None:
        self.obs, self.next_obs, self.actions = obs, next_obs, actions
        self.state, self.next_state, self.joint_action = state, next_state, joint_action
        self.r, self.done = r, done


class JointSampler:
    """Uniform minibatches of a multi-agent dataset's transitions with the torch generator (saved with the run)."""

    def __init__(self, data: JointTransitions, device: torch.device) -> None:
        def t(x: np.ndarray, dtype: torch.dtype = torch.float32) -> Tensor:
            return torch.as_tensor(x, device=device, dtype=dtype)

        self.agents = list(data.agents)
        self.obs = [t(data.observations[k]) for k in self.agents]
        self.next_obs = [t(data.next_observations[k]) for k in self.agents]
        self.split = [t(data.action_split[k], torch.int64) for k in self.agents]
        self.joint = t(data.actions)
        self.state, self.next_state = t(data.state), t(data.next_state)
        self.r, self.done = t(data.rewards), t(data.terminals)
        self.n = int(self.r.shape[0])

    def sample(self, B: int) -> JointBatch:
        idx = torch.randint(0, self.n, (B,)).to(self.r.device)
        a = self.joint[idx]
        return JointBatch([o[idx] for o in self.obs], [o[idx] for o in self.next_obs],
                          [a[:, i] for i in self.split], self.state[idx], self.next_state[idx], a, self.r[idx],
                          self.done[idx])


class DecentralisedAgent(OfflineAgent):
    """An offline multi-agent learner whose agents act on their own local views (``act_local``)."""

    device: torch.device

    def setup_agents(self, data: JointTransitions) -> None:
        self.agents = list(data.agents)
        self.obs_dims = [int(data.observations[k].shape[1]) for k in self.agents]
        self.act_dims = [int(len(data.action_split[k])) for k in self.agents]
        self.views = [np.asarray(data.local_view[k], np.int64) for k in self.agents]
        self.splits = [np.asarray(data.action_split[k], np.int64) for k in self.agents]
        self.joint_dim = int(data.actions.shape[1])

    def act_local(self, j: int, obs: Tensor) -> Tensor:
        """Agent j's action (da_j,) from its own observation (do_j,) alone."""
        raise NotImplementedError

    def act(self, s: np.ndarray, deterministic: bool) -> np.ndarray:
        """The joint action from the single-agent observation: every agent sees only its local view of it."""
        out = np.zeros(self.joint_dim, dtype=np.float32)
        with torch.no_grad():
            for j, (view, split) in enumerate(zip(self.views, self.splits, strict=True)):
                o = torch.as_tensor(np.asarray(s, np.float32)[view], device=self.device)
                out[split] = self.act_local(j, o).cpu().numpy()
        return out

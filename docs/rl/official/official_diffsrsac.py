"""Throughput of the official Diff-SR code (haotiansun14/rl-rep, agent ``diffsrsac``) on this machine.

Runs rl-rep's ``main.py`` training loop for ``--alg diffsrsac`` around the official, unmodified
``DIFFSRSACAgent`` and ``ReplayBuffer``: RANDOM_STEPS random actions, then LEARN_STEPS steps of
(1% random) policy action, environment step, buffer add and one ``agent.train`` call (4 score updates,
critic, actor, temperature). Only the learning steps are timed. Adaptations: gymnasium 1.x instead of gym
(``import gym`` in rl-rep's utils is aliased, not edited), CPU, no tensorboardX logging, no evaluation.
Settings (environment variables): OFFICIAL_REPO (the rl-rep checkout), RANDOM_STEPS (1000),
LEARN_STEPS (2000), THREADS (2), ENV_ID (HalfCheetah-v5), SEED (0).
"""

import os
import sys
import time

import gymnasium
import numpy as np
import torch

sys.path.insert(0, os.environ["OFFICIAL_REPO"])
sys.modules.setdefault("gym", gymnasium)  # rl-rep/utils/util.py imports gym at module level only
from agent.diffsrsac import diffsrsac_agent  # noqa: E402  (the official agent)
from utils import buffer  # noqa: E402  (the official replay buffer)

RANDOM_STEPS = int(os.environ.get("RANDOM_STEPS", 1000))
LEARN_STEPS = int(os.environ.get("LEARN_STEPS", 2000))
THREADS = int(os.environ.get("THREADS", 2))
ENV_ID = os.environ.get("ENV_ID", "HalfCheetah-v5")
SEED = int(os.environ.get("SEED", 0))
EPS_GREEDY = 0.01  # main.py's defaults from here on

torch.set_num_threads(THREADS)
assert diffsrsac_agent.device.type == "cpu", diffsrsac_agent.device
env = gymnasium.make(ENV_ID)
torch.manual_seed(SEED)
np.random.seed(SEED)  # noqa: NPY002  (main.py's global generator drives its exploration)
env.action_space.seed(SEED)
state_dim, action_dim = env.observation_space.shape[0], env.action_space.shape[0]
# exactly the arguments main.py passes for diffsrsac; everything else is the agent's default
agent = diffsrsac_agent.DIFFSRSACAgent(state_dim=state_dim, action_dim=action_dim, action_space=env.action_space,
                                       discount=0.99, tau=0.005, hidden_dim=256)
replay_buffer = buffer.ReplayBuffer(state_dim, action_dim)

state, _ = env.reset(seed=SEED)
episode_steps, start = 0, 0.0
for t in range(RANDOM_STEPS + LEARN_STEPS):
    if t == RANDOM_STEPS:
        start = time.perf_counter()
    episode_steps += 1
    if t < RANDOM_STEPS or np.random.uniform(0, 1) < EPS_GREEDY:  # noqa: NPY002
        action = env.action_space.sample()
    else:
        action = agent.select_action(state, explore=True)
    next_state, reward, terminated, truncated, _ = env.step(action)
    # main.py: a time-limit end is not a terminal transition
    done_bool = float(terminated) if episode_steps < env.spec.max_episode_steps else 0.0
    replay_buffer.add(state, action, next_state, reward, done_bool)
    state = next_state
    if t >= RANDOM_STEPS:
        agent.train(replay_buffer, batch_size=256)
    if terminated or truncated:
        state, _ = env.reset()
        episode_steps = 0
elapsed = time.perf_counter() - start
print(f"official diffsrsac: {1000 * elapsed / LEARN_STEPS:.2f} s/1k learning steps, "
      f"{LEARN_STEPS / elapsed:.2f} steps/s")

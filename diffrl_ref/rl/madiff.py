"""MADiff (Zhu et al., NeurIPS 2024) as an offline multi-agent planner, built from ``diffrl_ref.fast``.

The N agents' observation trajectories form one joint array x of shape (B, N, L, d), L = C + H: C past
observations (the history), the current one and H - 1 future ones of every agent (clause family
``madiff``; local observations padded with zeros to the largest agent's d, the padded entries known).
One gradient step on a batch of dataset segments (the official recipe, zbzhu99/madiff, where we had it;
docs/marl/madiff.inc lists every difference):

1. Segments: windows of L consecutive joint observations inside one episode (the history before the
   episode's first step repeats that first observation), with the team's discounted return-to-go R_t of
   the current step as the condition y = (R_t / scale, 1); the empty condition is y_null = (0, 0), so the
   network's return embedding is multiplied by 0 when the condition is dropped (the Decision Diffuser's
   dropout mask).
2. Diffusion loss with condition dropout (decision_diffuser.dropout_loss on the joint array viewed as
   (B, N L, d), cosine schedule with K = 200, ddpm.noise inside): the condition is dropped with p = 0.25;
   per segment one agent, drawn at random, is the conditioning agent: its C + 1 observations up to the
   current step (and every padded entry) are known and are written into the noisy input before each
   network call (diffuser.inpaint), as they are at execution, where each agent conditions on its own
   history only (MADiff-D). The known entries carry no noise (eps = 0 there).
3. Inverse dynamics loss (decision_diffuser.inverse_dynamics_loss): one MLP shared by the agents,
   a_i^t = f(o_i^t, o_i^{t+1}) on every agent's consecutive observations of the segment's future part.
4. L = 1/2 (L_diffusion + L_inv), the mean over entries of each (the official losses), Adam, EMA of
   both networks.

Decentralised execution (:meth:`MADiffAgent.act_local`): agent i writes its own history and current local
observation into the plan and generates the whole joint plan (its teammates' slices included) with
classifier-free guidance towards the target return (madiff.guided_eps, omega = 1.2; guidance.cfg
inside), by DDIM (ddim.step, a difference: the official code runs the K-step DDPM chain, available as
``eval_sampler=ddpm``, clause diffuser.sample) with the known entries imposed after every step
(diffuser.inpaint); it acts with the inverse dynamics on its own slice (madiff.decentralised_action).
Every hyperparameter and its source is in :data:`HYPERPARAMETERS`; docs/marl/madiff.inc lists each
difference from the paper and the official code.
"""

from __future__ import annotations

import collections
import copy
import math
from dataclasses import dataclass, replace
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from ..fast import ddim, diffuser, madiff, schedule
from ..fast import decision_diffuser as dd
from ..fast.nets import SinusoidalEmbedding
from ..fast.schedule import Schedule
from .datasets import DatasetError, JointTransitions
from .domains import DISCOUNT, NON_NEGATIVE, NON_NEGATIVE_INT, POLYAK, POSITIVE, POSITIVE_INT, Domain, one_of
from .joint import DecentralisedAgent


def parse_mults(text: str) -> tuple[int, ...]:
    """'1,2' -> (1, 2): the channel multipliers of the U-Net's levels (ValueError if malformed)."""
    mults = tuple(int(v) for v in text.split(","))
    if not mults or min(mults) < 1:
        raise ValueError(text)
    return mults


def _mults_ok(text: str) -> bool:
    try:
        return bool(parse_mults(text))
    except ValueError:
        return False


@dataclass
class MADiffConfig:
    """Hyperparameters; ``source`` of each in :data:`HYPERPARAMETERS`, domain in :data:`DOMAINS`."""

    horizon: int = 10
    history: int = 4
    K: int = 200
    omega: float = 1.2
    cond_drop: float = 0.25
    target_return: float = 0.9
    returns_scale: float = 0.0
    discount: float = 0.99
    dim: int = 32
    dim_mults: str = "1,2"
    kernel: int = 5
    heads: int = 4
    inv_hidden: int = 256
    lr: float = 2e-4
    batch_size: int = 32
    ema_decay: float = 0.995
    eval_sampler: str = "ddim"
    eval_steps: int = 10

    def check(self) -> None:
        width = self.dim * parse_mults(self.dim_mults)[-1]
        if width % self.heads:
            raise ValueError(f"heads ({self.heads}) must divide the bottleneck width dim * dim_mults[-1] = {width}")
        if self.eval_sampler == "ddim" and self.eval_steps > self.K:
            raise ValueError(f"eval_steps ({self.eval_steps}) must be <= K ({self.K})")

    def for_dataset(self, dataset_id: str, overridden: set[str]) -> MADiffConfig:
        """The official return scale of the dataset's quality (:data:`RETURNS_SCALE`), unless --hp set it."""
        if "returns_scale" in overridden or self.returns_scale > 0:
            return self
        kind = dataset_id.rsplit("/", 1)[-1].rsplit("-v", 1)[0]
        return replace(self, returns_scale=RETURNS_SCALE.get(kind, 0.0))


#: The official return scales of og-marl's Good, Medium and Poor datasets (1000 / 300 / 100), by the kind of
#: our datasets that plays each role: expert data as Good, medium data as Medium, random data as Poor.
RETURNS_SCALE: dict[str, float] = {"expert": 1000.0, "medium-expert": 1000.0, "medium": 300.0, "medium-replay": 300.0,
                                   "random": 100.0}

DOMAINS: dict[str, Domain] = {
    "horizon": (lambda v: v >= 2, "an integer >= 2 (an action needs two consecutive observations)"),
    "history": NON_NEGATIVE_INT,
    **dict.fromkeys(("K", "heads", "inv_hidden", "batch_size", "eval_steps"), POSITIVE_INT),
    "omega": NON_NEGATIVE,
    "cond_drop": DISCOUNT,
    "target_return": (lambda v: math.isfinite(v), "a finite number"),
    "returns_scale": (NON_NEGATIVE[0], "a number >= 0 (0: by the dataset's kind, else its largest |return|)"),
    "discount": POLYAK,
    "dim": (lambda v: v >= 4 and v % 2 == 0, "an even integer >= 4"),
    "dim_mults": (_mults_ok, "comma-separated integers >= 1, e.g. 1,2"),
    "kernel": (lambda v: v >= 1 and v % 2 == 1, "an odd integer >= 1"),
    "lr": POSITIVE,
    "ema_decay": DISCOUNT,
    "eval_sampler": one_of("ddim", "ddpm"),
}

HYPERPARAMETERS: dict[str, str] = {
    "horizon": "official code (horizon 10: the current observation and the planned future)",
    "history": "ours: 4 past observations per agent (official: 18; shortened for 2 CPU cores)",
    "K": "official code (K = 200 diffusion steps, cosine schedule)",
    "omega": "official code (condition_guidance_w=1.2, in guidance.cfg's omega convention)",
    "cond_drop": "official code (condition dropout probability 0.25)",
    "target_return": "official code (test return 0.9, on the scaled returns)",
    "returns_scale": "official code (returns scaled by 1000 / 300 / 100 for og-marl Good / Medium / Poor; ours: "
                     "our expert, medium and random kinds take these roles, RETURNS_SCALE)",
    "discount": "ours: 0.99, the Decision Diffuser's return-to-go discount (MADiff's own value not checked)",
    "dim": "ours: 32 (official 128; a U-Net that trains on 2 CPU cores)",
    "dim_mults": "ours: 1,2 (official multipliers 1, 4, 8)",
    "kernel": "official code (kernel 5)",
    "heads": "ours: 4 heads of the cross-agent attention at the bottleneck",
    "inv_hidden": "official code (inverse dynamics MLP 2 d -> 256 -> 256 -> da, ReLU, shared by the agents)",
    "lr": "official code (learning rate 2e-4, Adam here)",
    "batch_size": "official code (batch 32)",
    "ema_decay": "official code (EMA decay 0.995; ours: applied after every step)",
    "eval_sampler": "ours: ddim (deterministic DDIM on eval_steps steps; the official code samples by DDPM, "
                    "eval_sampler=ddpm here, K steps)",
    "eval_steps": "ours: 10 DDIM steps per plan (2 agents x 1,000 plans per evaluation episode on CPU)",
}


# ---- networks ------------------------------------------------------------------------------------------


def conv_block(c_in: int, c_out: int, kernel: int) -> nn.Sequential:
    """Diffuser's Conv1dBlock: Conv1d, GroupNorm, Mish."""
    return nn.Sequential(nn.Conv1d(c_in, c_out, kernel, padding=kernel // 2), nn.GroupNorm(math.gcd(8, c_out), c_out),
                         nn.Mish())


class ResidualTemporalBlock(nn.Module):
    """Two conv blocks, the condition embedding added after the first, a 1x1 residual (Diffuser's block)."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int, kernel: int) -> None:
        super().__init__()
        self.block1, self.block2 = conv_block(c_in, c_out, kernel), conv_block(c_out, c_out, kernel)
        self.cond = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, c_out))
        self.skip: nn.Module = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, h: Tensor, c: Tensor) -> Tensor:
        out: Tensor = self.block2(self.block1(h) + self.cond(c).unsqueeze(-1)) + self.skip(h)
        return out


class AgentAttention(nn.Module):
    """Self-attention across the N agents at every time position (pre-norm, residual): the agents' coupling."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.attn = nn.MultiheadAttention(channels, heads, batch_first=True)

    def forward(self, h: Tensor, N: int) -> Tensor:
        M, C, L = h.shape
        tokens = h.reshape(M // N, N, C, L).permute(0, 3, 1, 2).reshape(-1, N, C)  # (B L, N, C)
        q = self.norm(tokens)
        tokens = tokens + self.attn(q, q, q, need_weights=False)[0]
        out: Tensor = tokens.reshape(M // N, L, N, C).permute(0, 2, 3, 1).reshape(M, C, L)
        return out


class Level(nn.Module):
    """One resolution of the U-Net: two residual blocks, then a down- or upsampling (or none)."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int, kernel: int, resample: nn.Module) -> None:
        super().__init__()
        self.block1 = ResidualTemporalBlock(c_in, c_out, cond_dim, kernel)
        self.block2 = ResidualTemporalBlock(c_out, c_out, cond_dim, kernel)
        self.resample = resample

    def forward(self, h: Tensor, c: Tensor) -> Tensor:
        out: Tensor = self.block2(self.block1(h, c), c)
        return out


class JointTemporalUnet(nn.Module):
    """eps_theta(x (B, N, L, d), k (B,), y (B, 2)) -> (B, N, L, d): Diffuser's temporal U-Net, its weights
    shared by the agents, with attention across agents at the bottleneck.

    The condition of agent j's sequence is [time embedding of k, return embedding of y[:, 0] times the
    presence flag y[:, 1], embedding of j]. The time axis is zero-padded to a multiple of 2^(levels - 1).
    """

    def __init__(self, n_agents: int, d: int, dim: int, mults: tuple[int, ...], kernel: int, heads: int) -> None:
        super().__init__()
        self.n_agents, self.levels = n_agents, len(mults)
        self.time = nn.Sequential(SinusoidalEmbedding(dim), nn.Linear(dim, 4 * dim), nn.Mish(), nn.Linear(4 * dim, dim))
        self.returns = nn.Sequential(nn.Linear(1, dim), nn.Mish(), nn.Linear(dim, 4 * dim), nn.Mish(),
                                     nn.Linear(4 * dim, dim))
        self.agent = nn.Embedding(n_agents, dim)
        cond = 3 * dim
        dims = [d, *(dim * m for m in mults)]
        pairs = list(zip(dims[:-1], dims[1:], strict=True))
        self.downs = nn.ModuleList()
        for i, (ci, co) in enumerate(pairs):
            last = i == len(pairs) - 1
            self.downs.append(Level(ci, co, cond, kernel, nn.Identity() if last else nn.Conv1d(co, co, 3, 2, 1)))
        mid = dims[-1]
        self.mid1 = ResidualTemporalBlock(mid, mid, cond, kernel)
        self.mix = AgentAttention(mid, heads)
        self.mid2 = ResidualTemporalBlock(mid, mid, cond, kernel)
        self.ups = nn.ModuleList()
        for ci, co in reversed(pairs[1:]):
            self.ups.append(Level(2 * co, ci, cond, kernel, nn.ConvTranspose1d(ci, ci, 4, 2, 1)))
        self.final = nn.Sequential(conv_block(dim, dim, kernel), nn.Conv1d(dim, d, 1))

    def forward(self, x: Tensor, k: Tensor, y: Tensor) -> Tensor:
        B, N, L, d = x.shape
        per_sample = torch.cat([self.time(k), self.returns(y[:, :1]) * y[:, 1:2]], dim=-1)  # (B, 2 dim)
        c = torch.cat([per_sample.repeat_interleave(N, 0), self.agent.weight.repeat(B, 1)], dim=-1)  # (B N, 3 dim)
        unit = 2 ** (self.levels - 1)
        pad = -L % unit
        h = nn.functional.pad(x.reshape(B * N, L, d).transpose(1, 2), (0, pad))
        skips = []
        for level in cast(list[Level], self.downs):
            h = level(h, c)
            skips.append(h)  # the last level's output is the skip of the first up level (Diffuser's wiring)
            h = level.resample(h)
        h = self.mid2(self.mix(self.mid1(h, c), N), c)
        for level in cast(list[Level], self.ups):
            h = level.resample(level(torch.cat([h, skips.pop()], dim=1), c))
        out: Tensor = self.final(h)[:, :, :L].transpose(1, 2).reshape(B, N, L, d)
        return out


class InverseDynamics(nn.Module):
    """f(o_t, o_{t+1}) -> a_t: the official MLP 2 d -> hidden -> hidden -> da with ReLU, shared by the agents."""

    def __init__(self, d: int, da: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2 * d, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, da))

    def forward(self, o: Tensor, o_next: Tensor) -> Tensor:
        out: Tensor = self.net(torch.cat([o, o_next], dim=-1))
        return out


class MADiffModel(nn.Module):
    """The noise network and the inverse dynamics: one optimiser and one EMA copy for both (the official model)."""

    def __init__(self, n_agents: int, d: int, da: int, cfg: MADiffConfig) -> None:
        super().__init__()
        self.eps = JointTemporalUnet(n_agents, d, cfg.dim, parse_mults(cfg.dim_mults), cfg.kernel, cfg.heads)
        self.inv = InverseDynamics(d, da, cfg.inv_hidden)


# ---- dataset segments ----------------------------------------------------------------------------------


def episode_bounds(data: JointTransitions) -> list[tuple[int, int]]:
    """(first row, end row) of each episode. load_joint keeps episodes in order, and inside an episode row t's
    next_state is row t + 1's state; a boundary is where it is not (or where the episode terminated)."""
    n = len(data)
    cut = np.any(data.next_state[:-1] != data.state[1:], axis=1) | (data.terminals[:-1] > 0)
    ends = [*(np.flatnonzero(cut) + 1).tolist(), n]
    return list(zip([0, *ends[:-1]], ends, strict=True))


def returns_to_go(r: np.ndarray, discount: float) -> np.ndarray:
    """R_t = sum_{i >= t} discount^(i - t) r_i inside one episode, float64."""
    out = np.zeros(len(r), np.float64)
    acc = 0.0
    for t in range(len(r) - 1, -1, -1):
        acc = float(r[t]) + discount * acc
        out[t] = acc
    return out


class Batch:
    """x0 (B, N, L, d) normalised joint segments, y (B, 2), known (B, N, L, d) bool, actions (B, N, H-1, da)."""

    def __init__(self, x0: Tensor, y: Tensor, known: Tensor, actions: Tensor) -> None:
        self.x0, self.y, self.known, self.actions = x0, y, known, actions


class SegmentSampler:
    """Uniform segments of the dataset's episodes with the torch generator (saved with the run).

    Every episode's T transitions give T + 1 observations (the last next observation included); a window
    starting at step t takes steps t - C .. t + H - 1 (t + H - 1 <= T), the history clamped to step 0.
    """

    def __init__(self, data: JointTransitions, C: int, H: int, discount: float, device: torch.device) -> None:
        agents = list(data.agents)
        self.N, self.C, self.H = len(agents), C, H
        self.obs_dims = [int(data.observations[k].shape[1]) for k in agents]
        self.act_dims = [len(data.action_split[k]) for k in agents]
        self.d, self.da = max(self.obs_dims), max(self.act_dims)
        bounds = episode_bounds(data)
        table = np.zeros((len(data) + len(bounds), self.N, self.d), np.float32)  # every episode has T + 1 obs
        starts, firsts, rows, rtg = [], [], [], []
        for e, (a, b) in enumerate(bounds):
            first, T = a + e, b - a
            for j, k in enumerate(agents):
                table[first:first + T, j, :self.obs_dims[j]] = data.observations[k][a:b]
                table[first + T, j, :self.obs_dims[j]] = data.next_observations[k][b - 1]
            n_win = max(T - H + 2, 0)  # t = 0 .. T - H + 1
            starts.append(first + np.arange(n_win))
            firsts.append(np.full(n_win, first))
            rows.append(a + np.arange(n_win))
            rtg.append(returns_to_go(data.rewards[a:b], discount)[:n_win])
        if sum(len(s) for s in starts) == 0:
            raise DatasetError(f"dataset {data.dataset_id}: no episode has the horizon's {H} observations")
        real = np.zeros((self.N, self.d), bool)
        for j, dj in enumerate(self.obs_dims):
            real[j, :dj] = True
        self.mean = np.where(real, table.mean(0), 0.0).astype(np.float32)  # (N, d); padded entries stay 0
        self.std = np.where(real, np.maximum(table.std(0), 1e-6), 1.0).astype(np.float32)
        actions = np.zeros((len(data), self.N, self.da), np.float32)
        for j, k in enumerate(agents):
            actions[:, j, :self.act_dims[j]] = data.actions[:, data.action_split[k]]

        def t(x: np.ndarray, dtype: torch.dtype = torch.float32) -> Tensor:
            return torch.as_tensor(np.ascontiguousarray(x), device=device, dtype=dtype)

        self.obs = t((table - self.mean) / self.std)
        self.actions = t(actions)
        self.start, self.first = t(np.concatenate(starts), torch.int64), t(np.concatenate(firsts), torch.int64)
        self.row = t(np.concatenate(rows), torch.int64)
        self.rtg = t(np.concatenate(rtg))
        self.padded = t(~real, torch.bool)  # (N, d): entries known to be 0 for every agent and step
        self.offsets = torch.arange(-C, H, device=device)
        self.n = int(self.start.shape[0])

    def known(self, owner: Tensor) -> Tensor:
        """(B, N, L, d): the owner's history and current observation (real entries), and every padded entry."""
        L = self.C + self.H
        own = torch.nn.functional.one_hot(owner, self.N).bool()[:, :, None, None]
        upto_now = (torch.arange(L, device=owner.device) <= self.C)[None, None, :, None]
        return (own & upto_now & ~self.padded[None, :, None, :]) | self.padded[None, :, None, :]

    def sample(self, B: int, scale: float) -> Batch:
        i = torch.randint(0, self.n, (B,)).to(self.obs.device)
        owner = torch.randint(0, self.N, (B,)).to(self.obs.device)
        steps = torch.maximum(self.start[i, None] + self.offsets, self.first[i, None])  # (B, L)
        x0 = self.obs[steps].permute(0, 2, 1, 3)  # (B, N, L, d)
        acts = self.actions[self.row[i, None] + torch.arange(self.H - 1, device=self.obs.device)].permute(0, 2, 1, 3)
        y = torch.stack([self.rtg[i] / scale, torch.ones_like(self.rtg[i])], dim=1)
        return Batch(x0, y, self.known(owner), acts)


# ---- the agent -----------------------------------------------------------------------------------------


class MADiffAgent(DecentralisedAgent):
    """Offline MADiff: centralised training of the joint planner, decentralised execution (MADiff-D)."""

    name = "madiff"
    offline = True

    def __init__(self, data: JointTransitions, cfg: MADiffConfig, device: str = "cpu") -> None:
        self.cfg, self.device = cfg, torch.device(device)
        self.setup_agents(data)
        self.data = SegmentSampler(data, cfg.history, cfg.horizon, cfg.discount, self.device)
        self.N, self.d, self.da = self.data.N, self.data.d, self.data.da
        self.L = cfg.history + cfg.horizon
        #: the return scale: the official one of the dataset's kind (for_dataset), else the largest |R_t|
        self.scale = cfg.returns_scale or max(float(self.data.rtg.abs().max()), 1e-6)
        self.sched = Schedule.from_betas(schedule.cosine(cfg.K), device=self.device)
        self.model = MADiffModel(self.N, self.d, self.da, cfg).to(self.device)
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.ddpm = diffuser.GuidedSampler(self.sched, "beta_tilde", scale=0.0)
        tau = ddim.uniform_tau(cfg.K, min(cfg.eval_steps, cfg.K))
        #: (k, k_prev) of the DDIM steps, k descending to k_prev = 0 (x_0)
        self.ddim_pairs = list(zip(reversed(tau), reversed([0, *tau[:-1]]), strict=True))
        self.obs_mean = torch.as_tensor(self.data.mean, device=self.device)
        self.obs_std = torch.as_tensor(self.data.std, device=self.device)
        self.histories: list[collections.deque[Tensor]] = [collections.deque(maxlen=max(cfg.history, 1))
                                                           for _ in range(self.N)]
        self.batch_histories: list[list[collections.deque[Tensor]]] = []  # reset_batch: [episode][agent]
        self.steps = 0

    # ---- training -------------------------------------------------------------------------------------

    def draws(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
        """k ~ U{1..K}, eps ~ N(0, I) with 0 at the known entries, b ~ Bernoulli(cond_drop) per segment."""
        B = batch.x0.shape[0]
        k = torch.randint(1, self.cfg.K + 1, (B,), device=self.device)
        eps = torch.randn_like(batch.x0).masked_fill(batch.known, 0.0)
        b = (torch.rand(B, device=self.device) < self.cfg.cond_drop).float()
        return k, eps, b

    def loss(self, model: MADiffModel, batch: Batch, k: Tensor, eps: Tensor, b: Tensor) -> dict[str, Tensor]:
        """1/2 (diffusion + inverse dynamics), each the official mean over its entries."""
        B, N, L, d = batch.x0.shape
        flat = (B, N * L, d)
        x0, known = batch.x0.reshape(flat), batch.known.reshape(flat)

        def eps_fn(x_k: Tensor, kk: Tensor, y: Tensor) -> Tensor:
            x_in = diffuser.inpaint(x_k, known, x0)  # the known entries are given, as at execution
            out: Tensor = model.eps(x_in.reshape(B, N, L, d), kk, y).reshape(flat)
            return out

        rows = dd.dropout_loss(x0, eps.reshape(flat), self.sched, k, batch.y, b, eps_fn, torch.zeros_like(batch.y))
        diffusion = rows.mean() / (N * L * d)
        future = batch.x0[:, :, self.cfg.history:]  # (B, N, H, d): the current observation and the plan
        o, o_next = future[:, :, :-1].reshape(-1, d), future[:, :, 1:].reshape(-1, d)
        inv = dd.inverse_dynamics_loss(o, batch.actions.reshape(-1, self.da), o_next, model.inv).mean() / self.da
        return {"actor_loss": 0.5 * (diffusion + inv), "diffusion_loss": diffusion, "inv_loss": inv}

    def update(self) -> dict[str, Tensor]:
        batch = self.data.sample(self.cfg.batch_size, self.scale)
        k, eps, b = self.draws(batch)
        losses = self.loss(self.model, batch, k, eps, b)
        self.opt.zero_grad(set_to_none=True)
        losses["actor_loss"].backward()  # type: ignore[no-untyped-call]
        self.opt.step()
        with torch.no_grad():
            for p_e, p in zip(self.ema.parameters(), self.model.parameters(), strict=True):
                p_e.lerp_(p, 1.0 - self.cfg.ema_decay)
        self.steps += 1
        return {name: v.detach() for name, v in losses.items()}

    # ---- execution ------------------------------------------------------------------------------------

    def guided_eps(self, model: MADiffModel, x_k: Tensor, k: int | Tensor, y: Tensor) -> Tensor:
        """eps(x_k, empty, k) + omega (eps(x_k, y, k) - eps(x_k, empty, k)) over the joint plan (B, N, L, d)."""
        out: Tensor = madiff.guided_eps(x_k, k, y, model.eps, self.cfg.omega, torch.zeros_like(y))
        return out

    def plan(self, model: MADiffModel, known: Tensor, values: Tensor, y: Tensor) -> Tensor:
        """A joint plan x_0 (B, N, L, d) from noise, the known entries imposed at every step."""
        B, N, L, d = values.shape
        flat = (B, N * L, d)
        mask, v = known.reshape(flat), values.reshape(flat)

        def eps_hat(x: Tensor, k: int | Tensor) -> Tensor:
            return self.guided_eps(model, x.reshape(B, N, L, d), k, y).reshape(flat)

        x = torch.randn(flat, device=self.device)
        if self.cfg.eval_sampler == "ddpm":  # the official chain: K DDPM steps (diffuser.sample without J)
            z = torch.randn(self.cfg.K, *flat, device=self.device)
            return self.ddpm(x, eps_hat, z, mask=mask, values=v, record_chain=False).reshape(B, N, L, d)
        x = diffuser.inpaint(x, mask, v)
        zero = torch.zeros(B, N * L * d, device=self.device)
        for k, k_prev in self.ddim_pairs:
            x_prev = ddim.step(x.reshape(B, -1), eps_hat(x, k).reshape(B, -1), self.sched, k, k_prev, 0.0, zero)
            x = diffuser.inpaint(x_prev.reshape(flat), mask, v)
        return x.reshape(B, N, L, d)

    def reset(self) -> None:
        """A new episode: every agent forgets its history (envs.evaluate calls it before each episode)."""
        for h in self.histories:
            h.clear()

    def reset_batch(self, n: int) -> None:
        """``n`` new episodes played in lockstep (envs.evaluate_batched): a fresh history per episode and agent."""
        self.batch_histories = [[collections.deque(maxlen=max(self.cfg.history, 1)) for _ in range(self.N)]
                                for _ in range(n)]

    def act_local(self, j: int, obs: Tensor) -> Tensor:
        """Agent j's action from its own local observations: its history and current one are the only data
        the plan sees (the teammates' slices are generated), the action from its own slice (MADiff-D)."""
        return self.act_local_rows(j, obs.unsqueeze(0), [self.histories[j]])[0]

    def act_local_rows(self, j: int, obs: Tensor, histories: list[collections.deque[Tensor]]) -> Tensor:
        """Agent j's actions (n, da_j) in n episodes at once, from its local observations (n, do_j) and its history
        in each (``histories[r]``, appended to): one plan of batch n, each row its own episode's data only (the
        network treats rows independently), so a row's action is what a single episode's would be with its noise."""
        C, dj, n = self.cfg.history, self.obs_dims[j], obs.shape[0]
        o = torch.zeros(n, self.d, device=self.device)
        o[:, :dj] = (obs - self.obs_mean[j, :dj]) / self.obs_std[j, :dj]
        values = torch.zeros(n, self.N, self.L, self.d, device=self.device)
        for r, h in enumerate(histories):
            past = list(h)[-C:] if C else []
            past = [past[0] if past else o[r]] * (C - len(past)) + past  # training clamps to step 0 alike
            values[r, j, :C + 1] = torch.stack([*past, o[r]])
        known = self.data.known(torch.full((n,), j, device=self.device))
        y = torch.tensor([[self.cfg.target_return, 1.0]], device=self.device).repeat(n, 1)
        x0 = self.plan(self.ema, known, values, y)
        for r, h in enumerate(histories):
            h.append(o[r])
        a = madiff.decentralised_action(x0, j, self.ema.inv, C)[:, :self.act_dims[j]]
        return a.clamp(-1.0, 1.0)

    def act_batch(self, states: np.ndarray, rows: list[int]) -> np.ndarray:
        """Joint actions (n, da) for the episodes ``rows`` (of :meth:`reset_batch`) at their single-agent
        observations (n, ds): each agent plans once for all of them, from its own local views."""
        out = np.zeros((len(rows), self.joint_dim), dtype=np.float32)
        with torch.no_grad():
            for j, (view, split) in enumerate(zip(self.views, self.splits, strict=True)):
                o = torch.as_tensor(np.asarray(states, np.float32)[:, view], device=self.device)
                hist = [self.batch_histories[r][j] for r in rows]
                out[:, split] = self.act_local_rows(j, o, hist).cpu().numpy()
        return out

    # ---- checkpoint ---------------------------------------------------------------------------------

    def modules(self) -> dict[str, Any]:
        return {"model": self.model, "ema": self.ema, "opt": self.opt}


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

"""Planted bugs for the ``madiff`` family."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from diffrl_ref.reference import decision_diffuser as dd
from diffrl_ref.reference import madiff as ref

from . import Mutant

F = NDArray[np.float64]


def _f(a: ArrayLike) -> F:
    return np.asarray(a, dtype=np.float64)


# ---- madiff.guided_eps -----------------------------------------------------------------------


def _cfg_variant(kind: str) -> Any:
    def guided(x_k: ArrayLike, k: ArrayLike, y: ArrayLike, eps_fn: Any, omega: float,
               y_null: ArrayLike | None = None) -> F:
        good = ref.guided_eps(x_k, k, y, eps_fn, omega, y_null)
        x = _f(x_k)
        kk = np.broadcast_to(np.asarray(k), (x.shape[0],)).astype(np.int64)
        empty = np.zeros_like(_f(y)) if y_null is None else _f(y_null)
        if kind == "axes_swapped":
            # Written for the official (B, H, N, d) layout, then reshaped (not transposed) for the
            # network: the network sees agents and time mixed up.
            v = np.ascontiguousarray(x.swapaxes(1, 2))

            def net(c: F) -> F:
                return _f(eps_fn(v.reshape(x.shape), kk, c)).reshape(v.shape).swapaxes(1, 2)

            eu, ec = net(empty), net(_f(y))
            return eu + float(omega) * (ec - eu)
        eu, ec = _f(eps_fn(x, kk, empty)), _f(eps_fn(x, kk, _f(y)))
        if kind == "swapped":
            return ec + float(omega) * (eu - ec)
        if kind == "one_plus_w":
            return (1 + float(omega)) * ec - float(omega) * eu
        if kind == "weight_squared":
            return eu + float(omega) ** 2 * (ec - eu)
        return good
    return guided


def _cfg_unchecked(x_k: ArrayLike, k: ArrayLike, y: ArrayLike, eps_fn: Any, omega: float,
                   y_null: ArrayLike | None = None) -> F:
    x = _f(x_k)
    kk = np.broadcast_to(np.asarray(k), (x.shape[0],))
    empty = np.zeros_like(_f(y)) if y_null is None else _f(y_null)
    eu, ec = _f(eps_fn(x, kk, empty)), _f(eps_fn(x, kk, _f(y)))
    return eu + omega * (ec - eu)


# ---- madiff.inverse_dynamics -----------------------------------------------------------------


def _models(inv_fns: Any, N: int) -> list[Any]:
    return [inv_fns] * N if callable(inv_fns) else list(inv_fns)


def _inv_next_agent_model(x: ArrayLike, inv_fns: Any) -> F:
    # Agent i handed model i + 1 (an off-by-one between agent ids and the model list).
    good = ref.inverse_dynamics(x, inv_fns)
    o = _f(x)
    N = o.shape[1]
    models = _models(inv_fns, N)
    return np.stack([dd.inverse_dynamics(o[:, i], models[(i + 1) % N]) for i in range(N)], axis=1).reshape(good.shape)


def _inv_swapped(x: ArrayLike, inv_fns: Any) -> F:
    o = _f(x)
    models = _models(inv_fns, o.shape[1])
    ref.inverse_dynamics(x, inv_fns)
    def swap(f: Any) -> Any:
        return lambda s, s2: f(s2, s)

    return ref.inverse_dynamics(x, [swap(f) for f in models])


def _inv_shared_first_agent(x: ArrayLike, inv_fns: Any) -> F:
    # A single shared model evaluated for agent 0 only and broadcast to the team.
    good = ref.inverse_dynamics(x, inv_fns)
    if not callable(inv_fns):
        return good
    a0 = dd.inverse_dynamics(_f(x)[:, 0], inv_fns)
    return np.broadcast_to(a0[:, None], good.shape).copy()


def _inv_zip_truncates(x: ArrayLike, inv_fns: Any) -> F:
    # zip(agents, models) silently drops agents (or models) when the counts differ.
    o = _f(x)
    models = _models(inv_fns, o.shape[1])
    return np.stack([dd.inverse_dynamics(o[:, i], f) for i, f in zip(range(o.shape[1]), models, strict=False)],
                    axis=1)


# ---- madiff.decentralised_action -------------------------------------------------------------


def _dec_next_agent(x0: ArrayLike, i: int, inv_fn: Any, t: int = 0) -> F:
    # Agent ids 1-based in the caller, 0-based in the array: agent i reads agent i + 1's slice.
    ref.decentralised_action(x0, i, inv_fn, t)
    o = _f(x0)
    j = (int(i) + 1) % o.shape[1]
    return dd.inverse_dynamics(o[:, j, t:t + 2], inv_fn)[:, 0]


def _dec_swapped(x0: ArrayLike, i: int, inv_fn: Any, t: int = 0) -> F:
    return ref.decentralised_action(x0, i, lambda s, s2: inv_fn(s2, s), t)


def _dec_history_offset(x0: ArrayLike, i: int, inv_fn: Any, t: int = 0) -> F:
    # The current step read one position late (the history length counted twice), clamped at the end.
    ref.decentralised_action(x0, i, inv_fn, t)
    o = _f(x0)
    step = min(int(t) + 1, o.shape[2] - 2)
    return dd.inverse_dynamics(o[:, int(i), step:step + 2], inv_fn)[:, 0]


def _dec_negative_index(x0: ArrayLike, i: int, inv_fn: Any, t: int = 0) -> F:
    # JAX indexing semantics: a negative index wraps (i = -1 is the last agent), an index past the
    # end is clamped to the last one, a window start is clamped so the window fits (dynamic_slice),
    # and a float index is truncated; nothing is rejected.
    o = _f(x0)
    if o.ndim != 4:
        return dd.inverse_dynamics(o, inv_fn)[:, 0]
    N, H = o.shape[1], o.shape[2]
    j = int(i) + N if int(i) < 0 else int(i)
    j = min(max(j, 0), N - 1)
    start = min(max(int(t), 0), max(H - 2, 0))
    return dd.inverse_dynamics(o[:, j, start:start + 2], inv_fn)[:, 0]


MUTANTS = [
    Mutant("madiff_cfg_weights_swapped", "madiff.guided_eps",
           ("endpoints", "single_agent_is_decision_diffuser", "matches_reference"),
           "eps_cond + omega (eps_uncond - eps_cond)", {"madiff.guided_eps": _cfg_variant("swapped")}),
    Mutant("madiff_cfg_one_plus_w", "madiff.guided_eps",
           ("endpoints", "single_agent_is_decision_diffuser", "matches_reference"),
           "(1 + w) eps_c - w eps_u with the decks' omega", {"madiff.guided_eps": _cfg_variant("one_plus_w")}),
    Mutant("madiff_cfg_weight_squared", "madiff.guided_eps", ("affine_in_omega", "matches_reference"),
           "guidance weight applied twice (omega^2)", {"madiff.guided_eps": _cfg_variant("weight_squared")}),
    Mutant("madiff_cfg_agent_time_axes_swapped", "madiff.guided_eps", ("endpoints", "matches_reference"),
           "network fed the (B, H, N, d) layout of the official code",
           {"madiff.guided_eps": _cfg_variant("axes_swapped")}),
    Mutant("madiff_cfg_unchecked", "madiff.guided_eps", ("rejects_out_of_domain",), "no domain checks",
           {"madiff.guided_eps": _cfg_unchecked}),
    Mutant("madiff_inv_next_agent_model", "madiff.inverse_dynamics",
           ("per_agent_pairs", "recovers_linear_dynamics", "matches_reference"),
           "agent i uses agent i + 1's inverse dynamics model", {"madiff.inverse_dynamics": _inv_next_agent_model}),
    Mutant("madiff_inv_swapped", "madiff.inverse_dynamics",
           ("per_agent_pairs", "recovers_linear_dynamics", "single_agent_is_decision_diffuser", "matches_reference"),
           "f_i(o^{t+1}, o^t): the observations swapped", {"madiff.inverse_dynamics": _inv_swapped}),
    Mutant("madiff_inv_shared_first_agent", "madiff.inverse_dynamics", ("shared_model", "matches_reference"),
           "a shared model evaluated for agent 0 only and broadcast",
           {"madiff.inverse_dynamics": _inv_shared_first_agent}),
    Mutant("madiff_inv_zip_truncates", "madiff.inverse_dynamics", ("rejects_out_of_domain",),
           "zip() drops agents when the number of models differs", {"madiff.inverse_dynamics": _inv_zip_truncates}),
    Mutant("madiff_decentral_next_agent", "madiff.decentralised_action",
           ("own_slice_only", "equals_joint_inverse_dynamics", "recovers_linear_dynamics", "matches_reference"),
           "agent i reads agent i + 1's slice (1-based agent id)", {"madiff.decentralised_action": _dec_next_agent}),
    Mutant("madiff_decentral_swapped", "madiff.decentralised_action",
           ("equals_joint_inverse_dynamics", "recovers_linear_dynamics", "single_agent_is_decision_diffuser",
            "matches_reference"),
           "f_i(o^{t+1}, o^t)", {"madiff.decentralised_action": _dec_swapped}),
    Mutant("madiff_decentral_history_offset", "madiff.decentralised_action",
           ("equals_joint_inverse_dynamics", "single_agent_is_decision_diffuser", "matches_reference"),
           "the current step read one position late", {"madiff.decentralised_action": _dec_history_offset}),
    Mutant("madiff_decentral_negative_index", "madiff.decentralised_action", ("rejects_out_of_domain",),
           "JAX-style indexing: i = -1 wraps to the last agent, i = N and t = H - 1 are clamped",
           {"madiff.decentralised_action": _dec_negative_index}),
]

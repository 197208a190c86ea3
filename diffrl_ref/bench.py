"""``diffrl bench``: the production path against the reference and diffusers, timed in one run.

Every figure is a ratio or a fraction measured within one process on one machine, with the
loops of a configuration timed round-robin (so drift of the machine hits them alike). The
network is Diffusion-QL's (:class:`~diffrl_ref.fast.nets.DiffusionQLNet`: 3 x 256, Mish,
sinusoidal time embedding; action dim 6, state dim 17) in float32 under ``torch.inference_mode``.

Loops timed per (batch, steps):

* ``network``: the S network calls alone (the floor of any sampler);
* ``fast-ddim``, ``fast-dpmpp2m``: :class:`~diffrl_ref.fast.ddim.DDIMSampler` (eta = 0) and
  :class:`~diffrl_ref.fast.dpm_solver.DPMSolverSampler` (DPM-Solver++(2M)) with input checks on;
* ``diffusers-ddim``, ``diffusers-dpmpp2m``: ``set_timesteps`` then the ``step`` loop of
  DDIMScheduler and DPMSolverMultistepScheduler (defaults: DPM-Solver++ order 2), as pipelines
  write it;
* ``reference-ddim``: :func:`diffrl_ref.reference.ddim.sample` (NumPy float64) calling the same
  torch network through NumPy conversions (batch <= 256 only: it is an oracle, not a sampler);
* ``fast-ddim-graph``: the fast DDIM loop captured as one CUDA graph (CUDA only).

Training: one Diffusion-QL behaviour-cloning step (:func:`diffrl_ref.fast.diffusion_ql.bc_loss`,
backward, Adam) against the network's forward and backward alone, and against the same step
written with diffusers' ``add_noise``.
"""

from __future__ import annotations

import datetime as _dt
import functools
import importlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

STATE_DIM, ACTION_DIM, K_TRAIN = 17, 6, 1000

if TYPE_CHECKING:
    from torch import Tensor

    EpsFn = Callable[[Tensor, Tensor], Tensor]


def cpu_model() -> str:
    """The processor's name (float32 kernels round differently on different CPUs: runs are bitwise
    reproducible on the same kind of machine only)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_conditions(load_1min: float, threads: int) -> str:
    """How a measurement's table describes the machine, from a 1-minute load average read while (or right after)
    it ran, to which the measuring process itself adds about its ``threads``: more than half a core beyond
    that is other work."""
    if load_1min - threads > 0.5:
        return ("other work shared the cores, so the absolute numbers are low; the measured cases were "
                "interleaved so that they shared the same load")
    return "a quiet machine: nothing else ran"


def machine() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                            "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                            "python": platform.python_version(), "torch": torch.__version__,
                            "platform": platform.platform()}
    try:
        import diffusers

        info["diffusers"] = diffusers.__version__
    except ImportError:
        info["diffusers"] = None
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _timed_round_robin(loops: dict[str, Callable[[], Any]], sync: Callable[[], None], min_time: float,
                       min_reps: int) -> dict[str, dict[str, float]]:
    """Median and quartiles (ms) of each loop, loops interleaved rep by rep."""
    for fn in loops.values():  # warm-up (lazy init, allocator)
        fn()
        fn()
    sync()
    times: dict[str, list[float]] = {n: [] for n in loops}
    start = time.perf_counter()
    while True:
        for name, fn in loops.items():
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append((time.perf_counter() - t0) * 1e3)
        n = len(next(iter(times.values())))
        if n >= min_reps and (time.perf_counter() - start > min_time or n >= 2000):
            break
    out = {}
    for name, ts in times.items():
        q = statistics.quantiles(ts, n=4) if len(ts) >= 2 else [ts[0]] * 3
        out[name] = {"ms": statistics.median(ts), "q1": q[0], "q3": q[2], "reps": len(ts)}
    return out


def _peak_cpu_bytes(fn: Callable[[], Any]) -> int | None:
    """Peak bytes held by torch's CPU allocator during fn.

    From the profiler's memory records: each op's net self allocation and the frees recorded
    between ops, summed in time order. Temporaries allocated and freed inside one op are not seen.
    """
    from torch.profiler import ProfilerActivity, profile

    saved = os.dup(2)  # kineto prints start/stop lines on fd 2 that no setting silences
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                fn()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    running, peak = 0, 0
    for e in events:
        running += int(e.self_cpu_memory_usage)
        peak = max(peak, running)
    return peak


def _peak_bytes(fn: Callable[[], Any], device: str) -> int | None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated() - base)
    return _peak_cpu_bytes(fn)


def sampling(batches: Sequence[int], steps: Sequence[int], device: str, min_time: float, min_reps: int,
             progress: Callable[[str], None]) -> list[dict[str, Any]]:
    import numpy as np
    import torch

    from .fast import unchecked
    from .fast.ddim import DDIMSampler, uniform_tau
    from .fast.dpm_solver import DPMSolverSampler
    from .fast.nets import DiffusionQLNet
    from .fast.schedule import Schedule
    from .reference import ddim as ref_ddim
    from .reference import schedule as ref_schedule

    diffusers: Any = None
    try:
        diffusers = importlib.import_module("diffusers")
    except ImportError:
        progress("diffusers not installed: its loops are skipped (pip install 'diffrl-ref[diffusers]')")

    torch.manual_seed(0)
    net = DiffusionQLNet(STATE_DIM, ACTION_DIM).to(device).eval()
    sched = Schedule.linear(K_TRAIN, device=device)
    betas_np = ref_schedule.linear(K_TRAIN)

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    def recorded(sampler: Callable[[Tensor, EpsFn], Tensor], eps_fn: EpsFn, x: Tensor) -> list[tuple[Tensor, Tensor]]:
        """The (x, k) inputs the sampler feeds the network, so the network alone is timed on the same data."""
        calls: list[tuple[Tensor, Tensor]] = []

        def spy(a: Tensor, k: Tensor) -> Tensor:
            calls.append((a.clone(), k.clone()))
            return eps_fn(a, k)

        with torch.inference_mode():
            sampler(x, spy)
        return calls

    def network_calls(eps_fn: EpsFn, calls: list[tuple[Tensor, Tensor]]) -> list[Tensor]:
        return [eps_fn(a, k) for a, k in calls]

    def diffusers_loop(sc: Any, eps_fn: EpsFn, x: Tensor, S: int) -> Tensor:
        sc.set_timesteps(S, device=device)
        for t in sc.timesteps:
            x = sc.step(eps_fn(x, t.expand(x.shape[0])), t, x).prev_sample
        return x

    def reference_loop(eps_fn: EpsFn, x: Tensor, tau: list[int]) -> Any:
        def eps_np(a: Any, k: Any) -> Any:
            a_t = torch.as_tensor(a, dtype=torch.float32, device=device)
            return eps_fn(a_t, torch.as_tensor(k, device=device)).double().cpu().numpy()

        x_np = x.detach().cpu().double().numpy()
        return ref_ddim.sample(x_np, eps_np, betas_np, tau, 0.0, np.zeros((len(tau), *x_np.shape)))

    rows: list[dict[str, Any]] = []
    for B in batches:
        s = torch.randn(B, STATE_DIM, device=device)
        x = torch.randn(B, ACTION_DIM, device=device)
        eps_fn: EpsFn = functools.partial(net, s=s)
        for S in steps:
            tau = uniform_tau(K_TRAIN, S)
            ddim, dpm = DDIMSampler(sched, tau), DPMSolverSampler(sched, tau)
            loops: dict[str, Callable[[], Any]] = {
                "network-ddim": functools.partial(network_calls, eps_fn, recorded(ddim, eps_fn, x)),
                "network-dpmpp2m": functools.partial(network_calls, eps_fn, recorded(dpm, eps_fn, x)),
                "fast-ddim": functools.partial(ddim, x, eps_fn),
                "fast-dpmpp2m": functools.partial(dpm, x, eps_fn),
            }
            if diffusers is not None:
                d_ddim = diffusers.DDIMScheduler(num_train_timesteps=K_TRAIN)
                d_dpm = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=K_TRAIN)
                loops["diffusers-ddim"] = functools.partial(diffusers_loop, d_ddim, eps_fn, x, S)
                loops["diffusers-dpmpp2m"] = functools.partial(diffusers_loop, d_dpm, eps_fn, x, S)
            if B <= 256:
                loops["reference-ddim"] = functools.partial(reference_loop, eps_fn, x, tau)
            if device == "cuda":
                from .fast.graphs import CapturedSampler

                with unchecked():
                    graph = CapturedSampler(functools.partial(ddim, eps_fn=eps_fn), [x])
                loops["fast-ddim-graph"] = functools.partial(graph, x)
            progress(f"sampling  batch {B:5d}  steps {S:4d}  ({len(loops)} loops)")
            with torch.inference_mode():
                timed = _timed_round_robin(loops, sync, min_time, min_reps)
                mem = {name: _peak_bytes(loops[name], device) for name in loops if not name.startswith("network")}
            for name, t in timed.items():
                base = timed["network-dpmpp2m" if name.endswith("dpmpp2m") else "network-ddim"]["ms"]
                rows.append({"batch": B, "steps": S, "loop": name, **t,
                             "outside_network": None if name.startswith("network") else 1.0 - base / t["ms"],
                             "peak_bytes": mem.get(name)})
    return rows


def training(batch: int, device: str, min_time: float, min_reps: int,
             progress: Callable[[str], None]) -> list[dict[str, Any]]:
    """One Diffusion-QL behaviour-cloning step (K = 5 VP schedule, as in the paper) at ``batch``."""
    import torch

    from .fast import diffusion_ql, unchecked
    from .fast.nets import DiffusionQLNet
    from .fast.schedule import Schedule

    torch.manual_seed(0)
    K = 5
    net = DiffusionQLNet(STATE_DIM, ACTION_DIM).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=3e-4)
    sched = Schedule.vp(K, device=device)
    a = torch.rand(batch, ACTION_DIM, device=device) * 2 - 1
    s = torch.randn(batch, STATE_DIM, device=device)

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    def step_of(loss_fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def step() -> None:
            opt.zero_grad(set_to_none=True)
            loss_fn().backward()  # type: ignore[no-untyped-call]
            opt.step()
        return step

    def fast_loss() -> torch.Tensor:
        k = torch.randint(1, K + 1, (batch,), device=device)
        eps = torch.randn_like(a)
        return diffusion_ql.bc_loss(a, s, net, sched, k, eps).mean()

    def network_only() -> torch.Tensor:
        k = torch.randint(1, K + 1, (batch,), device=device)
        out: torch.Tensor = net(a, k, s).square().mean()
        return out

    loops: dict[str, Callable[[], Any]] = {"network": step_of(network_only), "fast-bc-loss": step_of(fast_loss)}

    def unchecked_step() -> None:
        with unchecked():
            step_of(fast_loss)()

    loops["fast-bc-loss-unchecked"] = unchecked_step
    try:
        diffusers: Any = importlib.import_module("diffusers")
        d_sched = diffusers.DDPMScheduler(num_train_timesteps=K, trained_betas=sched.betas64.numpy())

        def diffusers_loss() -> torch.Tensor:
            t = torch.randint(0, K, (batch,), device=device)
            eps = torch.randn_like(a)
            a_k = d_sched.add_noise(a, eps, t)
            out: torch.Tensor = (net(a_k, t, s) - eps).square().mean()
            return out

        loops["diffusers-add-noise"] = step_of(diffusers_loss)
    except ImportError:
        pass
    progress(f"training  batch {batch:5d}  ({len(loops)} loops)")
    timed = _timed_round_robin(loops, sync, min_time, min_reps)
    net_ms = timed["network"]["ms"]
    return [{"batch": batch, "loop": name, **t,
             "outside_network": None if name == "network" else 1.0 - net_ms / t["ms"],
             "peak_bytes": _peak_bytes(loops[name], device)} for name, t in timed.items()]


def run(batches: Sequence[int], steps: Sequence[int], device: str, threads: int | None, train_batch: int,
        min_time: float, min_reps: int, command: str, progress: Callable[[str], None]) -> dict[str, Any]:
    import torch

    if threads:
        torch.set_num_threads(threads)
    # An untrained network drives x far from the data; Mish then produces float32 subnormals,
    # whose slow path would dominate every loop alike. Flushing them is standard for CPU inference.
    flush = bool(torch.set_flush_denormal(True))
    t0 = time.time()
    result: dict[str, Any] = {
        "command": command,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "device": device,
        "network": f"DiffusionQLNet(state_dim={STATE_DIM}, action_dim={ACTION_DIM}), float32, 3 x 256 Mish",
        "schedule": f"linear, K = {K_TRAIN} (sampling); VP, K = 5 (training)",
        "flush_denormal": flush,
        "sampling": sampling(batches, steps, device, min_time, min_reps, progress),
        "training": training(train_batch, device, min_time, min_reps, progress),
    }
    result["seconds"] = round(time.time() - t0, 1)
    return result


def _row(rows: list[dict[str, Any]], **key: Any) -> dict[str, Any] | None:
    for r in rows:
        if all(r.get(k) == v for k, v in key.items()):
            return r
    return None


def summary(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Per (batch, steps): loop times and the ratios the docs table shows."""
    rows = result["sampling"]
    out = []
    for B, S in sorted({(r["batch"], r["steps"]) for r in rows}):
        def ms(loop: str, B: int = B, S: int = S) -> float | None:
            r = _row(rows, batch=B, steps=S, loop=loop)
            return None if r is None else float(r["ms"])

        def frac(loop: str, B: int = B, S: int = S) -> float | None:
            r = _row(rows, batch=B, steps=S, loop=loop)
            return None if r is None else r["outside_network"]

        def ratio(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None else a / b

        out.append({"batch": B, "steps": S, "network_ms": ms("network-ddim"),
                    "fast_ddim_ms": ms("fast-ddim"), "diffusers_ddim_ms": ms("diffusers-ddim"),
                    "ddim_speedup": ratio(ms("diffusers-ddim"), ms("fast-ddim")),
                    "fast_dpm_ms": ms("fast-dpmpp2m"), "diffusers_dpm_ms": ms("diffusers-dpmpp2m"),
                    "dpm_speedup": ratio(ms("diffusers-dpmpp2m"), ms("fast-dpmpp2m")),
                    "reference_ddim_ms": ms("reference-ddim"),
                    "reference_over_fast": ratio(ms("reference-ddim"), ms("fast-ddim")),
                    "graph_ddim_ms": ms("fast-ddim-graph"),
                    "fast_ddim_outside": frac("fast-ddim"), "diffusers_ddim_outside": frac("diffusers-ddim"),
                    "fast_dpm_outside": frac("fast-dpmpp2m"), "diffusers_dpm_outside": frac("diffusers-dpmpp2m")})
    return out


def _f(v: float | None, fmt: str) -> str:
    return "n/a" if v is None else format(v, fmt)


def rst_table(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f".. generated by ``{result['command']}``; do not edit",
        "",
        f"Measured {result['date']} on {m['cpu']} ({m['cores']} cores, torch threads {m['torch_threads']}"
        + (f", GPU {m['gpu']}" if m.get("gpu") else "") + f"), device ``{result['device']}``, "
        f"torch {m['torch']}, diffusers {m['diffusers']}, Python {m['python']}. Command: ``{result['command']}``.",
        "",
        ".. list-table:: Sampling: median ms per sample loop; speed-up = diffusers / fast; "
        "outside = fraction of the loop not spent in the network",
        "   :header-rows: 1",
        "",
        "   * - batch",
        "     - steps",
        "     - network",
        "     - fast DDIM",
        "     - diffusers DDIM",
        "     - DDIM speed-up",
        "     - fast DPM++(2M)",
        "     - diffusers DPM++(2M)",
        "     - DPM speed-up",
        "     - outside (fast / diffusers DDIM)",
        "     - reference / fast",
    ]
    for r in summary(result):
        cells = [str(r["batch"]), str(r["steps"]), _f(r["network_ms"], ".3g"), _f(r["fast_ddim_ms"], ".3g"),
                 _f(r["diffusers_ddim_ms"], ".3g"), _f(r["ddim_speedup"], ".2f") + "x",
                 _f(r["fast_dpm_ms"], ".3g"), _f(r["diffusers_dpm_ms"], ".3g"), _f(r["dpm_speedup"], ".2f") + "x",
                 f"{_f(r['fast_ddim_outside'], '.0%')} / {_f(r['diffusers_ddim_outside'], '.0%')}",
                 _f(r["reference_over_fast"], ".1f") + "x" if r["reference_over_fast"] is not None else "n/a"]
        lines.append("   * - " + cells[0])
        lines += [f"     - {c}" for c in cells[1:]]
    lines += ["", ".. list-table:: Training: one Diffusion-QL behaviour-cloning step (forward, backward, Adam), "
              f"batch {result['training'][0]['batch']}",
              "   :header-rows: 1", "", "   * - loop", "     - median ms", "     - outside the network",
              "     - peak memory (MiB)"]
    for r in result["training"]:
        peak = r.get("peak_bytes")
        lines += [f"   * - {r['loop']}", f"     - {r['ms']:.3g}", f"     - {_f(r['outside_network'], '.0%')}",
                  f"     - {_f(None if peak is None else peak / 2**20, '.2f')}"]
    graph = [r for r in summary(result) if r["graph_ddim_ms"] is not None]
    if graph:
        lines += ["", "CUDA-graph DDIM (ms per sample): " + ", ".join(
            f"batch {r['batch']}, {r['steps']} steps: {r['graph_ddim_ms']:.3g}" for r in graph)]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["sampling"]
    batches = sorted({r["batch"] for r in rows})
    loops = [lp for lp in ("network-ddim", "fast-ddim", "diffusers-ddim", "fast-dpmpp2m", "diffusers-dpmpp2m",
                           "reference-ddim", "fast-ddim-graph") if any(r["loop"] == lp for r in rows)]
    fig, axes = plt.subplots(1, len(batches) + 1, figsize=(4.2 * (len(batches) + 1), 3.6))
    for ax, B in zip(axes, batches, strict=False):
        for lp in loops:
            pts = sorted((r["steps"], r["ms"]) for r in rows if r["batch"] == B and r["loop"] == lp)
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=lp,
                        linestyle="--" if lp.startswith("network") else "-")
        ax.set(xscale="log", yscale="log", xlabel="sampling steps", ylabel="ms per sample loop", title=f"batch {B}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    ax = axes[-1]
    for lp in ("fast-ddim", "diffusers-ddim", "fast-dpmpp2m", "diffusers-dpmpp2m"):
        pts = sorted((r["batch"], r["outside_network"]) for r in rows
                     if r["loop"] == lp and r["steps"] == min(r2["steps"] for r2 in rows))
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=lp)
    lowest = min([0.0] + [r["outside_network"] for r in rows if r["outside_network"] is not None])
    ax.set(xscale="log", xlabel="batch", ylabel="fraction of loop outside network",
           title=f"{min(r['steps'] for r in rows)} steps (below 0: timing noise)", ylim=(lowest - 0.05, 1))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.suptitle(f"diffrl bench, {result['device']}: {result['machine']['cpu']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(batches: Sequence[int], steps: Sequence[int], device: str, threads: int | None, train_batch: int,
         out: Path, min_time: float, min_reps: int, command: str, no_plot: bool = False) -> dict[str, Any]:
    def progress(msg: str) -> None:
        print(f"[bench] {msg}", file=sys.stderr, flush=True)

    result = run(batches, steps, device, threads, train_batch, min_time, min_reps, command, progress)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "bench.json.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(out / "bench.json")
    (out / "bench.rst").write_text(rst_table(result))
    if not no_plot:
        try:
            plot(result, out / "bench.png")
        except ImportError:
            progress("matplotlib not installed: no plot (pip install 'diffrl-ref[bench]')")
    return result

"""Bitwise portability of CPU training across x86-64 CPU models, and what pinning the kernels costs.

PyTorch picks its CPU kernels by instruction set and vendor: ATen's vectorised kernels
(`ATEN_CPU_CAPABILITY` = default/avx2/avx512), oneDNN convolutions (`ONEDNN_MAX_CPU_ISA`, or
`torch.backends.mkldnn.enabled = False`), MKL GEMM (`MKL_CBWR`). Different kernels round
differently, so a training run's weights depend on the CPU it ran on. This benchmark runs a small
deterministic training workload in a child process under a "runner" (this CPU, or
`qemu-x86_64 -cpu MODEL`, which emulates another CPU model's instruction set and CPUID vendor) and a
"pin set" (environment variables, and/or oneDNN switched off inside the child), and compares digests.

Workloads (one thread, fixed seed, fixed input):

- `small`: 5 AdamW steps of a small conv net (conv, BatchNorm, GELU, strided conv, LayerNorm,
  softmax attention pooling, linear head; cross-entropy). The child also prints a digest of each
  single op's forward output and gradients (conv, linear, matmul, layernorm, batchnorm, GELU,
  softmax, cross-entropy, AdamW step, ...) so that a disagreement can be traced to an op.
- `smoke:<job>`: `--smoke-steps` training steps of a real smoke model (bench/harness.py: the model,
  criterion and optimiser exactly as `densepred train` builds them) on a synthetic batch.

Sub-commands:

    agree   digests per (runner x pin set); which runners agree bitwise per pin set, and for a pin
            set where they do not, which single ops differ
    cost    native speed of each pin set: median training-step time of real smoke jobs (bench/harness,
            batch 8, 96x128, one thread) over the median with no pins; pin sets interleaved per
            round so drift in the machine's load hits them alike
    one     one child (`--one <json>`), printing one JSON line

    PYTHONPATH=src .venv/bin/python bench/bench_numerics.py agree \
        [--runners native Haswell Skylake-Client EPYC-Rome] [--pins none aten_default ...] \
        [--workload small|smoke:stl_semseg] [--deterministic]
    PYTHONPATH=src .venv/bin/python bench/bench_numerics.py cost [--jobs stl_semseg polymax_depth] \
        [--rounds 3] [--steps 5] [--warmup 2]

Emulated runs need `qemu-x86_64` (Debian: qemu-user); `import torch` alone takes about 20 s under
it. Results are written to bench/out/bench_numerics_<command>.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"

from densepred.launch import PORTABLE_CPU_ENV  # noqa: E402

# name -> (environment, oneDNN enabled inside the child)
PIN_SETS: dict[str, tuple[dict[str, str], bool]] = {
    "none": ({}, True),
    "aten_avx2": ({"ATEN_CPU_CAPABILITY": "avx2"}, True),
    "aten_default": ({"ATEN_CPU_CAPABILITY": "default"}, True),
    "mkl_compat": ({"MKL_CBWR": "COMPATIBLE"}, True),
    "onednn_sse41": ({"ONEDNN_MAX_CPU_ISA": "SSE41"}, True),
    "mkldnn_off": ({}, False),
    "default_compat_sse41": (
        {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "SSE41"},
        True,
    ),
    "default_compat_off": ({"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE"}, False),
    "avx2_all": ({"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}, True),
    "avx2_compat_sse41": (
        {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "SSE41"},
        True,
    ),
    "avx2_compat_off": ({"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "COMPATIBLE"}, False),
    "avx2_cbwravx2_sse41": (
        {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "SSE41"},
        True,
    ),
    "portable": (dict(PORTABLE_CPU_ENV), True),  # runtime.cpu_kernels: portable
    "avx2_strict_avx2": (
        {
            "ATEN_CPU_CAPABILITY": "avx2",
            "MKL_CBWR": "AVX2,STRICT",
            "ONEDNN_MAX_CPU_ISA": "AVX2",
            "OPENBLAS_CORETYPE": "Haswell",
        },
        True,
    ),
}
# Variables the parent's environment must not leak into a child (the pin set decides them).
PIN_VARS = (
    "ATEN_CPU_CAPABILITY",
    "MKL_CBWR",
    "ONEDNN_MAX_CPU_ISA",
    "DNNL_MAX_CPU_ISA",
    "MKL_ENABLE_INSTRUCTIONS",
    "OPENBLAS_CORETYPE",
)


# ---------------------------------------------------------------------------------- child: workloads


def tensor_digest(tensors: list[Any]) -> str:
    """sha256 over the raw bytes (and shapes) of `tensors`, in order."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().contiguous().cpu()
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def small_net() -> Any:
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.GELU())
            self.down = nn.Conv2d(16, 32, 3, stride=2, padding=1)
            self.norm = nn.LayerNorm(32)
            self.query = nn.Parameter(torch.randn(32) * 0.1)
            self.head = nn.Linear(32, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.down(self.stem(x))  # N, 32, H/2, W/2
            x = torch.nn.functional.gelu(self.norm(x.flatten(2).transpose(1, 2)))  # N, L, 32
            attn = torch.softmax(x @ self.query / 32**0.5, dim=1)  # N, L
            return self.head((attn.unsqueeze(-1) * x).sum(1))

    return Net()


def run_small(steps: int) -> dict[str, Any]:
    import torch

    torch.manual_seed(0)
    model = small_net().train()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(8, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (8,), generator=gen)
    # fused, as densepred.engine.optim.build_optimizer builds it (the unfused AdamW computes
    # sqrt through MKL's vector math library, whose result depends on the CPU whatever the pins)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05, fused=True)
    loss = None
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    state = [v for _, v in sorted(model.state_dict().items())]
    return {"digest": tensor_digest(state), "loss": float(loss).hex()}


def run_ops() -> dict[str, str]:
    """A 16-hex digest of each single op's output and gradients, on fixed random inputs."""
    import torch
    import torch.nn.functional as F

    from densepred.ops import sqrt as portable_sqrt

    gen = torch.Generator().manual_seed(2)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).requires_grad_(True)

    def fwd_bwd(fn: Any, *inputs: torch.Tensor) -> str:
        out = fn(*inputs)
        out.backward(torch.ones_like(out) * 0.37 + torch.arange(out.numel()).reshape(out.shape) * 1e-3)
        return tensor_digest([out, *[i.grad for i in inputs]])[:16]

    ops: dict[str, str] = {}
    ops["conv3x3"] = fwd_bwd(lambda x, w: F.conv2d(x, w, padding=1), rand(4, 16, 24, 24), rand(32, 16, 3, 3))
    ops["conv3x3_s2"] = fwd_bwd(
        lambda x, w: F.conv2d(x, w, stride=2, padding=1), rand(4, 16, 24, 24), rand(32, 16, 3, 3)
    )
    ops["conv1x1"] = fwd_bwd(lambda x, w: F.conv2d(x, w), rand(4, 32, 24, 24), rand(64, 32, 1, 1))
    ops["conv_dw7x7"] = fwd_bwd(
        lambda x, w: F.conv2d(x, w, padding=3, groups=32), rand(4, 32, 24, 24), rand(32, 1, 7, 7)
    )
    ops["linear"] = fwd_bwd(lambda x, w, b: F.linear(x, w, b), rand(64, 96), rand(80, 96), rand(80))
    ops["matmul_bmm"] = fwd_bwd(torch.matmul, rand(4, 50, 40), rand(4, 40, 30))
    ops["layernorm"] = fwd_bwd(lambda x, w, b: F.layer_norm(x, (96,), w, b), rand(64, 96), rand(96), rand(96))
    ops["batchnorm_train"] = fwd_bwd(
        lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True),
        rand(4, 16, 12, 12),
        rand(16),
        rand(16),
    )
    ops["gelu"] = fwd_bwd(F.gelu, rand(4096))
    ops["gelu_tanh"] = fwd_bwd(lambda x: F.gelu(x, approximate="tanh"), rand(4096))
    ops["softmax"] = fwd_bwd(lambda x: torch.softmax(x, -1), rand(64, 100))
    ops["log_softmax"] = fwd_bwd(lambda x: torch.log_softmax(x, -1), rand(64, 100))
    ops["cross_entropy"] = fwd_bwd(lambda x: F.cross_entropy(x, torch.arange(64) % 100), rand(64, 100))
    ops["exp_tanh_sigmoid"] = fwd_bwd(
        lambda x: torch.exp(x * 0.1) + torch.tanh(x) + torch.sigmoid(x), rand(4096)
    )
    ops["softplus_log"] = fwd_bwd(lambda x: torch.log(F.softplus(x) + 1e-3), rand(4096))
    ops["sum_mean"] = fwd_bwd(
        lambda x: torch.stack([x.sum(), x.mean(1).sum(), x.pow(2).mean()]), rand(128, 333)
    )
    ops["interpolate_bilinear"] = fwd_bwd(
        lambda x: F.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False), rand(2, 8, 12, 16)
    )
    for name, fused in [("adamw_fused", True), ("adamw_unfused", False)]:
        p = [
            torch.randn(513, generator=gen).requires_grad_(True),
            torch.randn(40, 30, generator=gen).requires_grad_(True),
        ]
        opt = torch.optim.AdamW(p, lr=1e-2, weight_decay=0.05, fused=fused)
        for _ in range(3):
            for t in p:
                t.grad = torch.randn(t.shape, generator=gen)
            opt.step()
        ops[name] = tensor_digest(p)[:16]
    v = torch.rand(4099, generator=gen) * 0.01
    ops["sqrt_mkl_vml"] = tensor_digest([v.sqrt()])[:16]  # float32 torch.sqrt: MKL VML, CPU-dependent
    ops["sqrt_portable"] = tensor_digest([portable_sqrt(v)])[:16]  # densepred.ops.sqrt: via float64
    ops["exp_log"] = tensor_digest([v.exp(), (v + 1e-3).log()])[:16]
    return ops


def run_smoke(job: str, steps: int, batch: int, size: tuple[int, int]) -> dict[str, Any]:
    import torch

    sys.path.insert(0, str(ROOT / "bench"))
    from densepred.engine.distributed import DistEnv
    from harness import PROFILES, build_training, load_job, synthetic_batch, train_step

    job_cfg, stage, runtime = load_job(PROFILES["smoke"], job)
    training = build_training(job_cfg, stage, runtime, DistEnv(device=torch.device("cpu")))
    data = synthetic_batch(list(job_cfg.tasks), stage.dataset, batch, size, "cpu")
    for _ in range(steps):
        train_step(training, data)
    loss = training.criterion(training.step_model(data["image"]), data)["total"]
    state = [v for _, v in sorted(training.model.state_dict().items())]
    return {"digest": tensor_digest(state), "loss": float(loss).hex()}


def time_smoke(job: str, steps: int, warmup: int, batch: int, size: tuple[int, int]) -> dict[str, Any]:
    """Wall and thread-CPU seconds of each timed training step (CPU time barely moves when other
    processes share the cores; wall time does)."""
    import torch

    sys.path.insert(0, str(ROOT / "bench"))
    from densepred.engine.distributed import DistEnv
    from harness import PROFILES, build_training, load_job, synthetic_batch, train_step

    job_cfg, stage, runtime = load_job(PROFILES["smoke"], job)
    training = build_training(job_cfg, stage, runtime, DistEnv(device=torch.device("cpu")))
    data = synthetic_batch(list(job_cfg.tasks), stage.dataset, batch, size, "cpu")
    wall, cpu = [], []
    for _ in range(warmup + steps):
        start, start_cpu = time.perf_counter(), time.thread_time()
        train_step(training, data)
        wall.append(time.perf_counter() - start)
        cpu.append(time.thread_time() - start_cpu)
    return {
        "step_s": [round(t, 5) for t in wall[warmup:]],
        "step_cpu_s": [round(t, 5) for t in cpu[warmup:]],
        "step_s_median": statistics.median(wall[warmup:]),
        "step_cpu_s_median": statistics.median(cpu[warmup:]),
    }


def child(config: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    if not config.get("mkldnn", True):
        torch.backends.mkldnn.enabled = False
    if config.get("deterministic"):
        torch.use_deterministic_algorithms(True)
    row: dict[str, Any] = {"capability": torch.backends.cpu.get_cpu_capability()}
    kind = config["workload"]
    size = tuple(config.get("size", (96, 128)))
    if kind == "time":
        row.update(time_smoke(config["job"], config["steps"], config["warmup"], config["batch"], size))
    elif kind == "small":
        row.update(run_small(config.get("steps", 5)))
        if config.get("ops", True):
            row["ops"] = run_ops()
    elif kind.startswith("smoke:"):
        row.update(run_smoke(kind.split(":", 1)[1], config.get("steps", 2), config.get("batch", 2), size))
    else:
        raise ValueError(f"unknown workload {kind!r}")
    return row


# ----------------------------------------------------------------------------------- parent: runners


def runner_prefix(runner: str) -> list[str]:
    """The command prefix of a runner: `native` (this CPU) or a qemu-x86_64 CPU model name."""
    if runner == "native":
        return []
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        raise RuntimeError("qemu-x86_64 is not installed (Debian: apt-get install qemu-user)")
    return [qemu, "-cpu", runner]


def child_env(pins: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in PIN_VARS}
    env.update(PIN_SETS[pins][0])
    env.update(
        {
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "DENSEPRED_TRACKING": "off",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])),
        }
    )
    return env


def run_one(runner: str, pins: str, config: dict[str, Any], timeout_s: float = 600) -> dict[str, Any]:
    """One child under `runner` and pin set `pins`; its JSON row plus runner, pins and wall time
    (an `error` key instead when it failed)."""
    config = {**config, "mkldnn": PIN_SETS[pins][1]}
    command = [
        *runner_prefix(runner),
        sys.executable,
        str(Path(__file__).resolve()),
        "one",
        json.dumps(config),
    ]
    start = time.perf_counter()
    try:
        proc = subprocess.run(command, capture_output=True, text=True, env=child_env(pins), timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"runner": runner, "pins": pins, "error": f"timeout after {timeout_s:.0f} s"}
    wall = round(time.perf_counter() - start, 1)
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not rows:
        tail = [line for line in proc.stderr.splitlines() if line.strip()][-1:] or ["no output"]
        return {"runner": runner, "pins": pins, "wall_s": wall, "error": f"exit {proc.returncode}: {tail[0]}"}
    return {"runner": runner, "pins": pins, "wall_s": wall, **rows[-1]}


# ------------------------------------------------------------------------------------------ commands


def agreement(rows: list[dict[str, Any]], runners: list[str], pins: list[str]) -> dict[str, Any]:
    """Per pin set: the digest prefix of each runner, whether all agree, and the ops that differ."""
    summary: dict[str, Any] = {}
    for p in pins:
        got = {r["runner"]: r for r in rows if r["pins"] == p and "digest" in r}
        digests = {r: got[r]["digest"][:12] for r in runners if r in got}
        groups: dict[str, list[str]] = {}
        for r, d in digests.items():
            groups.setdefault(d, []).append(r)
        differing_ops = sorted(
            {
                op
                for r in got.values()
                for op, d in r.get("ops", {}).items()
                if len({g.get("ops", {}).get(op) for g in got.values()}) > 1
            }
        )
        summary[p] = {
            "digests": digests,
            "all_agree": len(groups) == 1 and len(digests) == len(runners),
            "groups": list(groups.values()),
            "differing_ops": differing_ops,
        }
    return summary


def cmd_agree(args: argparse.Namespace) -> None:
    config = {"workload": args.workload, "deterministic": args.deterministic, "ops": True}
    if args.workload.startswith("smoke:"):
        config.update({"steps": args.smoke_steps, "batch": args.smoke_batch, "size": args.smoke_size})
    rows = []
    for p in args.pins:
        for r in args.runners:
            row = run_one(r, p, config, args.timeout)
            rows.append(row)
            shown = row.get("digest", row.get("error", "?"))[:60]
            print(
                f"{p:22s} {r:16s} {row.get('capability', '-'):8s} {shown}  {row.get('wall_s', '-')} s",
                flush=True,
            )
    summary = agreement(rows, args.runners, args.pins)
    print(f"\n{'pin set':22s} " + " ".join(f"{r:>14s}" for r in args.runners) + "  agree  differing ops")
    for p, s in summary.items():
        cells = " ".join(f"{s['digests'].get(r, 'error'):>14s}" for r in args.runners)
        print(
            f"{p:22s} {cells}  {'yes' if s['all_agree'] else 'no ':5s}  {','.join(s['differing_ops']) or '-'}"
        )
    out = (
        OUT
        / f"bench_numerics_agree_{args.workload.replace(':', '_')}{'_det' if args.deterministic else ''}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": config, "rows": rows, "summary": summary}, indent=1))
    print(f"wrote {out}")


def cmd_cost(args: argparse.Namespace) -> None:
    rows = []
    for round_ in range(args.rounds):
        for job in args.jobs:
            for p in args.pins:
                config = {
                    "workload": "time",
                    "job": job,
                    "steps": args.steps,
                    "warmup": args.warmup,
                    "batch": args.batch,
                    "size": args.size,
                }
                row = run_one("native", p, config, args.timeout)
                row.update({"job": job, "round": round_, "loadavg_1m": round(os.getloadavg()[0], 2)})
                rows.append(row)
                print(
                    f"round {round_} {job:14s} {p:22s} wall {row.get('step_s_median', row.get('error'))}"
                    f" cpu {row.get('step_cpu_s_median')} load {row['loadavg_1m']}",
                    flush=True,
                )
                OUT.mkdir(parents=True, exist_ok=True)
                (OUT / "bench_numerics_cost_rows.json").write_text(json.dumps(rows, indent=1))
    print(f"\n{'pin set':22s} " + " ".join(f"{j + ' median cpu s':>24s} {'ratio':>6s}" for j in args.jobs))
    summary: dict[str, Any] = {}
    for p in args.pins:
        cells = []
        for job in args.jobs:
            # median over every timed step of every round; thread CPU time (robust to other load)
            steps = [t for r in rows if r["pins"] == p and r["job"] == job for t in r.get("step_cpu_s", [])]
            base = [
                t for r in rows if r["pins"] == "none" and r["job"] == job for t in r.get("step_cpu_s", [])
            ]
            wall = [t for r in rows if r["pins"] == p and r["job"] == job for t in r.get("step_s", [])]
            med = statistics.median(steps) if steps else float("nan")
            ratio = med / statistics.median(base) if base and steps else float("nan")
            summary.setdefault(p, {})[job] = {
                "median_cpu_s": med,
                "ratio": ratio,
                "n_steps": len(steps),
                "median_wall_s": statistics.median(wall) if wall else float("nan"),
            }
            cells.append(f"{med:>24.4f} {ratio:>6.2f}")
        print(f"{p:22s} " + " ".join(cells))
    out = OUT / "bench_numerics_cost.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "rows": rows, "summary": summary}, indent=1, default=str))
    print(f"wrote {out}")


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "one":
        print(json.dumps(child(json.loads(sys.argv[2]))), flush=True)
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    agree = sub.add_parser("agree", help="digests per runner x pin set")
    agree.add_argument("--runners", nargs="+", default=["native", "Haswell", "Skylake-Client", "EPYC-Rome"])
    agree.add_argument("--pins", nargs="+", default=list(PIN_SETS), choices=list(PIN_SETS))
    agree.add_argument("--workload", default="small", help="small, or smoke:<job>")
    agree.add_argument("--smoke-steps", type=int, default=2)
    agree.add_argument("--smoke-batch", type=int, default=2)
    agree.add_argument("--smoke-size", type=int, nargs=2, default=[64, 64])
    agree.add_argument(
        "--deterministic", action="store_true", help="torch.use_deterministic_algorithms(True)"
    )
    agree.add_argument("--timeout", type=float, default=300)
    cost = sub.add_parser("cost", help="native step time per pin set")
    cost.add_argument("--jobs", nargs="+", default=["stl_semseg", "polymax_depth"])
    cost.add_argument("--pins", nargs="+", default=list(PIN_SETS), choices=list(PIN_SETS))
    cost.add_argument("--rounds", type=int, default=3)
    cost.add_argument("--steps", type=int, default=5)
    cost.add_argument("--warmup", type=int, default=2)
    cost.add_argument("--batch", type=int, default=8)
    cost.add_argument("--size", type=int, nargs=2, default=[96, 128])
    cost.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()
    if "none" not in args.pins and args.command == "cost":
        args.pins = ["none", *args.pins]
    {"agree": cmd_agree, "cost": cmd_cost}[args.command](args)


if __name__ == "__main__":
    main()

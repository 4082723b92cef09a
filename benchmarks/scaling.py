"""Scaling of hardneg's training step: run on an idle machine, paste the tables into docs/scaling.md.

Sections (``--section``, default all):

- ``loss``: forward + backward time of the InfoNCE kernel (UCL layout, d = 128) for 2B from 1,024 to
  65,536 anchors, and the log-log slope of time against 2B (2 for an O(B²) loss);
- ``ddp``: one training step of the small CNN on the same global batch with 1 and with 2 processes
  (gloo on CPU, NCCL when CUDA is available): time per step, and the communication share — the time
  of the step's collectives (gathering the embeddings, the gradient all-reduce, the loss's scalars)
  timed on their own with the same tensors, over the step time;
- ``gradcache``: the trainer's step (``TrainStep.forward_backward``) of the small CNN at batch 4,096
  (28×28 inputs) plain and with ``train.grad_cache`` chunks, each in a fresh process
  (`hardneg.bench.memory.run_worker`): peak memory (the worker's own peak RSS, ``VmHWM``, on CPU;
  ``torch.cuda.max_memory_allocated`` on GPU) and time per step.

Example::

    python benchmarks/scaling.py --section loss --max-2b 65536
    python benchmarks/scaling.py --section ddp --batch 512 --steps 5
    python benchmarks/scaling.py --section gradcache --batch 4096 --chunks 64,256 --steps 2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from hardneg import distributed as D
from hardneg.bench.memory import peak_rss_mb, run_worker, serve_worker
from hardneg.losses import weighted_info_nce
from hardneg.losses.candidates import two_view_index
from hardneg.models.encoders import build_model
from hardneg.negatives import from_config

DIM = 128


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------ loss
def loss_section(max_2b: int, repeats: int, device: str) -> dict:
    """Time of one forward + backward of the kernel at each 2B; the log-log slope."""
    rows = []
    two_b = 1024
    while two_b <= max_2b:
        B = two_b // 2
        g = torch.Generator().manual_seed(0)
        z = torch.randn(two_b, DIM, generator=g).to(device).requires_grad_(True)
        pos, self_idx = two_view_index(B, z.device)
        times = []
        for _ in range(repeats + 1):  # the first call warms up
            z.grad = None
            _sync()
            t0 = time.perf_counter()
            weighted_info_nce(z, z, t=0.5, pos_index=pos, self_index=self_idx).backward()
            _sync()
            times.append(time.perf_counter() - t0)
        rows.append({"2B": two_b, "seconds": float(np.median(times[1:]))})
        two_b *= 2
    x = np.log([r["2B"] for r in rows])
    y = np.log([r["seconds"] for r in rows])
    slope = float(np.polyfit(x, y, 1)[0]) if len(rows) > 1 else float("nan")
    return {"rows": rows, "loglog_slope": slope}


# ------------------------------------------------------------------------------------------ ddp
def _small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return build_model("cnn", (1, 28, 28), width=32, stem_stride=2, head_hidden=128, proj_dim=64)


def _ddp_worker(rank: int, world: int, port: int, batch: int, steps: int, out: str, threads: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(max(1, threads // world))  # the same cores, shared by the processes
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if world > 1:
        dist.init_process_group(backend, rank=rank, world_size=world)
    dev = torch.device(f"cuda:{rank}") if backend == "nccl" else torch.device("cpu")
    model = _small_cnn().to(dev)
    if world > 1:
        model = D.convert_batchnorm(model)
    net = D.wrap_model(model)
    loss_fn = D.DistributedStrategy(from_config({"name": "ucl"}))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    b = batch // world
    g = torch.Generator().manual_seed(1)
    x = torch.rand(batch, 1, 28, 28, generator=g)[rank * b : (rank + 1) * b].to(dev)
    ids = torch.arange(rank * b, (rank + 1) * b, device=dev)
    step_times, comm_times = [], []
    for _ in range(steps + 1):  # the first step warms up
        _sync()
        t0 = time.perf_counter()
        z1, z2 = net(torch.cat([x, x.flip(-1)])).chunk(2)
        loss = loss_fn(z1, z2, ids=ids)
        opt.zero_grad()
        loss.backward()
        D.loss_value(loss)
        opt.step()
        _sync()
        step_times.append(time.perf_counter() - t0)
        if world > 1:  # the same collectives alone: gather z1, z2 and ids, all-reduce the gradients
            flat = torch.cat([p.grad.flatten() for p in model.parameters()])
            _sync()
            t0 = time.perf_counter()
            D.gather(z1.detach())
            D.gather(z2.detach())
            D.gather_tags(ids)
            dist.all_reduce(flat)
            D.mean_over_processes(1.0)
            D.loss_value(loss)
            _sync()
            comm_times.append(time.perf_counter() - t0)
    if rank == 0:
        res = {"world": world, "batch": batch, "seconds_per_step": float(np.median(step_times[1:]))}
        if comm_times:
            res["communication_share"] = float(np.median(comm_times[1:])) / res["seconds_per_step"]
        with open(out, "w") as f:
            json.dump(res, f)
    if world > 1:
        dist.destroy_process_group()


def ddp_section(batch: int, steps: int, tmp: str) -> dict:
    from socket import socket

    threads = torch.get_num_threads()
    rows = []
    for world in (1, 2):
        out = os.path.join(tmp, f"ddp{world}.json")
        with socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if world == 1:
            _ddp_worker(0, 1, port, batch, steps, out, threads)
        else:
            mp.spawn(_ddp_worker, args=(world, port, batch, steps, out, threads), nprocs=world, join=True)
        torch.set_num_threads(threads)
        with open(out) as f:
            rows.append(json.load(f))
    rows[1]["ratio_to_one_process"] = rows[1]["seconds_per_step"] / rows[0]["seconds_per_step"]
    return {"rows": rows}


# ------------------------------------------------------------------------------------------ gradcache
def gradcache_one(spec: dict) -> dict:
    """The worker (`serve_worker`), in a fresh process: the trainer's step at ``spec["batch"]`` with
    ``spec["threads"]`` threads (plain when ``spec["chunk"]`` is None)."""
    import tempfile

    from hardneg.train.config import validate_config
    from hardneg.train.trainer import Trainer

    batch, chunk, steps = spec["batch"], spec["chunk"], spec["steps"]
    torch.set_num_threads(spec["threads"])
    raw = {
        "model": {"encoder": "cnn", "width": 32, "stem_stride": 2, "head_hidden": 128, "proj_dim": 64},
        "loss": {"name": "ucl", "params": {"t": 0.5}},
        "train": {"epochs": 1, "batch_size": batch, "progress": False},
        "eval": {"linear_probe": False},
    }
    if chunk:
        raw["train"]["grad_cache"] = {"chunk": chunk}
    g = torch.Generator().manual_seed(0)
    X, y = torch.rand(batch, 1, 28, 28, generator=g), torch.randint(0, 10, (batch,), generator=g)
    with tempfile.TemporaryDirectory() as d:
        tr = Trainer(validate_config(raw), os.path.join(d, "run"), train_data=(X, y), test_data=(X[:64], y[:64]))
        cuda = torch.cuda.is_available()
        if cuda:
            tr.model.cuda()
            tr.data.X = tr.data.X.cuda()
            torch.cuda.reset_peak_memory_stats()
        before = peak_rss_mb()
        idx = torch.arange(batch)
        times = []
        for _ in range(steps):
            _sync()
            t0 = time.perf_counter()
            tr.train_step.forward_backward(*tr.data.batch(idx), step=0)
            _sync()
            times.append(time.perf_counter() - t0)
        peak = peak_rss_mb()
    res = {
        "batch": batch,
        "chunk": chunk,
        "threads": torch.get_num_threads(),
        "seconds_per_step": float(np.median(times)),
        "peak_rss_mib": round(peak, 1),
        "peak_rss_above_start_mib": round(peak - before, 1),
    }
    if torch.cuda.is_available():
        res["cuda_peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return res


def gradcache_section(batch: int, chunks: list[int], steps: int) -> dict:
    """The plain step and each chunk size, every one in its own worker process (`run_worker`)."""
    threads = torch.get_num_threads()
    rows = [run_worker(__file__, {"batch": batch, "chunk": chunk, "steps": steps, "threads": threads})
            for chunk in [None, *chunks]]
    plain = rows[0]["seconds_per_step"]
    for r in rows[1:]:
        r["time_overhead"] = r["seconds_per_step"] / plain - 1
    return {"rows": rows}


# ------------------------------------------------------------------------------------------ main
def _table(rows: list[dict]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    head = "| " + " | ".join(keys) + " |\n|" + "---|" * len(keys) + "\n"

    def fmt(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.4g}" if math.isfinite(v) else "—"
        return "—" if v is None else str(v)

    return head + "\n".join("| " + " | ".join(fmt(r.get(k)) for k in keys) + " |" for r in rows)


def main(argv: list[str] | None = None) -> None:
    if serve_worker(gradcache_one, argv):
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--section", choices=["loss", "ddp", "gradcache", "all"], default="all")
    ap.add_argument("--max-2b", type=int, default=65536)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=None, help="ddp: 512, gradcache: 4096 by default")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--chunks", default="64,256")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    import tempfile

    device = "cuda" if torch.cuda.is_available() else "cpu"
    res: dict = {"device": device, "threads": torch.get_num_threads()}
    if a.section in ("loss", "all"):
        res["loss"] = loss_section(a.max_2b, a.repeats, device)
    if a.section in ("ddp", "all"):
        with tempfile.TemporaryDirectory() as tmp:
            res["ddp"] = ddp_section(a.batch or 512, a.steps, tmp)
    if a.section in ("gradcache", "all"):
        res["gradcache"] = gradcache_section(a.batch or 4096, [int(c) for c in a.chunks.split(",")], a.steps)
    if a.json:
        print(json.dumps(res, indent=1))
        return
    print(f"device {res['device']}, {res['threads']} threads")
    for name in ("loss", "ddp", "gradcache"):
        if name in res:
            print(f"\n## {name}\n\n{_table(res[name]['rows'])}")
            if name == "loss":
                print(f"\nlog-log slope of time against 2B: {res['loss']['loglog_slope']:.2f}")


if __name__ == "__main__":
    main()

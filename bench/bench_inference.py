"""Synthesis inference efficiency: GFLOP/s of a model's whole-volume prediction against
the machine's float32 matmul rate, measured in the same process with the same threads.

Usage: python bench/bench_inference.py [--threads 1 2] [--batch-sizes 8 32 128]
       [--channels-last] [--compile] [--diffusion] [--repeats 3] [--json out.json]

Input: the 2 mm MNI152NLin2009aSym T1w template scaled to [0, 1] (the default model's
grid; the time does not depend on the image). The model: the shipped default weights
(``synthesis.weights.default_weights``) through ``predict_with_config``, i.e. exactly
the inference path of a participant run (slicing, in-plane crop, batches, stitching).
FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` over one whole prediction
(convolutions and matmuls; normalisation, padding and activations count 0).

Peak: the best of ``--repeats`` runs of four 2048 x 2048 float32 matmuls, measured
before and after the model runs (the larger is used). Rates are given twice: per wall
second, and per CPU second of the process (user + system, all threads). On a shared
machine the wall rates of both drift with the load; the CPU-second rates are the
load-robust comparison (each is the work done per core-second the process got).

Variants (each checked against the default output: max |difference|): ``batch_size``
(slices per forward pass), channels-last memory format, ``torch.compile`` (inductor,
needs a C++ compiler, no network). ``--diffusion``: the same for the untrained
``ddpm3d`` and ``syndiff`` generators with registry defaults (patches; all reverse
steps counted).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from pet_synth_app.preproc.templates import get_template
from pet_synth_app.synthesis.inference import DEFAULT_BATCH_SIZE, predict_with_config
from pet_synth_app.synthesis.weights import default_weights, load_generator


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def best_of(fn, repeats: int) -> tuple[float, float, object]:
    """(best wall s, best CPU s, last result) of ``repeats`` calls."""
    wall = cpu = float("inf")
    out = None
    for _ in range(repeats):
        c0, t0 = _cpu(), time.perf_counter()
        out = fn()
        wall = min(wall, time.perf_counter() - t0)
        cpu = min(cpu, _cpu() - c0)
    return wall, cpu, out


def matmul_peak(repeats: int, n: int = 2048, k: int = 4) -> tuple[float, float]:
    """(GFLOP/s per wall s, per CPU s) of ``k`` float32 ``n x n`` matmuls, best run."""
    a, b = torch.rand(n, n), torch.rand(n, n)
    a @ b
    wall, cpu, _ = best_of(lambda: [a @ b for _ in range(k)], repeats)
    flop = k * 2 * n**3 / 1e9
    return flop / wall, flop / max(cpu, 1e-9)


def t1w_input() -> np.ndarray:
    t1 = np.asanyarray(get_template("T1w", 2).dataobj, dtype=np.float32)
    return np.clip(t1 / np.percentile(t1[t1 > 0], 99.5), 0, 1)


def count_gflop(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def measure(name, gen, config, x, ref, gflop, repeats, peak, **kw) -> dict:
    wall, cpu, out = best_of(lambda: predict_with_config(x, gen, config, **kw), repeats)
    row = {
        "variant": name,
        "seconds": round(wall, 3),
        "cpu_seconds": round(cpu, 3),
        "gflop": round(gflop, 2),
        "gflops_wall": round(gflop / wall, 1),
        "gflops_per_cpu_s": round(gflop / cpu, 1),
        "pct_peak_wall": round(100 * gflop / wall / peak[0], 1),
        "pct_peak_cpu": round(100 * gflop / cpu / peak[1], 1),
        "max_abs_diff": float(np.abs(out - ref).max()) if ref is not None else 0.0,
    }
    print(json.dumps(row), flush=True)
    return row


def run_default(opts, x) -> list[dict]:
    gen, card = load_generator(default_weights())
    config = card["config"]
    ref = predict_with_config(x, gen, config)
    gflop = count_gflop(lambda: predict_with_config(x, gen, config))
    peak = matmul_peak(opts.repeats)
    rows = []
    for bs in opts.batch_sizes:
        rows.append(
            measure(f"batch {bs}", gen, config, x, ref, gflop, opts.repeats, peak, batch_size=bs)
        )
    if opts.channels_last:
        gen_cl = gen.to(memory_format=torch.channels_last)
        rows.append(
            measure(
                f"channels_last, batch {DEFAULT_BATCH_SIZE}",
                gen_cl,
                config,
                x,
                ref,
                gflop,
                opts.repeats,
                peak,
            )
        )
        gen = gen.to(memory_format=torch.contiguous_format)
    if opts.compile:
        t0 = time.perf_counter()
        try:
            compiled = torch.compile(gen, dynamic=False)
            predict_with_config(x, compiled, config)  # compiles
            seconds = time.perf_counter() - t0
            row = measure(
                f"torch.compile, batch {DEFAULT_BATCH_SIZE}",
                compiled,
                config,
                x,
                ref,
                gflop,
                opts.repeats,
                peak,
            )
            row["compile_seconds"] = round(seconds, 1)
            rows.append(row)
        except Exception as exc:  # report, do not stop the benchmark
            first = (str(exc).splitlines() or [repr(exc)])[0][:200]
            rows.append({"variant": "torch.compile", "error": first})
            print(json.dumps(rows[-1]), flush=True)
    after = matmul_peak(opts.repeats)
    peak_used = (max(peak[0], after[0]), max(peak[1], after[1]))
    for row in rows:  # against the better of the two peak measurements
        if "seconds" in row:
            row["pct_peak_wall"] = round(100 * row["gflops_wall"] / peak_used[0], 1)
            row["pct_peak_cpu"] = round(100 * row["gflops_per_cpu_s"] / peak_used[1], 1)
    return [
        {
            "model": card["model"],
            "ngf": config.get("ngf"),
            "matmul_gflops_wall": [round(peak[0], 1), round(after[0], 1)],
            "matmul_gflops_per_cpu_s": [round(peak[1], 1), round(after[1], 1)],
        },
        *rows,
    ]


def run_diffusion(opts, x) -> list[dict]:
    from pet_synth_app.synthesis.registry import build_model, model_config

    out = []
    for name in ("ddpm3d", "syndiff"):
        config = model_config(name)
        gen = build_model(name, config).generator.eval()
        torch.manual_seed(0)
        gflop = count_gflop(lambda g=gen, c=config: predict_with_config(x, g, c))
        peak = matmul_peak(opts.repeats)
        row = measure(name, gen, config, x, None, gflop, 1, peak)
        row["matmul_gflops_wall"] = round(peak[0], 1)
        row["matmul_gflops_per_cpu_s"] = round(peak[1], 1)
        out.append(row)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[DEFAULT_BATCH_SIZE, 32, 128])
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--diffusion", action="store_true")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None)
    opts = p.parse_args(argv)
    x = t1w_input()
    results = {"loadavg_before": os.getloadavg(), "runs": []}
    with torch.inference_mode():
        for threads in opts.threads:
            torch.set_num_threads(threads)
            print(f"== {threads} thread(s)", flush=True)
            run = {"threads": threads, "default": run_default(opts, x)}
            if opts.diffusion:
                run["diffusion"] = run_diffusion(opts, x)
            results["runs"].append(run)
    results["loadavg_after"] = os.getloadavg()
    print(json.dumps({k: results[k] for k in ("loadavg_before", "loadavg_after")}))
    if opts.json:
        with open(opts.json, "w") as fh:
            json.dump(results, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

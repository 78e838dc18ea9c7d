"""Sampling time of the diffusion models per participant against the number of reverse
steps (issue 15).

Usage: python bench/bench_diffusion_sampling.py DERIV SUBJECT --model ddpm3d
       --steps 1 2 5 10 [--keep 32] [--threads 2] [--weights W]

Builds the participant's "affine" model input (``synthesis.inputs``) once, then for each
step count runs one sample of an untrained model with the registry defaults (the time
does not depend on the weights) through ``predict_with_config`` (the patch tiling of
inference). Prints wall seconds, CPU seconds of the process (user + system: on a shared
machine, ``cpu / threads`` estimates the wall time the same work takes on idle cores),
the number of patches run and the peak RSS. ``--weights`` times a trained model instead
(its card's config and input representation, with its priors if it has them; ``--model``
and ``--keep`` are then ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import torch

from pet_synth_app.synthesis.ddpm3d import set_sample_steps
from pet_synth_app.synthesis.inference import predict_with_config
from pet_synth_app.synthesis.inputs import (
    build_model_input,
    card_representation,
    sources_from_derivatives,
)
from pet_synth_app.synthesis.registry import build_model, model_config
from pet_synth_app.synthesis.weights import load_generator


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("deriv", type=Path)
    p.add_argument("subject")
    p.add_argument("--model", choices=["ddpm3d", "syndiff"], default="ddpm3d")
    p.add_argument("--steps", type=int, nargs="+", default=[1, 2, 5, 10])
    p.add_argument("--keep", type=int, default=None, help="patch_keep (default: registry)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--weights", type=Path, default=None, help="a trained diffusion model")
    opts = p.parse_args(argv)
    torch.set_num_threads(opts.threads)
    sources = sources_from_derivatives(opts.deriv, opts.subject)
    if opts.weights is not None:
        gen, card = load_generator(opts.weights)
        config, opts.model = card["config"], card["model"]
        model_input = build_model_input(card_representation(card), sources)
    else:
        model_input = build_model_input("affine", sources)
        config = model_config(opts.model, patch_keep=opts.keep)
        gen = build_model(opts.model, config).generator.eval()
    for steps in opts.steps:
        set_sample_steps(gen, steps)
        gen.eval()
        calls = []
        forward = gen.forward

        def counted(x, _f=forward, _c=calls):
            _c.append(len(x))
            return _f(x)

        gen.forward = counted
        t0, c0 = time.perf_counter(), os.times()
        predict_with_config(model_input.channels[0], gen, config)
        c1 = os.times()
        gen.forward = forward
        row = {
            "model": opts.model,
            "patch_keep": int(config["patch_keep"]),
            "steps": steps,
            "patches": sum(calls),
            "wall_s": round(time.perf_counter() - t0, 1),
            "cpu_s": round((c1.user - c0.user) + (c1.system - c0.system), 1),
            "threads": opts.threads,
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
            "loadavg_1min": os.getloadavg()[0],
        }
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark the batched voxelwise one-class SVM (analysis.ocsvm) against scikit-learn.

Usage: python bench/bench_ocsvm.py [--quick] [--threads 2] [--json out.json]

1. Agreement: decision values of ``fit_batched`` + ``decision_batched`` on new samples vs
   ``sklearn.svm.OneClassSVM`` (run to tol=1e-8, and at its default tol=1e-3) on random
   problems (n in {10, 20, 75}, d in {64, 2}, nu in {0.1, 0.5}, gamma "scale" or a number):
   max |difference|, correlation, max |sum alpha - nu n|.
2. Speed and memory of ``fit_batched``: V = 30000 problems of n = 20, and V = 20000 of
   n = 75 controls, d = 64, extrapolated linearly to 200k voxels (1 mm grey matter) x 75
   controls. Each case runs in a fresh process; peak RSS (``ru_maxrss``) is reported with
   and without the input array. Two kinds of data: i.i.d. Gaussian clouds, and
   "structured" latents (a voxel pattern + variation along 4 directions + small noise,
   closer to autoencoder codes and harder to solve).
3. scikit-learn per voxel (fit + decision of one sample) for a few hundred voxels, for
   comparison, extrapolated the same way.
4. Scoring one patient with a saved model, lazily loaded (``score``).
``--quick`` shrinks every size by ~10x (a smoke run, not for the numbers).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import tempfile
import time
import warnings

import numpy as np

FULL_VOXELS = 200_000


def make_latents(V: int, n: int, d: int, kind: str, seed: int) -> np.ndarray:
    """(V, n, d) float32 latent clouds: "iid" Gaussian or "structured" (low rank)."""
    rng = np.random.default_rng(seed)
    centre = rng.standard_normal((V, 1, d), dtype=np.float32) * 3
    if kind == "iid":
        return centre + rng.standard_normal((V, n, d), dtype=np.float32)
    basis = rng.standard_normal((V, 4, d), dtype=np.float32)
    coef = rng.standard_normal((V, n, 4), dtype=np.float32)
    X = centre + np.matmul(coef, basis)
    X += 0.1 * rng.standard_normal((V, n, d), dtype=np.float32)
    return X


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def _fit_case(V: int, n: int, d: int, kind: str, threads: int) -> dict:
    """One timing in a fresh process (clean peak RSS)."""
    from pet_synth_app.analysis.ocsvm import fit_batched

    base = _rss_mb()
    X = make_latents(V, n, d, kind, seed=V + n)
    with_data = _rss_mb()
    info: dict = {}
    start, cpu = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        alpha, _, _ = fit_batched(X, threads=threads, info=info)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak = _rss_mb()
    return {
        "V": V,
        "n": n,
        "d": d,
        "data": kind,
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu, 2),
        "ms_per_1000_voxels": round(1000 * seconds / V * 1000, 1),
        "extrapolated_200k_voxels_s": round(seconds * FULL_VOXELS / V, 1),
        "input_mb": round(X.nbytes / 2**20, 1),
        "peak_rss_mb": round(peak, 1),
        "peak_rss_above_input_mb": round(peak - with_data, 1),
        "baseline_rss_mb": round(base, 1),
        "iterations_max": info["iterations"],
        "unconverged": info["unconverged"],
        "problems_per_chunk": info["chunk"],
        "mean_support_vectors": round(float((alpha > 0).sum(1).mean()), 1),
    }


def run_isolated(fn, *args) -> dict:
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def agreement(V: int, threads: int) -> list[dict]:
    from sklearn.svm import OneClassSVM

    from pet_synth_app.analysis.ocsvm import decision_batched, fit_batched

    rows = []
    cases = [
        (10, 64, 0.1, "scale"),
        (20, 64, 0.1, "scale"),
        (75, 64, 0.1, "scale"),
        (75, 64, 0.5, "scale"),
        (75, 64, 0.5, 0.005),
        (20, 2, 0.1, "scale"),
        (75, 2, 0.1, "scale"),
        (75, 2, 0.5, 0.3),
    ]
    rng = np.random.default_rng(0)
    for n, d, nu, gamma in cases:
        for kind in ("iid", "structured") if d == 64 else ("iid",):
            X = make_latents(V, n, d, kind, seed=n + d)
            Z = X[:, :3] + rng.standard_normal((V, 3, d), dtype=np.float32) * X.std(1)[:, None]
            alpha, rho, g = fit_batched(X, nu=nu, gamma=gamma, threads=threads)
            ours = np.stack([decision_batched(alpha, rho, g, X, Z[:, j]) for j in range(3)], 1)
            tight, default = np.empty_like(ours), np.empty_like(ours)
            t_sk = 0.0
            for v in range(V):
                Xv = X[v].astype(np.float64)
                tight[v] = (
                    OneClassSVM(nu=nu, gamma=gamma, tol=1e-8).fit(Xv).decision_function(Z[v])
                )
                t0 = time.perf_counter()
                default[v] = OneClassSVM(nu=nu, gamma=gamma).fit(Xv).decision_function(Z[v])
                t_sk += time.perf_counter() - t0
            rows.append(
                {
                    "n": n,
                    "d": d,
                    "nu": nu,
                    "gamma": gamma,
                    "data": kind,
                    "V": V,
                    "max_abs_diff_vs_sklearn_tol1e-8": float(np.abs(ours - tight).max()),
                    "corr_vs_sklearn_tol1e-8": float(
                        np.corrcoef(ours.ravel(), tight.ravel())[0, 1]
                    ),
                    "max_abs_diff_sklearn_default_vs_tol1e-8": float(
                        np.abs(default - tight).max()
                    ),
                    "decision_value_range": float(np.ptp(tight)),
                    "max_abs_alpha_sum_error": float(np.abs(alpha.sum(1) - nu * n).max()),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def sklearn_speed(V: int, n: int, d: int) -> dict:
    from sklearn.svm import OneClassSVM

    X = make_latents(V, n, d, "structured", seed=1).astype(np.float64)
    start = time.perf_counter()
    for v in range(V):
        OneClassSVM(nu=0.1, gamma="scale").fit(X[v]).decision_function(X[v, :1])
    per = (time.perf_counter() - start) / V
    return {
        "V": V,
        "n": n,
        "d": d,
        "ms_per_voxel": round(1000 * per, 3),
        "extrapolated_200k_voxels_s": round(per * FULL_VOXELS, 1),
    }


def scoring(V: int, n: int, threads: int) -> dict:
    from pet_synth_app.analysis import ocsvm

    latents = make_latents(V, n, 64, "structured", seed=2).transpose(1, 0, 2)
    ijk = np.stack(np.unravel_index(np.arange(V), (100, 120, 100)), 1)
    start = time.perf_counter()
    model = ocsvm.fit_model(latents, ijk, (100, 120, 100), np.eye(4), threads=threads)
    fit_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        ocsvm.save_model(model, tmp)
        save_s = time.perf_counter() - start
        start = time.perf_counter()
        lazy = ocsvm.load_model(tmp)
        load_s = time.perf_counter() - start
        start = time.perf_counter()
        ocsvm.score_volume(lazy, latents[0], threads=threads)
        score_s = time.perf_counter() - start
        size = sum(p.stat().st_size for p in __import__("pathlib").Path(tmp).iterdir())
    return {
        "V": V,
        "n": n,
        "fit_model_s": round(fit_s, 2),
        "save_s": round(save_s, 2),
        "lazy_load_with_sha256_s": round(load_s, 2),
        "score_volume_s": round(score_s, 2),
        "model_mb": round(size / 2**20, 1),
        "max_support_vectors": int(model.sv.shape[1]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="~10x smaller sizes (smoke run)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)
    q = 10 if args.quick else 1
    results: dict = {"threads": args.threads, "quick": args.quick}
    print("== agreement with scikit-learn", flush=True)
    results["agreement"] = agreement(50 if args.quick else 200, args.threads)
    print("== fit_batched speed / memory", flush=True)
    results["fit_batched"] = []
    for V, n in ((30000 // q, 20), (20000 // q, 75)):
        for kind in ("iid", "structured"):
            row = run_isolated(_fit_case, V, n, 64, kind, args.threads)
            results["fit_batched"].append(row)
            print(json.dumps(row), flush=True)
    print("== scikit-learn per voxel", flush=True)
    results["sklearn"] = [sklearn_speed(300 // q, n, 64) for n in (20, 75)]
    for row in results["sklearn"]:
        print(json.dumps(row), flush=True)
    print("== fit_model / save / lazy load / score", flush=True)
    results["model"] = run_isolated(scoring, 20000 // q, 75, args.threads)
    print(json.dumps(results["model"]), flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

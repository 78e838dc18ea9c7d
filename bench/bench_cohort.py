"""Cohort-scale participant runs, measured as users run them (issue 19).

Usage::

    python bench/bench_cohort.py ROOT [--sizes 4 8 16] [--voxel-size 1.0] [--nprocs 2]
        [--opts "--sloppy"] [--rerun]

Simulates (once, in ROOT/bids) a phantom cohort at ``--voxel-size`` mm with a PET for every
participant, then for each size N runs ``petsynth ROOT/bids ROOT/out-N participant
--participant-label <first N> --nprocs 2 -w ROOT/work-N`` in a fresh output and work
folder, and reports:

* wall time of the run, per participant (wall / N) and when each participant's report
  appeared (s from the start; a report marks a finished participant);
* CPU use of both cores over the run: CPU seconds of the whole process tree (sampled
  from /proc every 0.25 s) / (wall x cores), and the share of 5 s windows in which the
  tree used less than half the cores;
* peak memory: the largest sum of the resident set sizes (RSS) of the process tree,
  sampled every 0.25 s, and the largest single process (``ru_maxrss``);
* a per-step profile from Nipype's result files: the 10 steps with the largest total
  time over all participants, and their share of the run's core-seconds (wall x cores);
* with ``--rerun``: the wall time of rerunning the first participant of the smallest run
  with the same output and work folders (everything cached);
* a linear fit of wall time against N and its projection to 100 participants.

Prints a Markdown table and writes ROOT/bench_cohort.json. Nothing is timed inside
pytest: this script is the measurement (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import pickle
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")


def tree(root: int) -> list[int]:
    """``root`` and all its live descendants (pids)."""
    from pet_synth_app.interrupt import descendants

    return [root, *descendants(root)]


def _rss_and_ticks(pid: int) -> tuple[int, int]:
    try:
        rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return rss, int(fields[11]) + int(fields[12])  # utime + stime
    except (OSError, IndexError, ValueError):
        return 0, 0


class Monitor(threading.Thread):
    """Samples the process tree of ``pid``: the peak of its summed RSS (bytes) and its
    CPU ticks per window (to find stretches below half the cores)."""

    def __init__(self, pid: int, every_s: float = 0.25, window_s: float = 5.0) -> None:
        super().__init__(daemon=True)
        self.pid, self.every_s, self.window_s = pid, every_s, window_s
        self.peak_rss = 0
        self.ticks = 0  # CPU ticks of the tree (processes seen alive; the last <0.25 s of
        # a process that exits between two samples is missed)
        self.windows: list[float] = []  # cores busy per window (approximate)
        self.stop = threading.Event()

    def run(self) -> None:
        seen: dict[int, int] = {}
        window_start, window_ticks = time.monotonic(), 0
        while not self.stop.is_set():
            rss_total = 0
            for pid in tree(self.pid):
                rss, ticks = _rss_and_ticks(pid)
                rss_total += rss
                window_ticks += max(ticks - seen.get(pid, 0), 0)
                self.ticks += max(ticks - seen.get(pid, 0), 0)
                seen[pid] = ticks
            self.peak_rss = max(self.peak_rss, rss_total)
            now = time.monotonic()
            if now - window_start >= self.window_s:
                self.windows.append(window_ticks / TICK / (now - window_start))
                window_start, window_ticks = now, 0
            time.sleep(self.every_s)


def _duration(result: Path) -> float:
    try:
        with gzip.open(result, "rb") as fh:
            res = pickle.load(fh)  # our own Nipype work dir
    except Exception:  # noqa: BLE001 - a result of another graph version: not counted
        return 0.0
    return float(getattr(getattr(res, "runtime", None), "duration", 0.0) or 0.0)


def step_profile(work: Path) -> dict[str, float]:
    """Total run time (s) of each step over all participants, from Nipype's result files;
    a step is named ``<sub-workflow>.<node>`` without the participant."""
    totals: dict[str, float] = defaultdict(float)
    root = work / "petsynth_wf"
    for result in root.rglob("result_*.pklz"):
        parts = list(result.relative_to(root).parts[:-1])
        if parts and parts[0].startswith("single_subject_"):
            parts = parts[1:]
        parts = [p for p in parts if not p.startswith("mapflow")]
        parts = [p.split("_hypo")[-1] if p.endswith("_hypo") else p for p in parts]
        totals[".".join(parts[-2:])] += _duration(result)
    return dict(totals)


def simulate(bids: Path, n: int, voxel: float, seed: int) -> None:
    if (bids / "participants.tsv").is_file():
        return
    n_patients = max(1, n // 4)
    cmd = [
        sys.executable, "-m", "pet_synth_app.cli.simulate", str(bids),
        "--n-controls", str(n - n_patients), "--n-patients", str(n_patients),
        "--n-t1w-only", "0", "--voxel-size", str(voxel), "--seed", str(seed), "--quiet",
    ]  # fmt: skip
    print("+", shlex.join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def labels(bids: Path) -> list[str]:
    rows = (bids / "participants.tsv").read_text().splitlines()[1:]
    return [r.split("\t")[0].removeprefix("sub-") for r in rows if r.strip()]


def run_once(cmd: list[str], out: Path, subjects: list[str], env: dict) -> dict:
    """Run ``cmd``; wall (s), CPU (s), peak tree RSS, report times (s from start)."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    mon = Monitor(proc.pid)
    mon.start()
    finished: dict[str, float] = {}
    log_lines: list[str] = []

    def _reader() -> None:
        for raw in proc.stdout:  # type: ignore[union-attr]
            log_lines.append(raw.decode(errors="replace").rstrip())

    reader = threading.Thread(target=_reader, daemon=True)
    reader.start()
    while proc.poll() is None:
        for s in subjects:
            if s not in finished and (out / f"sub-{s}.html").is_file():
                finished[s] = time.monotonic() - start
        time.sleep(0.5)
    wall = time.monotonic() - start
    mon.stop.set()
    mon.join()
    reader.join()
    for s in subjects:
        if s not in finished and (out / f"sub-{s}.html").is_file():
            finished[s] = wall
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # getrusage misses the Nipype workers (children of the forkserver, never waited for
    # by this process): the CPU time is the sampled ticks of the tree
    cpu = mon.ticks / TICK
    if proc.returncode != 0:
        print("\n".join(log_lines[-40:]))
        raise SystemExit(f"petsynth exited {proc.returncode}")
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "peak_tree_rss_gb": mon.peak_rss / 1e9,
        "max_process_rss_gb": after.ru_maxrss * 1024 / 1e9,
        "low_cpu_windows": sum(w < 0.5 * (os.cpu_count() or 1) for w in mon.windows),
        "windows": len(mon.windows),
        "report_times_s": finished,
        "log_tail": log_lines[-5:],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", type=Path)
    p.add_argument("--sizes", type=int, nargs="+", default=[4, 8, 16])
    p.add_argument("--voxel-size", type=float, default=1.0)
    p.add_argument("--nprocs", type=int, default=2)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--opts", default="", help="extra petsynth participant options")
    p.add_argument("--rerun", action="store_true", help="time a rerun of a finished participant")
    p.add_argument("--keep", action="store_true", help="keep the output and work folders")
    a = p.parse_args(argv)
    root = a.root.absolute()
    bids = root / "bids"
    simulate(bids, max(a.sizes), a.voxel_size, a.seed)
    all_labels = labels(bids)
    cores = os.cpu_count() or 1
    env = dict(os.environ)
    node_bin = Path(__file__).resolve().parents[1] / ".ci" / "node" / "node_modules" / ".bin"
    if node_bin.is_dir():  # the official validator as CI installs it
        env["PATH"] = f"{node_bin}:{env['PATH']}"
    results = {
        "machine": f"{platform.machine()}, {cores} cores, "
        f"{os.sysconf('SC_PHYS_PAGES') * PAGE / 2**30:.0f} GiB",
        "load_before": os.getloadavg(),
        "voxel_size_mm": a.voxel_size,
        "runs": {},
    }
    for n in a.sizes:
        subjects = all_labels[:n]
        out, work = root / f"out-{n}", root / f"work-{n}"
        for d in (out, work):
            shutil.rmtree(d, ignore_errors=True)
        cmd = [
            sys.executable, "-m", "pet_synth_app.cli.run", str(bids), str(out), "participant",
            "--participant-label", *subjects, "--nprocs", str(a.nprocs), "-w", str(work),
            *shlex.split(a.opts),
        ]  # fmt: skip
        print(f"+ N={n}:", shlex.join(cmd), flush=True)
        res = run_once(cmd, out, subjects, env)
        res["load_after"] = os.getloadavg()
        prof = step_profile(work)
        core_s = res["wall_s"] * min(a.nprocs, cores)
        res["steps_top10"] = [
            {"step": k, "total_s": v, "share": v / core_s}
            for k, v in sorted(prof.items(), key=lambda kv: -kv[1])[:10]
        ]
        res["steps_total_s"] = sum(prof.values())
        if a.rerun and n == min(a.sizes):
            rcmd = [*cmd]
            i = rcmd.index("--participant-label")
            rcmd[i + 1 : i + 1 + n] = [subjects[0]]
            rerun = run_once(rcmd, out, subjects[:1], env)
            res["rerun_one_s"] = rerun["wall_s"]
        results["runs"][str(n)] = res
        print(
            f"  N={n}: {res['wall_s']:.0f} s ({res['wall_s'] / n:.0f} s/participant), "
            f"CPU {res['cpu_s'] / (res['wall_s'] * cores):.0%} of {cores} cores, "
            f"peak tree RSS {res['peak_tree_rss_gb']:.2f} GB"
            + (f", rerun of one {res['rerun_one_s']:.1f} s" if "rerun_one_s" in res else ""),
            flush=True,
        )
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
        (root / "bench_cohort.json").write_text(json.dumps(results, indent=1))
    report(results, cores)
    return 0


def report(results: dict, cores: int) -> None:
    runs = results["runs"]
    print(f"\nmachine: {results['machine']}; load before {results['load_before']}")
    print(
        "| N | wall | per participant | CPU busy (both cores) | windows < 50 % | "
        "peak RSS (tree) | largest process | first / last report |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for n, r in runs.items():
        times = sorted(r["report_times_s"].values())
        first_last = f"{times[0]:.0f} s / {times[-1]:.0f} s" if times else "-"
        print(
            f"| {n} | {r['wall_s'] / 60:.1f} min | {r['wall_s'] / int(n):.0f} s | "
            f"{r['cpu_s'] / (r['wall_s'] * cores):.0%} | {r['low_cpu_windows']}/{r['windows']} | "
            f"{r['peak_tree_rss_gb']:.2f} GB | {r['max_process_rss_gb']:.2f} GB | {first_last} |"
        )
    if len(runs) >= 2:
        ns = [int(n) for n in runs]
        ws = [runs[n]["wall_s"] for n in runs]
        mean_n, mean_w = sum(ns) / len(ns), sum(ws) / len(ws)
        slope = sum((x - mean_n) * (y - mean_w) for x, y in zip(ns, ws, strict=True)) / sum(
            (x - mean_n) ** 2 for x in ns
        )
        icpt = mean_w - slope * mean_n
        print(
            f"\nlinear fit: {icpt:.0f} s + {slope:.0f} s x N; 100 participants: "
            f"{(icpt + 100 * slope) / 3600:.1f} h; "
            f"ratio largest/smallest N: {ws[-1] / ws[0]:.2f} for {ns[-1] / ns[0]:.0f}x N"
        )
    last = runs[list(runs)[-1]]
    print(f"\nsteps of N={list(runs)[-1]} (total {last['steps_total_s']:.0f} s of step time):")
    print("| step | total | share of core-seconds |")
    print("|---|---|---|")
    for row in last["steps_top10"]:
        print(f"| {row['step']} | {row['total_s']:.0f} s | {row['share']:.1%} |")


if __name__ == "__main__":
    sys.exit(main())

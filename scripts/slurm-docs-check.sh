#!/usr/bin/env bash
# Run the SLURM layouts of docs/hpc.md as written there, on a cluster such as the one
# scripts/slurm-local.sh starts, with a native installation of PetSynth instead of Apptainer.
#
#   scripts/slurm-docs-check.sh array  RUNDIR BIDS   # participant array -> group -> array
#   scripts/slurm-docs-check.sh plugin RUNDIR BIDS   # --use-plugin with Nipype's SLURM plugin
#
# The job scripts, the submission commands and slurm.yml are cut out of docs/hpc.md and
# changed only in these ways (printed before submitting):
#   - the data paths (/data/bids, /data/out, /scratch/$USER/petsynth-work) point into RUNDIR
#     and at BIDS;
#   - `apptainer run ... "$SIF" /bids /out` becomes `petsynth "$BIDS" "$OUT"` and
#     /work-host becomes "$WORK" (no Apptainer here: `petsynth` of the current PATH, as
#     docs/hpc.md says for clusters without Apptainer);
#   - #SBATCH --cpus-per-task is capped at the CPUs of the node (CPUS, default: nproc);
#   - EXTRA_OPTS (e.g. "--sloppy --random-seed 1") is appended to every petsynth call.
# Outputs: RUNDIR/out, work dirs RUNDIR/work, job logs RUNDIR/logs. Prints the wall time of
# each stage and of each job. DRY=1: only write and print the adapted files.
set -euo pipefail

MODE=${1:?array or plugin}
RUN=$(mkdir -p "${2:?RUNDIR}" && cd "$2" && pwd)
BIDS=$(cd "${3:?BIDS}" && pwd)
DOC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/docs/hpc.md
CPUS=${CPUS:-$(nproc)}
EXTRA_OPTS=${EXTRA_OPTS:-}
command -v petsynth >/dev/null || { echo "petsynth is not on PATH" >&2; exit 1; }

block() {  # the first fenced block after the first line of docs/hpc.md containing $1
    python3 - "$DOC" "$1" <<'PY'
import sys

lines = open(sys.argv[1]).read().splitlines()
start = next(i for i, line in enumerate(lines) if sys.argv[2] in line)
i = next(i for i in range(start, len(lines)) if lines[i].startswith("```"))
j = next(k for k in range(i + 1, len(lines)) if lines[k].startswith("```"))
print("\n".join(lines[i + 1 : j]))
PY
}

adapt() {  # docs text on stdin -> the native version for RUN/BIDS
    python3 -c '
import re, sys
text = sys.stdin.read().replace("\\\n", "")
run, bids, cpus, extra = sys.argv[1:5]
text = text.replace("/data/bids", bids).replace("/data/out", run + "/out")
text = text.replace("/scratch/$USER/petsynth-work", run + "/work")
text = re.sub(r"apptainer run .*?\"\$SIF\" /bids /out", "petsynth \"$BIDS\" \"$OUT\"", text)
text = text.replace("/work-host", "$WORK")
text = re.sub(r"--cpus-per-task=(\d+)", lambda m: "--cpus-per-task=%d" % min(int(m.group(1)), int(cpus)), text)
if extra:
    text = re.sub(r"^(\s*petsynth .*)$", lambda m: m.group(1) + " " + extra, text, flags=re.M)
print(re.sub(r"  +", " ", text))
' "$RUN" "$BIDS" "$CPUS" "$EXTRA_OPTS"
}

job_times() {  # JOBID...: one line per job (array tasks included) with its wall time
    for j in "$@"; do
        scontrol show job "$j" -o 2>/dev/null | python3 -c '
import sys
from datetime import datetime
for line in sys.stdin:
    f = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
    t = lambda k: datetime.fromisoformat(f[k])
    task = f.get("ArrayTaskId")
    name = f["JobName"] + (f"[{task}]" if task else "")
    print(f"  job {f[\"JobId\"]:>5} {name:<28} {f[\"JobState\"]:<10} exit {f[\"ExitCode\"]:<5}"
          f" {(t(\"EndTime\") - t(\"StartTime\")).total_seconds():5.0f} s  ({f[\"StartTime\"]} .. {f[\"EndTime\"]})")
'
    done
}

wait_jobs() {  # JOBID...: until none of them (array tasks included) is pending or running
    local ids
    ids=$(echo "$@" | tr ' ' ',')
    while [ -n "$(squeue -h -j "$ids" -o %i 2>/dev/null)" ]; do sleep 5; done
}

cd "$RUN"
rm -rf out work logs && mkdir -p out work logs
t0=$(date +%s)
case "$MODE" in
    array)
        block '`participant.sbatch`' | adapt > participant.sbatch
        block '`group.sbatch`' | adapt > group.sbatch
        block 'Submit the four stages' | adapt > submit.sh
        for f in participant.sbatch group.sbatch submit.sh; do echo "== $f"; cat "$f"; done
        [ "${DRY:-0}" = 1 ] && exit 0
        # submit.sh is the docs' submission block; print the job ids it made
        echo 'echo "jobs: $j1 $j2 $j3 $j4"' >> submit.sh
        ids=$(bash submit.sh | sed -n 's/^jobs: //p')
        echo "submitted: $ids"
        # shellcheck disable=SC2086
        wait_jobs $ids
        echo "all jobs done: $(( $(date +%s) - t0 )) s"
        # shellcheck disable=SC2086
        job_times $ids
        ;;
    plugin)
        sed -n '/^# slurm.yml/,/^```/p' "$DOC" | sed '$d' > slurm.yml
        python3 - "$DOC" > plugin.docs <<'PY'
import sys

lines = open(sys.argv[1]).read().splitlines()
start = next(i for i, line in enumerate(lines) if line.startswith("# slurm.yml"))
i = next(i for i in range(start + 2, len(lines)) if lines[i].startswith("```bash"))
j = next(k for k in range(i + 1, len(lines)) if lines[k].startswith("```"))
print("\n".join(lines[i + 1 : j]))
PY
        adapt < plugin.docs > plugin.sh
        # Nipype's SLURM plugin names its jobs after $LOGNAME (KeyError if unset), see hpc.md
        export LOGNAME=${LOGNAME:-$(id -un)}
        for f in slurm.yml plugin.sh; do echo "== $f"; cat "$f"; done
        [ "${DRY:-0}" = 1 ] && exit 0
        s=$(date +%s)
        # the memory each step job asked for (sampled from the queue while the pass runs)
        (while true; do squeue -h -o '%m' 2>/dev/null; sleep 2; done) > logs/plugin-mem.txt &
        sampler=$!
        bash plugin.sh > logs/plugin-participant-1.log 2>&1
        kill "$sampler" 2>/dev/null || true
        echo "participant (plugin, first pass): $(( $(date +%s) - s )) s"
        echo "memory requested by the step jobs: $(sort -u logs/plugin-mem.txt | tr '\n' ' ')"
        s=$(date +%s)
        # shellcheck disable=SC2086
        petsynth "$BIDS" out group -w work/group --omp-nthreads "$CPUS" $EXTRA_OPTS \
            > logs/plugin-group.log 2>&1
        echo "group (local process): $(( $(date +%s) - s )) s"
        s=$(date +%s)
        bash plugin.sh > logs/plugin-participant-2.log 2>&1
        echo "participant (plugin, second pass): $(( $(date +%s) - s )) s"
        # shellcheck disable=SC2086
        petsynth "$BIDS" out group --reports-only > logs/plugin-group-report.log 2>&1
        echo "group report: $(ls out/group/report.html)"
        echo "jobs submitted by the plugin: $(grep -c . "$(scontrol show config | sed -n 's/^JobCompLoc *= //p')" || true) in the job completion log (all jobs so far)"
        ;;
    *) echo "usage: $0 array|plugin RUNDIR BIDS" >&2; exit 2 ;;
esac
echo "total: $(( $(date +%s) - t0 )) s"

"""Agreement of the OC-SVM detector's float32 and bfloat16 encodings (issue 19).

Usage: python bench/bench_encode_precision.py CACHE RESOLUTION OUT

CACHE is a ``bench_groupfit.py make`` folder (controls and a held-out phantom, SUVR in
MNI). The detector is fitted twice with the same autoencoder seed, once encoding in
float32 and once in bfloat16 (``analysis.siamese.ENCODE_PRECISION``), and the held-out
PET is scored by both; prints each fit's phase times and the agreement of the two
decision and standardized maps (Pearson r, max |difference|, voxels below -1.65).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from pet_synth_app.analysis import anomaly
from pet_synth_app.config import OCSVM_GAMMA, OCSVM_NU, SIAMESE_EPOCHS
from pet_synth_app.preproc.templates import get_template


def main(cache: Path, resolution: int, out: Path) -> dict:
    names = json.loads((cache / "names.json").read_text())
    pets = [np.load(cache / f"{n}_pet.npy") for n in names["train"]]
    masks = [np.load(cache / f"{n}_mask.npy") for n in names["train"]]
    held = np.load(cache / f"{names['held_out']}_pet.npy")
    held_mask = np.load(cache / f"{names['held_out']}_mask.npy")
    gm = get_template("GM", resolution)
    maps = {}
    for precision in ("float32", "bfloat16"):
        t0 = time.time()
        fit = anomaly.fit(
            pets,
            masks,
            np.asanyarray(gm.dataobj),
            gm.affine,
            out / precision,
            nu=OCSVM_NU,
            gamma=OCSVM_GAMMA,
            epochs=SIAMESE_EPOCHS,
            seed=0,
            threads=2,
            encode_precision=precision,
        )
        wall = {k: round(v, 1) for k, v in fit.seconds.items()}
        cpu = {k: round(v, 1) for k, v in fit.cpu_seconds.items()}
        print(precision, f"fit {time.time() - t0:.1f} s", wall, "CPU", cpu, flush=True)
        standardized, decision, _ = anomaly.score(out / precision, held, held_mask, threads=2)
        maps[precision] = (standardized, decision)
    (sa, da), (sb, db) = maps["float32"], maps["bfloat16"]
    v = da != 0
    row = {
        "n_voxels": int(v.sum()),
        "decision_r": float(np.corrcoef(da[v], db[v])[0, 1]),
        "decision_max_abs_diff": float(np.abs(da[v] - db[v]).max()),
        "decision_range": float(np.ptp(da[v])),
        "standardized_r": float(np.corrcoef(sa[v], sb[v])[0, 1]),
        "standardized_max_abs_diff": float(np.abs(sa[v] - sb[v]).max()),
        "below_-1.65_float32": int((sa[v] < -1.65).sum()),
        "below_-1.65_bfloat16": int((sb[v] < -1.65).sum()),
        "below_-1.65_both": int(((sa[v] < -1.65) & (sb[v] < -1.65)).sum()),
    }
    print(json.dumps(row))
    return row


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__.split("\n\n")[1])
    main(Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))

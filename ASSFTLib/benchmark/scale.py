"""Scale benchmark: CT-like pools of 8, 32 and 128 volumes, one scoring pass and one fine-tuning round each.

``assft benchmark scale`` answers "does memory stay bounded and how many
volumes per hour does one machine score and train?" with the product's own
code: a real workspace over a synthetic abdominal-CT pool
(:func:`synthetic.make_ct_dataset`: int16 Hounsfield units, a body outline,
liver, kidneys, spleen), a foundation checkpoint whose preprocessing is CT's
(``ct_zscore`` with its own statistics, a target spacing), one
:func:`training.finetune_round` on every volume of the pool (labels imported),
then :func:`scoring.score_volume` of a few of its volumes with the new model and
the foundation.  A ``clinical`` unit scores one 512x512x300 CT at 0.8 mm (resampled
to the foundation's spacing as every real CT would be) and times the bare network
passes that scoring needs, for the overhead ratio.

Every unit (each pool's ``data``, ``train`` and ``score``, ``clinical``) runs in its
own process, so its peak RSS above that process's baseline is its own (no
allocator cache from an earlier unit), and its result is saved as soon as it ends:
a rerun skips finished units (resumable).  Results: ``scale_<device>.json`` with
``pool_sizes``, ``score_peak_rss_mib``, ``train_peak_rss_mib``,
``score_seconds_per_volume``, ``train_steps_per_second`` (lists in the order of
``pool_sizes``) and the per-unit details.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from . import provenance, write_json

POOL_SIZES = (8, 32, 128)
POOL_SHAPE = (192, 192, 128)        # 1.5 x 1.5 x 2.0 mm: a 29 x 29 x 26 cm abdomen on the foundation's grid
POOL_SPACING = (1.5, 1.5, 2.0)
CLINICAL_SHAPE = (512, 512, 300)
CLINICAL_SPACING = (0.8, 0.8, 1.0)
FOUNDATION_PREP = {"normalize": "ct_zscore", "clip": [-200.0, 300.0], "mean": 50.0, "std": 100.0,
                   "target_spacing": list(POOL_SPACING)}
PATCH = (48, 64, 64)


def _settings(threads: int, steps: int, patch: Sequence[int] = PATCH):
    from ..settings import Settings
    return Settings(patch_size=tuple(patch), batch_size=2, steps=steps, use_ssft=False, kfold_min_labels=0,
                    num_threads=threads, device="cpu")


# ----------------------------------------------------------------------------
# units (each runs in its own process: python -m ASSFTLib.benchmark.scale UNIT WORK ...)
def unit_data(work: Path, n: int, shape: Sequence[int], patch: Sequence[int] = PATCH) -> dict:
    """The shared CT pool extended to ``n`` cases, pool ``n``'s folder (hard links to them), the foundation."""
    import torch

    from .. import models, synthetic
    data = work / ("data_" + "x".join(str(v) for v in shape))
    t0 = time.perf_counter()
    synthetic.make_ct_dataset(data, n, shape, POOL_SPACING, seed=0)
    seconds = time.perf_counter() - t0
    meta = json.loads((data / "dataset.json").read_text())
    folder = work / f"pool_{n}"
    for entry in meta["training"][:n]:
        for key in ("image", "label"):
            src, dst = data / entry[key], folder / entry[key]
            if not dst.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(src, dst)
                except OSError:
                    shutil.copy2(src, dst)
    (folder / "dataset.json").write_text(json.dumps({**meta, "numTraining": n, "training": meta["training"][:n]}))
    if (work / "foundation.pt").is_file():
        return {"volumes": n, "shape": list(shape), "spacing_mm": list(POOL_SPACING), "seconds": seconds}
    torch.manual_seed(0)
    spec = models.default_spec(list(synthetic.CT_CLASSES), tuple(patch)).replace(preprocessing=FOUNDATION_PREP)
    models.save_checkpoint(work / "foundation.pt", models.build_network(spec), spec)
    return {"volumes": n, "shape": list(shape), "spacing_mm": list(POOL_SPACING), "seconds": seconds}


def unit_train(work: Path, size: int, threads: int, steps: int, patch: Sequence[int] = PATCH) -> dict:
    """A fresh workspace over pool ``size`` (labels imported) and one fine-tuning round: peak RSS, phase times."""
    from ..training import finetune_round
    from ..workspace import Workspace
    from .speed import PeakMemory
    folder = work / f"ws_{size}"
    shutil.rmtree(folder, ignore_errors=True)
    settings = _settings(threads, steps, patch)
    ws = Workspace.create(folder, work / f"pool_{size}", settings=settings, import_labels=True)
    ws.register_model(work / "foundation.pt", kind="foundation")
    marks: dict = {}  # phase -> [time of its first event, of its last, events, CPU time at the first, at the last]

    def progress(step, total, info):
        now, cpu = time.perf_counter(), time.process_time()
        mark = marks.setdefault(info.get("phase"), [now, now, 0, cpu, cpu])
        mark[1], mark[2], mark[4] = now, mark[2] + 1, cpu

    with PeakMemory("cpu") as mem:
        t0, c0 = time.perf_counter(), time.process_time()
        result = finetune_round(ws, settings, progress=progress)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    ws.close()
    train = marks.get("train", [t0, t0, 1, c0, c0])
    prepare = marks.get("prepare", [t0, t0, 0, c0, c0])
    # one event after each step: steps 2..n lie between the first event and the last
    train_steps = max(1, train[2] - 1)
    cache = sum(p.stat().st_size for p in (folder / "cache" / "train").rglob("*.npy"))
    return {"pool": size, "peak_rss_mib": mem.peak / 2 ** 20, "round_seconds": seconds,
            "prepare_seconds_per_volume": (prepare[1] - t0) / size,
            "round_cpu_seconds": cpu, "prepare_cpu_seconds_per_volume": (prepare[4] - c0) / size,
            "steps": int(result["metrics"]["steps"]), "steps_per_second": train_steps / max(train[1] - train[0], 1e-9),
            "cpu_steps_per_second": train_steps / max(train[4] - train[3], 1e-9),
            "cache_mib": cache / 2 ** 20, "threads": threads}


def unit_score(work: Path, size: int, threads: int, volumes: int, patch: Sequence[int] = PATCH) -> dict:
    """Score the first ``volumes`` cases of pool ``size`` with its trained model and the foundation."""
    from ..models import load_model
    from ..scoring import score_volume
    from ..volumes import read_volume
    from ..workspace import Workspace
    from .speed import PeakMemory
    settings = _settings(threads, 1, patch)
    ws = Workspace.open(work / f"ws_{size}")
    model = load_model(ws.current_model().path)
    foundation = load_model(ws.foundation_model().path)
    cases = ws.cases()[:volumes]
    ws.close()
    peaks, walls, cpus = [], [], []
    for case in cases:
        with PeakMemory("cpu") as mem:
            t0, c0 = time.perf_counter(), time.process_time()
            score_volume(model, foundation, read_volume(case.image_path), settings)
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
        peaks.append(mem.peak / 2 ** 20)
    return {"pool": size, "volumes_scored": len(cases), "peak_rss_mib": max(peaks),
            "seconds_per_volume": float(np.mean(walls)), "cpu_seconds_per_volume": float(np.mean(cpus)),
            "threads": threads}


def unit_clinical(work: Path, threads: int, shape: Sequence[int], patch: Sequence[int] = PATCH) -> dict:
    """One clinical-size CT: full scoring vs the bare passes it needs (4 flips of the model, E0's encoder pass)."""
    import torch

    from .. import inference, synthetic
    from ..models import load_model
    from ..scoring import score_volume
    from ..volumes import Volume
    from .speed import PeakMemory, plain_passes
    settings = _settings(threads, 1, patch)
    foundation = load_model(work / "foundation.pt")
    # a distinct model object and checksum: scoring runs E0's feature pass too, as every later round does
    model = dataclasses.replace(load_model(work / "foundation.pt"), checksum="model")
    image, _, affine = synthetic.make_ct_case((1, 0), shape, CLINICAL_SPACING)
    volume = Volume(image, affine)
    with PeakMemory("cpu") as mem:
        t0, c0 = time.perf_counter(), time.process_time()
        score_volume(model, foundation, volume, settings)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    t1, c1 = time.perf_counter(), time.process_time()
    plain_passes(model, volume, settings, 4)
    inference.embed(foundation, volume, settings)
    bare_wall, bare_cpu = time.perf_counter() - t1, time.process_time() - c1
    return {"shape": list(shape), "spacing_mm": list(CLINICAL_SPACING), "network_spacing_mm": list(POOL_SPACING),
            "score_seconds": wall, "score_cpu_seconds": cpu, "score_peak_rss_mib": mem.peak / 2 ** 20,
            "bare_passes_seconds": bare_wall, "bare_passes_cpu_seconds": bare_cpu,
            "overhead_vs_bare_passes_cpu": cpu / bare_cpu, "overhead_vs_bare_passes_wall": wall / bare_wall,
            "threads": threads, "torch_threads": torch.get_num_threads()}


UNITS: dict = {"data": unit_data, "train": unit_train, "score": unit_score, "clinical": unit_clinical}


# ----------------------------------------------------------------------------
def run(out: Path, work: Path, pools: Sequence[int] = POOL_SIZES, shape: Sequence = POOL_SHAPE,
        clinical_shape: Sequence[int] | None = CLINICAL_SHAPE, threads: int = 1, steps: int = 20,
        score_volumes: int = 2, patch: Sequence[int] = PATCH, unit_timeout: float = 1800,
        command: list[str] | None = None, progress: Callable[[str], None] = print,
        only: Sequence[str] | None = None) -> dict:
    """Run the units not yet finished in ``work`` (each in its own process); write ``out/scale_cpu.json``.

    shape: one volume size for every pool, or one per pool (a lower resolution for the larger pools);
    only: run just these unit kinds (``data``, ``train``, ``score``, ``clinical``): two runs over one
    ``work`` folder may share the machine, each saving its units into the same state file.
    """
    work = Path(work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    state_path = work / "scale_state.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    shapes = [list(v) for v in shape] if isinstance(shape[0], (list, tuple)) else [list(shape)] * len(pools)
    config = {"pools": list(pools), "shapes": shapes, "steps": steps, "score_volumes": score_volumes,
              "threads": threads, "clinical_shape": list(clinical_shape) if clinical_shape else None,
              "patch_size": list(patch)}
    if state.get("config") != config:
        state = {"config": config, "units": {}}
    patch = list(patch)
    plan = []
    for i, (size, size_shape) in enumerate(sorted(zip(pools, shapes))):  # smallest first; each extends the last
        plan += [(f"data_{size}", [size, size_shape, patch]), (f"train_{size}", [size, threads, steps, patch]),
                 (f"score_{size}", [size, threads, score_volumes, patch])]
        if i == 0 and clinical_shape:
            plan.append(("clinical", [threads, list(clinical_shape), patch]))
    for name, args in plan:
        if name in state["units"] or (only and name.split("_")[0] not in only):
            continue
        progress(f"scale benchmark: {name}")
        result = _run_unit(name.split("_")[0], work, args, threads, unit_timeout)
        saved = json.loads(state_path.read_text()) if state_path.is_file() else {}
        if saved.get("config") == config:  # units another run saved meanwhile
            state["units"] = {**saved["units"], **state["units"]}
        state["units"][name] = result
        write_json(state_path, state)
    result = summarize(state, pools)
    result.update({"benchmark": "scale", "device": "cpu", **provenance(command)})
    write_json(Path(out) / "scale_cpu.json", result)
    return result


def _run_unit(kind: str, work: Path, args: list, threads: int, timeout: float) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    proc = subprocess.run([sys.executable, "-m", "ASSFTLib.benchmark.scale", kind, str(work), json.dumps(args)],
                          capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        from ..errors import ASSFTError
        raise ASSFTError(f"scale benchmark unit {kind} failed: {proc.stderr.strip()[-2000:]}", path=work,
                         hint="fix the cause and run the same command again: finished units are kept")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarize(state: dict, pools: Sequence[int]) -> dict:
    """The result fields (lists in the order of ``pool_sizes``) from the finished units."""
    units = state["units"]

    def column(kind: str, key: str) -> list:
        return [units.get(f"{kind}_{p}", {}).get(key) for p in pools]

    return {"pool_sizes": list(pools),
            "score_peak_rss_mib": column("score", "peak_rss_mib"),
            "train_peak_rss_mib": column("train", "peak_rss_mib"),
            "score_seconds_per_volume": column("score", "seconds_per_volume"),
            "train_steps_per_second": column("train", "steps_per_second"),
            "train_prepare_seconds_per_volume": column("train", "prepare_seconds_per_volume"),
            "train_cache_mib": column("train", "cache_mib"),
            "pool_shapes": state["config"]["shapes"],
            "config": state["config"], "units": units, "notes": _notes(state["config"], units)}


def _notes(config: dict, units: dict) -> list:
    """What a reader must know to read the numbers."""
    loads = [u["load_average"][0] for u in units.values() if "load_average" in u]
    shape = ", ".join(f"pool {p}: " + "x".join(str(v) for v in s) for p, s in zip(config["pools"], config["shapes"]))
    notes = [f"pool volumes ({shape}) at {POOL_SPACING} mm (int16 HU): the foundation's grid, so "
             "nothing is resampled: a smaller field of view than an abdominal CT, which at 512x512x300 and 0.8 mm "
             "becomes 273x273x150 on this grid (the clinical unit scores one)",
             f"score_* numbers: {config['score_volumes']} volume(s) scored per pool (trained model + foundation "
             "pass, 4 test-time flips), not the whole pool; train_*: one round of "
             f"{config['steps']} steps on every volume of the pool (the cache is built in the round)",
             "peak RSS: the unit's own process, above its baseline after imports (models and workspace opened)"]
    if loads:
        notes.append(f"the machine was shared (1-min load average {min(loads):.1f}-{max(loads):.1f} on "
                     f"{os.cpu_count()} cores when units ended): wall-clock timings are pessimistic; "
                     "cpu_seconds are given where measured")
    return notes


def format_table(result: dict) -> str:
    """The printed summary of :func:`run`."""
    lines = ["pool  score peak MiB  s/volume  train peak MiB  steps/s  prepare s/volume"]
    for i, p in enumerate(result["pool_sizes"]):
        row = [result[k][i] for k in ("score_peak_rss_mib", "score_seconds_per_volume", "train_peak_rss_mib",
                                      "train_steps_per_second", "train_prepare_seconds_per_volume")]
        lines.append(f"{p:>4}  " + "  ".join("-" if v is None else f"{v:.2f}" for v in row))
    clinical = result["units"].get("clinical")
    if clinical:
        lines.append(f"clinical {tuple(clinical['shape'])}: {clinical['score_seconds']:.1f} s, "
                     f"{clinical['score_peak_rss_mib']:.0f} MiB peak, "
                     f"{clinical['overhead_vs_bare_passes_cpu']:.2f}x the bare passes' CPU time")
    return "\n".join(lines)


def _main(argv: Sequence[str]) -> int:
    kind, work, args = argv[0], Path(argv[1]), json.loads(argv[2])
    import torch
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    result = UNITS[kind](work, *args)
    result["load_average"] = [round(v, 2) for v in os.getloadavg()]  # 1, 5, 15 min when the unit ended
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))

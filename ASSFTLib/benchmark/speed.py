"""Speed: scoring, re-ranking and fine-tuning side by side, as ratios (BENCHMARK.md, "Speed").

Every figure is measured in one run on one machine with the product's own code:

- scoring: :func:`scoring.score_volume` (all metrics, T = 4 flips, the frozen
  E0 feature pass) against the forward passes it cannot avoid (T plain
  sliding-window passes of the same network) and against MONAI Label's
  epistemic recipe (5 MC-dropout sliding-window passes, entropy of the mean);
- re-ranking: :func:`scoring.rank_cases` over a workspace of ``pool`` cached
  volumes after one more label (no inference);
- fine-tuning: steps/s of :func:`training.finetune_round` at the benchmark
  patch size (difference of two rounds of different lengths, so set-up costs
  cancel; AMP on CUDA) and its peak memory;
- one large CT-sized volume scored with sliding windows: time and peak memory.

Peak memory: ``torch.cuda.max_memory_allocated`` on a GPU; on the CPU the
peak resident set size of the process above its level before the call,
sampled every 5 ms from ``/proc/self/statm`` (Linux).
"""
from __future__ import annotations

import os
import statistics
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from ..runtime import autocast
from ..settings import Settings
from . import provenance, write_json

#: The label-efficiency benchmark's patch (``label_efficiency.PROFILES["full"]``).
BENCHMARK_PATCH = (40, 56, 48)
CLASSES = ("background", "anterior", "posterior")
MC_PASSES = 5


# ----------------------------------------------------------------------------
# measuring
class PeakMemory:
    """Peak memory (bytes) of the block it wraps; see the module docstring for what is measured."""

    def __init__(self, device: str) -> None:
        self.device = torch.device(device)
        self.peak = 0
        self.kind = "cuda max_memory_allocated" if self.device.type == "cuda" else "process RSS above baseline"
        self._stop = threading.Event()

    @staticmethod
    def _rss() -> int:
        try:
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return 0

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            self._base = self._rss()
            self._max = self._base
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self._max = max(self._max, self._rss())

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = int(torch.cuda.max_memory_allocated(self.device) - self._base)
        else:
            self._stop.set()
            self._thread.join()
            self.peak = int(max(self._max, self._rss()) - self._base)


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: str, repeats: int = 1, cpu: list | None = None) -> tuple[float, object]:
    """Median wall time (s) of ``repeats`` calls of ``fn`` (after one untimed warm-up), and its last result.

    cpu: when given, the median process CPU time (s) of the same calls is appended to it (what one
    free core would take: on a shared machine wall-clock ratios follow the other processes' load).
    """
    out = fn()
    times, cpus = [], []
    for _ in range(repeats):
        _sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    if cpu is not None:
        cpu.append(statistics.median(cpus))
    return statistics.median(times), out


# ----------------------------------------------------------------------------
# models and data
def make_models(device: str, patch_size: Sequence[int]):
    """(model with a task head, separate frozen foundation) of the default network, randomly initialised.

    Speed does not depend on the weights; the foundation is a distinct object so
    that scoring runs its E0 feature pass, as every round after the cold start does.
    """
    from ..models import LoadedModel, LoadReport, build_network, default_spec, frozen_copy
    torch.manual_seed(0)
    spec = default_spec(CLASSES, patch_size)
    net = build_network(spec).to(device).eval()
    model = LoadedModel(net, spec, LoadReport(), "model")
    foundation = LoadedModel(frozen_copy(net), spec, LoadReport(), "foundation")
    return model, foundation


def make_volumes(n: int, size: Sequence[int]) -> list:
    """``n`` synthetic hippocampus-like volumes (``io.Volume``) of ``size``."""
    from ..volumes import Volume
    from ..synthetic import make_case
    out = []
    for i in range(n):
        image, _, affine = make_case((7, i), "clean", size)
        out.append(Volume(image, affine))
    return out


def plain_passes(model, volume, settings: Settings, passes: int) -> np.ndarray:
    """``passes`` bare sliding-window softmax passes of ``model`` over ``volume`` (the unavoidable work).

    The window is the one the scoring pass uses (:func:`inference.window_size`), so
    the ratio measures the metrics' overhead, not a difference in window size.
    """
    from monai.inferers import sliding_window_inference

    from ..inference import window_size

    from ..preprocess import prepare_image
    device = next(model.network.parameters()).device
    image, restore = prepare_image(volume, model.spec.preprocessing)
    image = image.to(device)
    net = model.network.eval()
    acc = None
    with torch.inference_mode(), autocast(device, settings.amp):
        for _ in range(passes):
            p = sliding_window_inference(image, window_size(model.spec, image.shape[2:]), settings.sw_batch_size,
                                         lambda x: torch.softmax(net(x).float(), 1),
                                         overlap=settings.sw_overlap, mode="gaussian")
            acc = p if acc is None else acc + p
    return np.asarray(restore((acc[0] / passes).float().cpu().numpy()))


def monai_label_epistemic(model, volume, settings: Settings, passes: int = MC_PASSES) -> float:
    """MONAI Label's epistemic scoring: ``passes`` MC-dropout passes, mean entropy of their mean softmax."""
    from monai.inferers import sliding_window_inference

    from ..inference import window_size

    from ..models import enable_mc_dropout
    from ..preprocess import prepare_image
    from ..query import normalized_entropy
    device = next(model.network.parameters()).device
    image, restore = prepare_image(volume, model.spec.preprocessing)
    image = image.to(device)
    enable_mc_dropout(model.network)
    try:
        acc = None
        with torch.inference_mode(), autocast(device, settings.amp):
            for _ in range(passes):
                p = sliding_window_inference(image, window_size(model.spec, image.shape[2:]), settings.sw_batch_size,
                                             lambda x: torch.softmax(model.network(x).float(), 1),
                                             overlap=settings.sw_overlap, mode="gaussian")
                acc = p if acc is None else acc + p
    finally:
        model.network.eval()
    mean = np.asarray(restore((acc[0] / passes).float().cpu().numpy()))
    return float(normalized_entropy(mean).mean())


# ----------------------------------------------------------------------------
# the parts
def scoring_speed(model, foundation, volumes: Sequence, settings: Settings, device: str) -> dict:
    """Volumes/s of full ATSQ scoring, of the same number of plain passes, and of 5-pass MC dropout."""
    from ..scoring import foundation_part, score_volume
    flips = 4 if settings.tta_flips else 1

    def run_all(fn):
        return lambda: [fn(v) for v in volumes]

    cpu: list = []
    # first scoring with this foundation: the frozen E0 pass runs too
    t_full, first = timed(run_all(lambda v: score_volume(model, foundation, v, settings)), device, cpu=cpu)
    # every later round: E0's part comes from the workspace cache (scoring.score_cases does this)
    e0 = {id(v): foundation_part(r.to_dict()) for v, r in zip(volumes, first)}
    t_later, _ = timed(run_all(lambda v: score_volume(model, foundation, v, settings, foundation_record=e0[id(v)])),
                       device, cpu=cpu)
    t_plain, _ = timed(run_all(lambda v: plain_passes(model, v, settings, flips)), device, cpu=cpu)
    t_mc, _ = timed(run_all(lambda v: monai_label_epistemic(model, v, settings)), device, cpu=cpu)
    n = len(volumes)
    out = {"volumes": n, "volume_shape": list(volumes[0].shape), "tta_passes": flips,
           "atsq_full_vol_per_s": n / t_full, "atsq_later_rounds_vol_per_s": n / t_later,
           "plain_passes_vol_per_s": n / t_plain, "monai_label_mc5_vol_per_s": n / t_mc,
           "atsq_overhead_vs_plain": t_full / t_plain, "atsq_later_rounds_overhead_vs_plain": t_later / t_plain,
           "atsq_speedup_vs_monai_label_mc5": t_mc / t_full}
    if torch.device(device).type == "cpu":  # the same ratios in CPU time, which the machine's load does not move
        c_full, c_later, c_plain, c_mc = cpu
        out.update({"atsq_overhead_vs_plain_cpu": c_full / c_plain,
                    "atsq_later_rounds_overhead_vs_plain_cpu": c_later / c_plain,
                    "atsq_speedup_vs_monai_label_mc5_cpu": c_mc / c_full})
    return out


@contextmanager
def _workspace_of(folder: Path, n: int, settings: Settings) -> Iterator:
    """A workspace over ``n`` tiny synthetic volumes (8^3), for timing the cache and ranking alone."""
    import json

    from ..fileutil import atomic_write_text
    from ..volumes import write_volume
    from ..workspace import Workspace
    data = folder / "pool"
    rng = np.random.default_rng(0)
    entries = []
    for i in range(n):
        name = f"case_{i:04d}.nii.gz"
        write_volume(data / "imagesTr" / name, rng.normal(size=(8, 8, 8)).astype(np.float32), np.eye(4))
        entries.append({"image": f"./imagesTr/{name}"})
    atomic_write_text(data / "dataset.json", json.dumps({"labels": {str(i): c for i, c in enumerate(CLASSES)},
                                                         "training": entries}))
    ws = Workspace.create(folder / "ws", dataset=data, settings=settings, import_labels=False)
    try:
        yield ws
    finally:
        ws.close()


def rerank_speed(model, foundation, volume, settings: Settings, pool: int, folder: Path, device: str) -> dict:
    """Time of ``rank_cases`` (ATSQ) over ``pool`` cached volumes right after one more label is saved.

    The cache holds real score records (one :func:`score_volume` record with
    its numbers jittered per case), keyed like the product keys them.
    """
    from ..models import save_checkpoint
    from ..scoring import rank_cases, score_volume
    record = score_volume(model, foundation, volume, settings).to_dict()
    rng = np.random.default_rng(1)
    with _workspace_of(folder, pool, settings) as ws:
        path = folder / "model.pt"
        save_checkpoint(path, model.network.cpu(), model.spec)
        model.network.to(device)
        version = ws.register_model(path, kind="finetuned")
        records = {}
        for cid in [c.case_id for c in ws.cases()]:
            z = np.asarray(record["zt"]) + rng.normal(0, 0.05, len(record["zt"]))
            records[cid] = {**record, "K": {k: v * rng.uniform(0.5, 1.5) for k, v in record["K"].items()},
                            "asd": float(rng.uniform()), "zt": (z / np.linalg.norm(z)).tolist()}
        ws.put_scores(version.checksum, settings.scoring_hash(), records)
        ids = ws.unlabeled_ids()
        labels = iter(ids[:12])

        def add_label_and_rank():
            ws.save_label(next(labels), np.zeros((8, 8, 8), np.uint8), user="benchmark")
            t0 = time.perf_counter()
            table = rank_cases(ws, settings.replace(strategy="atsq"))
            return time.perf_counter() - t0, table

        times = [add_label_and_rank()[0] for _ in range(10)]
    return {"pool": pool, "strategy": "atsq", "budget": settings.budget, "rerank_seconds_median": statistics.median(times),
            "rerank_seconds_max": max(times), "repeats": len(times)}


def finetune_speed(settings: Settings, folder: Path, steps: int, patch_size: Sequence[int], device: str) -> dict:
    """Steps/s and peak memory of :func:`training.finetune_round` at ``patch_size`` (batch ``settings.batch_size``)."""
    from ..models import build_network, default_spec, save_checkpoint
    from ..synthetic import make_dataset
    from ..training import finetune_round
    from ..workspace import Workspace
    data = make_dataset(folder / "data", n_cases=4, seed=3, shape=tuple(max(p, 36) for p in patch_size))
    cfg = settings.replace(patch_size=tuple(patch_size), kfold_min_labels=0, use_ssft=False)
    ws = Workspace.create(folder / "ws", dataset=data, settings=cfg, import_labels=True)
    spec = default_spec(CLASSES, patch_size)
    save_checkpoint(folder / "foundation.pt", build_network(spec), spec.replace(has_task_head=False))
    ws.register_model(folder / "foundation.pt", kind="foundation")
    warm = 3
    try:
        with PeakMemory(device) as mem:  # from before the first round: the allocator keeps what it grew
            t_short, _ = timed(lambda: finetune_round(ws, cfg.replace(steps=warm)), device)
            t_long, _ = timed(lambda: finetune_round(ws, cfg.replace(steps=warm + steps)), device)
    finally:
        ws.close()
    per_step = max(t_long - t_short, 1e-9) / steps
    return {"patch_size": list(patch_size), "batch_size": cfg.batch_size, "steps_timed": steps,
            "amp": bool(cfg.amp and torch.device(device).type == "cuda"),
            "steps_per_s": 1.0 / per_step, "voxels_per_s": cfg.batch_size * int(np.prod(patch_size)) / per_step,
            "peak_memory_mib": mem.peak / 2 ** 20, "peak_memory_kind": mem.kind}


def large_volume(model, foundation, size: Sequence[int], settings: Settings, device: str) -> dict:
    """Time and peak memory of full ATSQ scoring of one ``size`` volume (synthetic CT-like intensities)."""
    from ..volumes import Volume
    from ..scoring import score_volume
    rng = np.random.default_rng(0)
    image = rng.normal(40.0, 300.0, size=tuple(size)).astype(np.float32)
    volume = Volume(image, np.diag([0.8, 0.8, 1.5, 1.0]))
    with PeakMemory(device) as mem:
        _sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        score_volume(model, foundation, volume, settings)
        _sync(device)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"shape": list(size), "voxels": int(np.prod(size)), "seconds": seconds, "cpu_seconds": cpu,
            "peak_memory_mib": mem.peak / 2 ** 20, "peak_memory_kind": mem.kind,
            "patch_size": list(model.spec.patch_size), "sw_overlap": settings.sw_overlap}


# ----------------------------------------------------------------------------
def run(out: Path, settings: Settings | None = None, n_volumes: int = 8,
        volume_size: Sequence[int] = (36, 50, 36), pool_size: int = 1000, train_steps: int = 20,
        large_size: Sequence[int] | None = (512, 512, 300), patch_size: Sequence[int] = BENCHMARK_PATCH,
        command: list[str] | None = None, progress: Callable[[str], None] = print) -> dict:
    """Run every part and write ``speed_<device>.json`` under ``out``; returns the result."""
    import tempfile
    settings = (settings or Settings()).replace(patch_size=tuple(patch_size))
    device = settings.resolved_device()
    model, foundation = make_models(device, patch_size)
    volumes = make_volumes(n_volumes, volume_size)
    result = {"benchmark": "speed", "device": device, **provenance(command),
              "settings": {k: settings.to_dict()[k] for k in ("patch_size", "sw_overlap", "sw_batch_size",
                                                              "tta_flips", "batch_size", "amp")}}
    progress(f"scoring {n_volumes} volumes of {tuple(volume_size)} on {device}")
    result["scoring"] = scoring_speed(model, foundation, volumes, settings, device)
    with tempfile.TemporaryDirectory(prefix="assft-speed-") as tmp:
        progress(f"re-ranking {pool_size} cached volumes")
        result["rerank"] = rerank_speed(model, foundation, volumes[0], settings, pool_size, Path(tmp) / "rank", device)
        progress(f"fine-tuning {train_steps} steps at patch {tuple(patch_size)}")
        result["finetune"] = finetune_speed(settings, Path(tmp) / "train", train_steps, patch_size, device)
    if large_size is not None:
        progress(f"scoring one {tuple(large_size)} volume")
        result["large_volume"] = large_volume(model, foundation, large_size, settings, device)
    tag = "gpu" if torch.device(device).type == "cuda" else "cpu"
    write_json(Path(out) / f"speed_{tag}.json", result)
    return result


def format_table(result: dict) -> str:
    """The printed summary of :func:`run`."""
    m = result["machine"]
    s, r, f = result["scoring"], result["rerank"], result["finetune"]
    where = m["gpu"]["name"] if m.get("gpu") and result["device"].startswith("cuda") else \
        f"{m['cpu']} ({m['cpu_cores']} cores, {m['torch_threads']} torch threads)"
    lines = [f"speed on {result['device']}: {where}",
             f"  scoring {s['volumes']} volumes of {tuple(s['volume_shape'])}, patch {tuple(result['settings']['patch_size'])}",
             f"    full ATSQ scoring (T={s['tta_passes']}, all metrics) {s['atsq_full_vol_per_s']:8.2f} vol/s",
             f"    {s['tta_passes']} plain sliding-window passes          {s['plain_passes_vol_per_s']:8.2f} vol/s"
             f"   ATSQ time / plain = {s['atsq_overhead_vs_plain']:.2f}x",
             f"    ATSQ, later rounds (E0 part cached)   {s['atsq_later_rounds_vol_per_s']:8.2f} vol/s"
             f"   time / plain = {s['atsq_later_rounds_overhead_vs_plain']:.2f}x",
             f"    MONAI Label epistemic (5 MC passes)   {s['monai_label_mc5_vol_per_s']:8.2f} vol/s"
             f"   MC5 time / ATSQ = {s['atsq_speedup_vs_monai_label_mc5']:.2f}x",
             f"  re-rank {r['pool']} cached volumes after a label: {1000 * r['rerank_seconds_median']:.1f} ms "
             f"(median of {r['repeats']}, max {1000 * r['rerank_seconds_max']:.1f} ms)",
             f"  fine-tuning at patch {tuple(f['patch_size'])} x batch {f['batch_size']}"
             f"{' (AMP)' if f['amp'] else ''}: {f['steps_per_s']:.2f} steps/s, peak {f['peak_memory_mib']:.0f} MiB "
             f"({f['peak_memory_kind']})"]
    if "atsq_overhead_vs_plain_cpu" in s:
        lines.insert(2, f"    in CPU time: ATSQ / plain = {s['atsq_overhead_vs_plain_cpu']:.2f}x, later rounds "
                        f"{s['atsq_later_rounds_overhead_vs_plain_cpu']:.2f}x, MC5 / ATSQ = "
                        f"{s['atsq_speedup_vs_monai_label_mc5_cpu']:.2f}x")
    if "large_volume" in result:
        lv = result["large_volume"]
        lines.append(f"  one {tuple(lv['shape'])} volume: {lv['seconds']:.1f} s, peak {lv['peak_memory_mib']:.0f} MiB "
                     f"({lv['peak_memory_kind']})")
    return "\n".join(lines)


def _main(argv: Sequence[str]) -> int:
    """``python -m ASSFTLib.benchmark.speed large-volume '[512, 512, 300]'``: the ``large_volume`` row
    alone, in a fresh process on the CPU (its peak RSS is its own), printed as JSON with the load average."""
    import json
    import os
    if len(argv) != 2 or argv[0] != "large-volume":
        print("usage: python -m ASSFTLib.benchmark.speed large-volume '[X, Y, Z]'")
        return 2
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    settings = Settings(device="cpu").replace(patch_size=tuple(BENCHMARK_PATCH))
    model, foundation = make_models("cpu", BENCHMARK_PATCH)
    result = large_volume(model, foundation, json.loads(argv[1]), settings, "cpu")
    result["load_average"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    import sys
    sys.exit(_main(sys.argv[1:]))

"""Pretrain the self-supervised foundation on the benchmark's 60 source images (for the recipe sweep's --foundation).

    python Testing/benchmarks/pretrain_source.py OUT.pt [STEPS] [DATA]
"""
import sys
import time

from ASSFTLib.benchmark.label_efficiency.protocol import make_split
from ASSFTLib.dataset import load_dataset
from ASSFTLib.settings import Settings
from ASSFTLib.training import pretrain

cases, _ = load_dataset(sys.argv[3] if len(sys.argv) > 3 else "../shared/data/Task04_Hippocampus")
by = {c.case_id: c for c in cases}
split = make_split(sorted(by))
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
t = time.time()


def prog(s, tot, info):
    if info.get("phase") == "pretrain" and (s % 100 == 0 or s == tot):
        print(s, tot, info.get("loss"), round(time.time() - t, 1), flush=True)


r = pretrain([by[c].image for c in split.source], sys.argv[1], Settings(pretrain_steps=steps, num_threads=2),
             progress=prog)
print(r, round(time.time() - t, 1))

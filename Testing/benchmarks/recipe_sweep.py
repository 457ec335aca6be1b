"""Training-recipe sweep (docs/results.md, "The training recipe"): the default UNet on N hippocampus labels,
Dice on a validation split of other pool cases after every --eval-every steps.

Run from the repository root, e.g.
    python Testing/benchmarks/recipe_sweep.py --product --steps 1500 --fg 0.33 --aug aug --out run.json

Validation = pool cases never trained on (benchmark test split untouched)."""
import argparse, json, sys, time, math
import numpy as np, torch
from pathlib import Path
from monai.losses import DiceCELoss
from monai.transforms import (Compose, SpatialPadd, RandSpatialCropd, RandFlipd, RandCropByPosNegLabeld,
                              RandScaleIntensityd, RandShiftIntensityd, RandGaussianNoised, RandAffined)
from ASSFTLib.dataset import load_dataset
from ASSFTLib.benchmark.label_efficiency.protocol import make_split
from ASSFTLib.models import default_spec, build_network, LoadedModel, LoadReport, load_model, make_task_network
from ASSFTLib.training.data import load_labeled_case, PatchSampler
from ASSFTLib.inference import predict_probs
from ASSFTLib.volumes import read_volume
from ASSFTLib.metrics import mean_dice
from ASSFTLib.settings import Settings

p = argparse.ArgumentParser()
p.add_argument("--n", type=int, default=40); p.add_argument("--steps", type=int, default=1500)
p.add_argument("--batch", type=int, default=4); p.add_argument("--lr", type=float, default=3e-3)
p.add_argument("--sched", default="poly"); p.add_argument("--fg", type=float, default=0.0)
p.add_argument("--aug", default="flip"); p.add_argument("--eval-every", type=int, default=250)
p.add_argument("--budget-s", type=float, default=1e9); p.add_argument("--threads", type=int, default=2)
p.add_argument("--nval", type=int, default=20); p.add_argument("--out", required=True)
p.add_argument("--foundation", default=""); p.add_argument("--enc-ratio", type=float, default=1.0)
p.add_argument("--wd", type=float, default=1e-5); p.add_argument("--opt", default="adamw")
p.add_argument("--patch", default="32,48,32"); p.add_argument("--product", action="store_true")
p.add_argument("--data", default="../shared/data/Task04_Hippocampus")
a = p.parse_args()
torch.set_num_threads(a.threads); torch.manual_seed(0)
cases, _ = load_dataset(a.data)
by = {c.case_id: c for c in cases}
split = make_split(sorted(by))
train_ids, val_ids = split.pool[:a.n], split.pool[80:80 + a.nval]
classes = ["background", "anterior", "posterior"]
patch = tuple(int(v) for v in a.patch.split(","))
spec = default_spec(classes, patch)
if a.foundation:
    net, spec, _ = make_task_network(load_model(a.foundation), classes); spec = spec.replace(patch_size=list(patch))
else:
    net = build_network(spec)
prep = spec.preprocessing
train = [load_labeled_case(c, by[c].image, by[c].label, prep, 3) for c in train_ids]
keys = ["image", "label", "weight"]
tf = [SpatialPadd(keys, spatial_size=patch)]
if a.fg > 0:
    tf.append(RandCropByPosNegLabeld(keys, label_key="label", spatial_size=patch, pos=a.fg, neg=1 - a.fg, num_samples=1))
else:
    tf.append(RandSpatialCropd(keys, roi_size=patch, random_size=False))
if "affine" in a.aug:
    tf.append(RandAffined(keys, prob=0.3, rotate_range=(0.26,)*3, scale_range=(0.15,)*3, mode=("bilinear", "nearest", "nearest"), padding_mode="zeros"))
tf += [RandFlipd(keys, prob=0.5, spatial_axis=i) for i in range(3)]
if "int" in a.aug:
    tf += [RandScaleIntensityd("image", factors=0.2, prob=0.5), RandShiftIntensityd("image", offsets=0.2, prob=0.5),
           RandGaussianNoised("image", prob=0.2, std=0.1)]
class First:
    def __init__(self, t): self.t = t
    def __call__(self, d):
        r = self.t(d); return r[0] if isinstance(r, list) else r
transform = Compose(tf); transform.set_random_state(seed=0)
sampler = PatchSampler(patch, 0, a.fg, "aug" in a.aug or "int" in a.aug); ptrain = [sampler.prepare(c) for c in train]
enc = set()
from ASSFTLib.models import encoder_parameter_names
encn = encoder_parameter_names(net, spec)
g_enc = [p_ for n, p_ in net.named_parameters() if n in encn]; g_dec = [p_ for n, p_ in net.named_parameters() if n not in encn]
groups = [{"params": g_dec, "lr": a.lr, "base": a.lr}, {"params": g_enc, "lr": a.lr * a.enc_ratio, "base": a.lr * a.enc_ratio}]
opt = (torch.optim.AdamW(groups, weight_decay=a.wd) if a.opt == "adamw"
       else torch.optim.SGD(groups, momentum=0.99, nesterov=True, weight_decay=3e-5))
loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
settings = Settings(patch_size=patch)
def evaluate():
    net.eval(); m = LoadedModel(net, spec, LoadReport(), "", None); d = []
    with torch.no_grad():
        for c in val_ids:
            probs = predict_probs(m, read_volume(by[c].image), settings)
            d.append(mean_dice(np.argmax(probs, 0), read_volume(by[c].label, kind="label").array, 3))
    net.train(); return float(np.mean(d))
log = []; t_train = 0.0; rng = np.random.default_rng(0); net.train()
for step in range(a.steps):
    f = step / a.steps
    mult = (1 - f) ** 0.9 if a.sched == "poly" else (0.5 * (1 + math.cos(math.pi * f)) if a.sched == "cos" else 1.0)
    for g in opt.param_groups: g["lr"] = g["base"] * mult
    t0 = time.perf_counter()
    picks = rng.integers(0, len(train), size=a.batch)
    if a.product:
        batch = sampler.batch(ptrain, a.batch, np.random.default_rng([0, step]))
    else:
        items = [First(transform)({"image": train[i].image, "label": train[i].label, "weight": train[i].weight}) for i in picks]
        batch = {k: torch.stack([torch.as_tensor(it[k].as_tensor() if hasattr(it[k], "as_tensor") else it[k]) for it in items]) for k in keys}
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(net(batch["image"]), batch["label"]); loss.backward(); opt.step()
    t_train += time.perf_counter() - t0
    if (step + 1) % a.eval_every == 0 or step + 1 == a.steps or t_train > a.budget_s:
        d = evaluate(); log.append({"step": step + 1, "train_s": round(t_train, 1), "loss": float(loss), "val_dice": d})
        print(json.dumps(log[-1]), flush=True)
        if t_train > a.budget_s: break
json.dump({"args": vars(a), "log": log}, open(a.out, "w"), indent=1)

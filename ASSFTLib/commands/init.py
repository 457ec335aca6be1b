"""`assft init`: create a workspace from a dataset folder."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("init", help="create a workspace from a dataset folder",
                       description="Create a workspace (an SQLite database and folders for labels, models and "
                                   "scores) from an MSD-layout dataset folder (dataset.json, imagesTr/, optional "
                                   "labelsTr/) or a plain folder of NIfTI/NRRD volumes. Images stay where they are.")
    p.add_argument("workspace", help="new or empty folder for the workspace")
    p.add_argument("--dataset", required=True, help="dataset folder (MSD layout or a folder of volumes)")
    p.add_argument("--model", help="foundation model to register: an ASSFT checkpoint (.pt), a plain PyTorch "
                                   "state dict or a Swin UNETR self-supervised checkpoint (both with --model-spec), "
                                   "or a MONAI bundle folder (configs/*.json + models/model.pt). Without it, run "
                                   "`assft pretrain WORKSPACE` next to make one from your volumes")
    p.add_argument("--model-spec", metavar="SPEC.json",
                   help="for a plain state dict or a Swin UNETR self-supervised checkpoint, which carry no "
                        "description of their network: a JSON file naming it, e.g. {\"network\": \"SwinUNETR\", "
                        "\"kwargs\": {\"in_channels\": 1, \"feature_size\": 48}, \"patch_size\": [96, 96, 96]}. "
                        "classes and out_channels default to the task's. The model is then stored as an ASSFT "
                        "checkpoint")
    p.add_argument("--classes",
                   help="comma-separated class names, background first, e.g. background,liver,tumour (default: "
                        "from dataset.json; background,foreground for a plain folder of volumes)")
    p.add_argument("--no-labels", dest="import_labels", action="store_false",
                   help="do not use the dataset's labels as labels (they are still kept as reference labels)")
    p.set_defaults(func=run)


def read_model_spec(path: str, classes: list[str]):
    """The ModelSpec in a user's JSON file; classes and out_channels default to the task's."""
    import json

    from ..errors import CheckpointError
    from ..models import ModelSpec
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read the model spec ({exc})", path=path,
                              hint="a JSON file such as {\"network\": \"UNet\", \"kwargs\": {...}}") from exc
    if not isinstance(data, dict):
        raise CheckpointError("the model spec must be a JSON object", path=path,
                              hint="{\"network\": ..., \"kwargs\": {...}, \"patch_size\": [x, y, z]}")
    data.setdefault("classes", list(classes))
    if isinstance(data.get("kwargs"), dict):
        data["kwargs"].setdefault("out_channels", len(data["classes"]))
    try:
        return ModelSpec.from_dict(data)
    except CheckpointError as exc:
        raise CheckpointError(exc.message, path=path, hint=exc.hint) from exc
    except TypeError as exc:  # a network argument of the wrong kind
        raise CheckpointError(f"model spec: {exc}", path=path, hint="check the field names and values") from exc


def run(args: argparse.Namespace) -> int:
    from ..dataset import task_classes
    from ..errors import CheckpointError
    from ..settings import Settings
    from ..workspace import Workspace
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    notes: list[str] = []
    loaded = None
    if args.model:  # refuse an unsafe, damaged or unsuitable checkpoint before creating anything
        from ..models import check_task_compatible, load_model
        task = task_classes(args.dataset, classes)
        spec = read_model_spec(args.model_spec, task) if args.model_spec else None
        try:
            loaded = load_model(args.model, spec=spec)
        except CheckpointError as exc:
            if spec is None and "does not say which network" in exc.message:
                raise CheckpointError(exc.message, path=exc.path,
                                      hint="describe its network with --model-spec SPEC.json (see `assft init "
                                           "--help`)") from exc
            raise
        notes = check_task_compatible(loaded, task)
    # a described network or a bundle brings its own patch size (a Swin UNETR needs multiples of 32)
    own_patch = args.model and (args.model_spec or Path(args.model).is_dir())
    settings = Settings(patch_size=tuple(loaded.spec.patch_size)) if own_patch else None
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        foundation = args.model
        if args.model and args.model_spec:  # stored as an ASSFT checkpoint, which describes its own network
            from ..models import save_checkpoint
            foundation = Path(tmp) / (Path(args.model).name.split(".")[0] + ".pt")
            save_checkpoint(foundation, loaded.network.cpu(), loaded.spec)
        ws = Workspace.create(args.workspace, dataset=args.dataset, import_labels=args.import_labels,
                              classes=classes, settings=settings, foundation=foundation)  # all or nothing
    version = ws.current_model() if args.model else None
    s = ws.summary()
    print(f"workspace {s['folder']}: {s['cases']} cases ({s['labeled']} labeled, {s['unlabeled']} unlabeled), "
          f"classes {', '.join(s['classes'])}")
    for problem in ws.import_problems:
        print(f"  problem: {problem['path']}: {problem['message']}")
    if args.model:
        r = loaded.report
        print(f"foundation model #{version.id}: {args.model} ({loaded.spec.network}, {len(r.loaded)} tensors loaded"
              + (", with a segmentation head" if loaded.spec.has_task_head else ", a new segmentation head")
              + f"; stored as {version.path}, checksum {version.checksum[:12]})")
        for note in notes:
            print(f"  note: {note}")
        if own_patch:
            print(f"  training patch size {tuple(loaded.spec.patch_size)}, the model's (patch_size in "
                  f"{ws.settings_path})")
        print(f"next: `assft score {args.workspace}`")
    else:
        print(f"no model yet: next, `assft pretrain {args.workspace}` makes a foundation model from these volumes")
    return 0

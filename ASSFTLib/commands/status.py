"""`assft status`: cases, labels, rounds and the current model of a workspace."""
from __future__ import annotations

import argparse
import json


def add_parser(sub) -> None:
    p = sub.add_parser("status", help="show cases, labels, rounds and the current model",
                       description="Show a workspace: its dataset and classes, how many cases are labeled, the "
                                   "current model (with the quality numbers of its round), the last rounds, and "
                                   "label files in WORKSPACE/labels/ that are not registered (bring those in with "
                                   "`assft import-labels`).")
    p.add_argument("workspace", help="the workspace folder (made by `assft init`)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.add_argument("--cases", action="store_true", help="list every case with its status and who labeled it")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..labelimport import unregistered_label_files
    from ..workspace import Workspace
    with Workspace.open(args.workspace) as ws:
        ws.reap_interrupted_rounds()  # show a killed worker's round as failed, not running forever
        s = ws.summary()
        rounds = ws.rounds()
        stray = unregistered_label_files(ws)
        if args.json:
            s["unregistered_label_files"] = [str(p) for p in stray]
            s["rounds"] = [r.__dict__ for r in rounds]
            s["case_list"] = [{"case_id": c.case_id, "status": c.status, "labeled_by": c.labeled_by}
                              for c in ws.cases()] if args.cases else None
            print(json.dumps(s, indent=2, default=str))
            return 0
        print(f"workspace  {s['folder']}")
        print(f"dataset    {s['dataset'] or '-'}")
        print(f"classes    {', '.join(s['classes'])}")
        print(f"cases      {s['cases']}: {s['labeled']} labeled, {s['unlabeled']} unlabeled"
              + (f"; {s['import_problems']} dataset entries skipped at init" if s["import_problems"] else ""))
        m = s["current_model"]
        desc = "none" if m is None else f"#{m['id']} {m['kind']} {m['checksum']} {m['path']}"
        print(f"model      {desc}")
        if m and m["metrics"]:
            print("           " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                            for k, v in m["metrics"].items() if not isinstance(v, (dict, list))))
        for problem in s.get("model_problems", []):
            print(f"           WARNING: {problem}")
        failures = s.get("score_failures", {})
        if failures:
            print(f"failed     {len(failures)} cases could not be scored with this model:")
            for case_id, message in failures.items():
                print(f"  {case_id}: {message}")
        if stray:
            names = ", ".join(p.name for p in stray[:5]) + (f" and {len(stray) - 5} more" if len(stray) > 5 else "")
            print(f"note       {len(stray)} file(s) in {ws.paths.labels} are not registered labels and are not used: "
                  f"{names}. Bring them in (checked) with `assft import-labels {args.workspace} {ws.paths.labels}`")
        print(f"rounds     {len(rounds)}")
        for r in rounds[-10:]:
            print(f"  #{r.id:<3} {r.kind:<9} {r.status:<9} {r.started_at}")
        if args.cases:
            for c in ws.cases():
                extra = f"  by {c.labeled_by}" if c.labeled_by else ""
                print(f"  {c.case_id:<30} {c.status}{extra}")
    return 0

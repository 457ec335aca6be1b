"""What a new user reads: help texts, the worklist's legend, one error style, stopping and piping without tracebacks.

Real workspaces (a tiny network, real scoring), the real command in subprocesses where the process matters.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from tiny_workspace import SHAPE, scored_workspace


def _assft(*args, timeout=300, **kw):
    return subprocess.run([sys.executable, "-m", "ASSFTLib.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"}, **kw)


@pytest.fixture()
def scored_ws(tmp_path):
    """A workspace of 4 synthetic volumes, a tiny model with a head, one label, everything scored."""
    scored_workspace(tmp_path, budget=2).close()
    return tmp_path / "ws"


def test_every_subcommand_has_a_description_and_every_argument_a_help():
    from ASSFTLib.cli import build_parser
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        assert p.description, f"assft {name} --help has no description"
        for action in p._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help, f"assft {name}: {action.dest} is unexplained"
    assert "import-labels" in sub.choices


@pytest.mark.torch
def test_rank_explains_its_columns_confirms_files_and_says_when_nothing_is_left(scored_ws, tmp_path):
    r = _assft("rank", scored_ws, "--csv", tmp_path / "ranked.csv")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("ranked by atsq, 2 to pick")
    header = next(line for line in lines if line.startswith("rank "))
    assert header.split() == ["rank", "case_id", "status", "K", "ASD", "Div", "q", "picked"]
    for column in ("K ", "ASD ", "Div ", "q ", "* "):
        assert any(line.startswith(column) for line in lines), f"no legend line for {column!r}"
    assert f"wrote {tmp_path / 'ranked.csv'} (4 rows)" in r.stdout and (tmp_path / "ranked.csv").is_file()

    from ASSFTLib.workspace import Workspace
    with Workspace.open(scored_ws) as ws:
        for case_id in ws.unlabeled_ids():
            ws.save_label(case_id, np.zeros(SHAPE, np.uint8))
    r = _assft("rank", scored_ws)
    assert r.returncode == 0 and "nothing to rank: every case is labeled (4 of 4)" in r.stdout
    assert not any(line.startswith("rank ") for line in r.stdout.splitlines())


@pytest.mark.torch
def test_job_commands_use_the_same_error_prefix_as_the_others(tmp_path):
    from ASSFTLib import synthetic
    data = synthetic.make_dataset(tmp_path / "data", 2, ("clean",), shape=SHAPE)
    assert _assft("init", tmp_path / "ws", "--dataset", data, "--no-labels").returncode == 0
    r = _assft("train", tmp_path / "ws")
    assert r.returncode == 1
    assert "assft train: error: " in r.stderr and "no model" in r.stderr
    assert not any(line.startswith("error:") for line in r.stderr.splitlines())
    r = _assft("rank", tmp_path / "nowhere")
    assert r.returncode == 1 and r.stderr.startswith("assft rank: error: ")


@pytest.mark.torch
def test_sigterm_during_score_says_how_to_continue(scored_ws, monkeypatch, capsys):
    """Stands in for a long scoring run: the scoring call sends this process SIGTERM and waits to be stopped."""
    import time

    from ASSFTLib import cli, scoring

    def long_scoring(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
        raise AssertionError("SIGTERM did not stop the command")

    monkeypatch.setattr(scoring, "score_cases", long_scoring)
    before = signal.getsignal(signal.SIGTERM)
    assert cli.main(["score", str(scored_ws)]) == 143
    err = capsys.readouterr().err
    assert "assft score: stopped (SIGTERM)" in err and "run the same command again to continue" in err
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is put back


@pytest.mark.torch
def test_a_closed_pipe_ends_quietly(scored_ws):
    """`assft status WS --cases | head`: the reader goes away before the command writes."""
    proc = subprocess.Popen([sys.executable, "-m", "ASSFTLib.cli", "status", str(scored_ws), "--cases"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


@pytest.mark.torch
def test_init_takes_a_plain_state_dict_or_a_swin_ssl_checkpoint_with_a_spec(tmp_path):
    """Each way of bringing a model that the README names, through the real command."""
    import json

    import torch

    from ASSFTLib import synthetic
    from ASSFTLib.models import build_network, default_spec, load_model
    from ASSFTLib.workspace import Workspace

    data = synthetic.make_dataset(tmp_path / "data", 2, ("clean",), shape=SHAPE)
    classes = ["background", "head", "body"]  # the synthetic dataset's classes
    # a plain state dict of a UNet: refused without a spec, with a hint that names the option
    torch.manual_seed(0)
    unet_spec = default_spec(classes)
    net = build_network(unet_spec)
    torch.save(net.state_dict(), tmp_path / "my_unet.pt")
    r = _assft("init", tmp_path / "ws0", "--dataset", data, "--model", tmp_path / "my_unet.pt")
    assert r.returncode == 1 and "--model-spec" in r.stderr and not (tmp_path / "ws0").exists()
    kwargs = {k: v for k, v in unet_spec.to_dict()["kwargs"].items() if k != "out_channels"}
    (tmp_path / "unet.json").write_text(json.dumps({"network": "UNet", "kwargs": kwargs}))
    r = _assft("init", tmp_path / "ws1", "--dataset", data, "--model", tmp_path / "my_unet.pt",
               "--model-spec", tmp_path / "unet.json")
    assert r.returncode == 0, r.stderr
    assert "foundation model #1" in r.stdout and "UNet" in r.stdout and "with a segmentation head" in r.stdout
    with Workspace.open(tmp_path / "ws1") as ws:
        stored = load_model(ws.current_model().path)  # an ASSFT checkpoint now: no spec needed
    assert stored.spec.has_task_head and stored.spec.classes == classes
    assert all(torch.equal(stored.network.state_dict()[k], v) for k, v in net.state_dict().items())

    # MONAI's Swin UNETR self-supervised layout (encoder only): a new head, the spec's patch size for the workspace
    swin_kwargs = {"in_channels": 1, "feature_size": 12, "depths": [1, 1, 1, 1]}
    swin = build_network(default_spec(classes).__class__("SwinUNETR", {**swin_kwargs, "out_channels": 3}, classes,
                                                         patch_size=(64, 32, 32)))
    encoder = {f"module.{k}": v for k, v in swin.state_dict().items() if k.startswith("swinViT.")}
    torch.save({"state_dict": encoder, "epoch": 100}, tmp_path / "model_swinvit.pt")
    (tmp_path / "swin.json").write_text(json.dumps({"network": "SwinUNETR", "kwargs": swin_kwargs,
                                                    "patch_size": [64, 32, 32]}))
    r = _assft("init", tmp_path / "ws2", "--dataset", data, "--model", tmp_path / "model_swinvit.pt",
               "--model-spec", tmp_path / "swin.json", "--classes", ",".join(classes))
    assert r.returncode == 0, r.stderr
    assert "SwinUNETR" in r.stdout and "a new segmentation head" in r.stdout
    with Workspace.open(tmp_path / "ws2") as ws:
        stored = load_model(ws.current_model().path)
        assert tuple(ws.settings.patch_size) == (64, 32, 32)
    assert stored.spec.network == "SwinUNETR" and not stored.spec.has_task_head
    assert all(torch.equal(stored.network.state_dict()[k[len("module."):]], v) for k, v in encoder.items())


def test_a_cancelled_job_says_the_command_that_continues_it():
    import io

    from ASSFTLib.commands.train import ProgressBars
    out = io.StringIO()
    bars = ProgressBars(out=out, name="assft train", resume="assft train ws --resume --job-dir ws/jobs/train-1")
    bars("cancelled", message="stopped at step 40 of 250", resumable=True, job_dir="ws/jobs/train-1")
    bars("error", message="ws: no labeled volumes to fine-tune on")
    text = out.getvalue()
    assert "assft train: cancelled: stopped at step 40 of 250" in text
    assert "to continue: assft train ws --resume --job-dir ws/jobs/train-1" in text
    assert "assft train: error: ws: no labeled volumes" in text


def test_a_round_says_what_it_held_out_and_what_the_quality_number_means(capsys):
    from ASSFTLib.commands.train import summarise
    summarise({"model_id": 3, "model_path": "ws/models/model_003.pt",
               "metrics": {"train_labels": 8, "pseudo_labels": 2, "steps": 400, "heldout": ["c1", "c2"],
                           "heldout_dice": 0.8123, "final_loss": 0.2}}, kfold_min_labels=5)
    out = capsys.readouterr().out
    assert "trained on     8 labeled volumes + 2 pseudo-labeled, 400 steps" in out
    assert "held out       2 labeled volumes (c1, c2): not trained on this round" in out
    assert "held-out Dice 0.8123" in out
    summarise({"model_id": 2, "metrics": {"train_labels": 2, "pseudo_labels": 0, "heldout": [],
                                          "heldout_dice": None}}, kfold_min_labels=5)
    out = capsys.readouterr().out
    assert "not measured: with fewer than 5 labels, every label trains" in out and "held-out Dice" not in out
    assert "new labels" not in out, "a first round has no previous model"
    summarise({"model_id": 4, "metrics": {"train_labels": 4, "heldout": [], "new_label_dice": 0.61234,
                                          "new_label_dice_per_case": {"c3": 0.5, "c4": 0.72468}}})
    out = capsys.readouterr().out
    assert "the previous model's Dice on the 2 volume(s) labeled since it was trained: 0.6123" in out

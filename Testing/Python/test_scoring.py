"""Scoring (ASSFTLib.inference, ASSFTLib.scoring) on tiny real networks and synthetic volumes."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
torch = pytest.importorskip("torch", reason="needs torch (no torch wheel for this Python)")

from ASSFTLib import cli, inference, models, query, scoring, strategies, synthetic
from ASSFTLib.errors import ASSFTError, JobCancelled
from ASSFTLib.volumes import Volume
from ASSFTLib.settings import Settings
from ASSFTLib.workspace import Workspace

CLASSES = ["background", "head", "body"]
SHAPE = (20, 24, 18)
PATCH = (16, 16, 16)


def _tiny_spec(has_task_head: bool = True) -> models.ModelSpec:
    spec = models.default_spec(CLASSES, patch_size=PATCH)
    return spec.replace(kwargs={**spec.kwargs, "channels": [4, 8, 16], "strides": [2, 2]},
                        has_task_head=has_task_head)


def _checkpoint(path, seed: int, has_task_head: bool = True):
    torch.manual_seed(seed)
    spec = _tiny_spec(has_task_head)
    models.save_checkpoint(path, models.build_network(spec), spec)
    return path


@pytest.fixture
def model(tmp_path):
    return models.load_model(_checkpoint(tmp_path / "m.pt", 0))


@pytest.fixture
def volume():
    image, _, affine = synthetic.make_case(0, shape=SHAPE)
    return Volume(image, affine)


# ----------------------------------------------------------------------------
# one volume
def test_embedding_is_the_global_average_of_the_bottleneck_over_the_window(model):
    image, _, affine = synthetic.make_case(1, shape=PATCH)  # exactly one window
    vol = Volume(image, affine)
    result = inference.forward_volume(model, vol, Settings(tta_flips=False), with_norm_stats=True)
    seen = []
    handle = models.bottleneck_module(model.network, model.spec).register_forward_hook(
        lambda m, i, o: seen.append(o.detach()))
    from ASSFTLib.preprocess import prepare_image
    x, _ = prepare_image(vol, model.spec.preprocessing)
    with torch.no_grad():
        model.network(x)
    handle.remove()
    z = seen[0].mean(dim=(0, 2, 3, 4)).double().numpy()
    np.testing.assert_allclose(result.embedding, z / np.linalg.norm(z), atol=1e-6)
    # encoder norm layers only, each with its input's per-channel moments
    encoder = [n for n, _ in models.norm_layers_with_stats(model.network, model.spec)]
    assert [n for n, _, _ in result.norm_stats] == encoder
    assert all(np.all(var >= 0) for _, _, var in result.norm_stats)


def test_a_volume_smaller_than_the_patch_is_not_measured_with_padding(model):
    """z(x) and the bnstats moments are the volume's own, not diluted by the window's zero padding."""
    small = (12, 16, 8)  # multiples of the tiny UNet's divisor 4, smaller than PATCH on two axes
    assert inference.window_size(model.spec, small) == small
    assert inference.window_size(model.spec, (13, 40, 8)) == (16, 16, 8)
    image, _, affine = synthetic.make_case(2, shape=small)
    vol = Volume(image, affine)
    result = inference.forward_volume(model, vol, Settings(tta_flips=False), with_norm_stats=True)
    seen, first_norm = [], []
    name, layer = models.norm_layers_with_stats(model.network, model.spec)[0]
    hooks = [models.bottleneck_module(model.network, model.spec).register_forward_hook(
        lambda m, i, o: seen.append(o.detach())),
        layer.register_forward_pre_hook(lambda m, a: first_norm.append(a[0].detach()))]
    from ASSFTLib.preprocess import prepare_image
    x, _ = prepare_image(vol, model.spec.preprocessing)
    with torch.no_grad():
        model.network(x)
    for h in hooks:
        h.remove()
    z = seen[0].mean(dim=(0, 2, 3, 4)).double().numpy()
    np.testing.assert_allclose(result.embedding, z / np.linalg.norm(z), atol=1e-6)
    assert result.norm_stats[0][0] == name
    np.testing.assert_allclose(result.norm_stats[0][1], first_norm[0].mean(dim=(0, 2, 3, 4)).numpy(), atol=1e-5)
    np.testing.assert_allclose(result.norm_stats[0][2], first_norm[0].var(dim=(0, 2, 3, 4), unbiased=False).numpy(),
                               rtol=1e-4, atol=1e-6)


def test_probs_are_test_time_averaged_on_the_volume_grid(model, volume):
    p4 = inference.predict_probs(model, volume, Settings())
    p1 = inference.predict_probs(model, volume, Settings(tta_flips=False))
    assert p4.shape == (len(CLASSES), *SHAPE) and p4.dtype == np.float32
    np.testing.assert_allclose(p4.sum(axis=0), 1.0, atol=1e-5)
    assert not np.allclose(p4, p1)  # the flips contribute


def test_score_volume_with_the_foundation_as_model(model, volume):
    s = scoring.score_volume(model, model, volume, Settings())
    assert set(s.K) == {"bnstats"} and s.K["bnstats"] > 0
    assert s.z0 == s.zt and np.linalg.norm(s.zt) == pytest.approx(1.0)
    assert 0.0 <= s.asd <= 1.0 and 1.0 / len(CLASSES) <= s.confidence <= 1.0
    assert s.bald is None and s.has_task_head
    rec = s.to_dict()
    assert json.loads(json.dumps(rec)) == rec and "dist_to_labeled" not in rec


def test_knowledge_divergence_comes_from_the_foundation_and_drift_from_both(tmp_path, model, volume):
    other = models.load_model(_checkpoint(tmp_path / "other.pt", 1))
    alone = scoring.score_volume(model, model, volume, Settings())
    both = scoring.score_volume(other, model, volume, Settings(), labeled_embeddings=np.asarray([alone.zt]))
    assert both.K["bnstats"] == pytest.approx(alone.K["bnstats"])
    assert both.z0 == pytest.approx(alone.z0, abs=1e-6)
    expected = 1.0 - float(np.dot(both.z0, both.zt))
    assert both.K["drift"] == pytest.approx(expected, abs=1e-9) and both.K["drift"] > 0
    assert both.dist_to_labeled == pytest.approx(expected, abs=1e-6)


def test_cold_start_runs_the_encoder_only(tmp_path, volume):
    encoder_only = models.load_model(_checkpoint(tmp_path / "enc.pt", 0, has_task_head=False))
    head = models.head_module_names(encoder_only.network, encoder_only.spec)[0]
    calls = []
    handle = encoder_only.network.get_submodule(head).register_forward_hook(lambda *a: calls.append(1))
    s = scoring.score_volume(encoder_only, encoder_only, volume, Settings())
    handle.remove()
    assert calls == []
    assert s.asd is None and s.confidence is None and not s.has_task_head and s.K["bnstats"] > 0
    with pytest.raises(ASSFTError, match="no segmentation head"):
        inference.predict_probs(encoder_only, volume, Settings())


def test_mc_dropout_bald_only_when_asked(model, volume):
    s = scoring.score_volume(model, model, volume, Settings(mc_dropout_samples=3))
    assert s.bald is not None and s.bald > 0
    # dropout is off again afterwards: two plain predictions agree
    a = inference.predict_probs(model, volume, Settings(tta_flips=False))
    b = inference.predict_probs(model, volume, Settings(tta_flips=False))
    np.testing.assert_allclose(a, b, atol=1e-6)


# ----------------------------------------------------------------------------
# the workspace
@pytest.fixture
def workspace(tmp_path):
    data = synthetic.make_dataset(tmp_path / "data", 6, ("clean", "bias_contrast", "thick_slices"), shape=SHAPE)
    ws = Workspace.create(tmp_path / "ws", data, import_labels=False)
    ws.register_model(_checkpoint(tmp_path / "m.pt", 0), kind="foundation")
    ref = synthetic.make_case((0, 0), "clean", SHAPE)[1]
    ws.save_label("synth_000", ref)
    yield ws
    ws.close()


@pytest.fixture
def counted(monkeypatch):
    """Counts inference.forward_volume calls (the network passes of the current model)."""
    calls = []
    real = inference.forward_volume

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(inference, "forward_volume", counting)
    return calls


def test_score_cases_caches_resumes_and_rescores_a_new_model(tmp_path, workspace, counted):
    stop_after = iter([False, False, True])
    with pytest.raises(JobCancelled):
        scoring.score_cases(workspace, Settings(), should_stop=lambda: next(stop_after))
    assert len(counted) == 2
    steps = []
    first = scoring.score_cases(workspace, Settings(), progress=lambda s, t, i: steps.append((s, t)))
    assert (first["scored"], first["cached"], first["total"]) == (4, 2, 6) and len(counted) == 6
    assert steps[-1] == (4, 4)
    again = scoring.score_cases(workspace, Settings())
    assert again["scored"] == 0 and again["cached"] == 6 and len(counted) == 6
    # labeling changes nothing about the cache; settings that change the pass do
    scoring.score_cases(workspace, Settings(roi_dilation=1))
    assert len(counted) == 12
    found = workspace.get_scores(first["model_checksum"], Settings().scoring_hash())
    workspace.register_model(_checkpoint(tmp_path / "m2.pt", 5))
    second = scoring.score_cases(workspace, Settings())
    # each case: one pass of the new model only; E0's z0 and K come from the foundation's own scoring
    assert second["scored"] == 6 and len(counted) == 12 + 6
    records = workspace.get_scores(second["model_checksum"], Settings().scoring_hash())
    for cid, r in records.items():
        assert "drift" in r["K"] and r["K"]["bnstats"] == found[cid]["K"]["bnstats"] and r["z0"] == found[cid]["zt"]
    # with settings the foundation was never scored under, E0 runs once (a feature-only pass per case) ...
    third = scoring.score_cases(workspace, Settings(roi_dilation=3))
    assert third["scored"] == 6 and len(counted) == 18 + 2 * 6
    # ... and its K equals what the foundation itself gives: the cached part is the same number
    workspace.register_model(_checkpoint(tmp_path / "m3.pt", 7))
    fourth = scoring.score_cases(workspace, Settings(roi_dilation=3))
    assert fourth["scored"] == 6 and len(counted) == 30 + 6
    k3 = workspace.get_scores(third["model_checksum"], Settings(roi_dilation=3).scoring_hash())
    k4 = workspace.get_scores(fourth["model_checksum"], Settings(roi_dilation=3).scoring_hash())
    assert all(k3[c]["K"]["bnstats"] == k4[c]["K"]["bnstats"] and k3[c]["z0"] == k4[c]["z0"] for c in k3)
    assert all(k3[c]["zt"] != k4[c]["zt"] for c in k3)  # the current model's part is not reused


def test_a_corrupt_case_is_recorded_and_the_rest_go_on(workspace):
    broken = workspace.case("synth_003").image_path
    broken.write_bytes(b"not a nifti file")
    result = scoring.score_cases(workspace, Settings())
    assert set(result["errors"]) == {"synth_003"} and result["scored"] == 5
    assert str(broken) in result["errors"]["synth_003"]
    table = scoring.rank_cases(workspace, Settings())
    status = {r.case_id: r.status for r in table.rows}
    assert status["synth_003"] == "error" and status["synth_000"] == "labeled"
    assert sum(s == "pool" for s in status.values()) == 4


def test_rank_from_cache_matches_the_pure_selector(workspace, counted):
    scoring.score_cases(workspace, Settings())
    n_calls = len(counted)
    table = scoring.rank_cases(workspace, Settings(), strategy="atsq", budget=2)
    assert len(counted) == n_calls  # ranking runs no inference
    cached = workspace.get_scores(table.model_checksum, Settings().scoring_hash())
    pool = [c for c in workspace.unlabeled_ids()]
    sel = query.atsq_select([cached[c]["K"]["bnstats"] for c in pool], [cached[c]["asd"] for c in pool],
                            [cached[c]["zt"] for c in pool], [cached["synth_000"]["zt"]], 2)
    pool_rows = [r for r in table.rows if r.status == "pool"]
    assert [r.case_id for r in pool_rows] == [pool[i] for i in sel.order]
    assert [r.rank for r in pool_rows] == list(range(1, len(pool) + 1))
    assert table.picked == [pool[i] for i in sel.picked] and table.divergence_mode == "bnstats"
    for strategy in strategies.names():
        if strategy == "bald":
            with pytest.raises(ASSFTError, match="mc_dropout_samples"):
                scoring.rank_cases(workspace, Settings(), strategy=strategy, budget=10)
            continue
        t = scoring.rank_cases(workspace, Settings(), strategy=strategy, budget=10)  # budget > pool
        assert sorted(t.picked) == sorted(pool)


def test_cli_score_and_rank_write_the_table(workspace, tmp_path, capsys):
    folder = str(workspace.folder)
    assert cli.main(["score", folder, "--json-events"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events[-1]["event"] == "result" and events[-1]["scored"] == 6
    out_csv, out_json = tmp_path / "rank.csv", tmp_path / "rank.json"
    assert cli.main(["rank", folder, "--budget", "3", "--csv", str(out_csv), "--json", str(out_json)]) == 0
    printed = capsys.readouterr().out
    rows = list(csv.DictReader(out_csv.open()))
    pool = [r for r in rows if r["status"] == "pool"]
    assert len(pool) == 5 and sum(r["picked"] == "True" for r in rows) == 3
    assert all(r["case_id"] in printed for r in pool)
    assert json.loads(out_json.read_text())["picked"] == [r["case_id"] for r in pool[:3]]


def test_pretext_divergence_is_the_pretraining_loss_on_a_fixed_mask(tmp_path):
    from ASSFTLib import pretext
    torch.manual_seed(2)
    recon_spec = pretext.reconstruction_spec(PATCH).replace(kwargs={**_tiny_spec().kwargs, "out_channels": 1})
    recon = models.build_network(recon_spec)
    path = tmp_path / "foundation.pt"
    models.save_checkpoint(path, recon, recon_spec, pretext=(recon, recon_spec))
    foundation = models.load_model(path)
    image, _, affine = synthetic.make_case(3, shape=PATCH)  # one window: stitching is the identity
    vol = Volume(image, affine)
    s = scoring.score_volume(foundation, foundation, vol, Settings(seed=4, divergence_mode="pretext"))
    assert s.K["pretext"] > 0 and "bnstats" in s.K and s.asd is None
    from ASSFTLib.preprocess import prepare_image
    x, _ = prepare_image(vol, recon_spec.preprocessing)
    mask = pretext.block_mask(x.shape, torch.Generator().manual_seed(4), Settings().pretext_mask_block,
                              Settings().pretext_mask_ratio)
    with torch.no_grad():
        expected = float(pretext.pretext_loss(foundation.pretext.network, x, mask))
    assert s.K["pretext"] == pytest.approx(expected, rel=1e-4)


def test_pretext_pass_runs_only_when_the_ranking_can_use_it(tmp_path, volume):
    """With running statistics, ``auto`` ranks by bnstats: the pretext network must not run for nothing."""
    from ASSFTLib import pretext
    recon_spec = pretext.reconstruction_spec(PATCH).replace(kwargs={**_tiny_spec().kwargs, "out_channels": 1})
    recon = models.build_network(recon_spec)
    path = tmp_path / "foundation.pt"
    models.save_checkpoint(path, recon, recon_spec, pretext=(recon, recon_spec))
    foundation = models.load_model(path)
    calls = []
    handle = foundation.pretext.network.register_forward_hook(lambda *a: calls.append(1))
    auto = scoring.score_volume(foundation, foundation, volume, Settings(tta_flips=False))
    assert calls == [] and set(auto.K) == {"bnstats"}
    assert scoring.resolve_divergence_mode("auto", set(auto.K)) == "bnstats"
    chosen = scoring.score_volume(foundation, foundation, volume, Settings(tta_flips=False, divergence_mode="pretext"))
    handle.remove()
    assert calls and chosen.K["pretext"] > 0
    assert not scoring.needs_pretext_pass("bnstats", False) and scoring.needs_pretext_pass("auto", False)


def test_predict_probs_pads_small_volumes_to_the_patch_like_training():
    """Segmentations use the model's whole patch (MONAI pads as training does); scoring shrinks the window."""
    from monai.inferers import sliding_window_inference

    from ASSFTLib import models, preprocess
    from ASSFTLib.volumes import Volume
    torch.manual_seed(0)
    spec = models.default_spec(["background", "a", "b"], patch_size=(32, 32, 32))
    net = models.build_network(spec).eval()
    loaded = models.LoadedModel(net, spec, models.LoadReport([], [], [], []), "x", None, "assft")
    image, affine = synthetic.make_case((3, 1), "clean", (20, 26, 18))[0], np.eye(4)
    volume = Volume(image, affine, None)
    got = inference.predict_probs(loaded, volume, Settings())
    x, restore = preprocess.prepare_image(volume, spec.preprocessing)
    expected = 0
    with torch.inference_mode():
        for dims in [(), (2,), (3,), (4,)]:
            p = sliding_window_inference(torch.flip(x, dims) if dims else x, (32, 32, 32), 4,
                                         lambda t: torch.softmax(net(t).float(), 1), overlap=0.25, mode="gaussian")
            expected = expected + (torch.flip(p, dims) if dims else p)
    expected = np.asarray(restore((expected[0] / 4).numpy()))
    np.testing.assert_allclose(got, expected, atol=1e-5)
    shrunk = inference.forward_volume(loaded, volume, Settings()).probs
    assert np.abs(shrunk - got).max() > 1e-3  # the scoring pass really uses the smaller window

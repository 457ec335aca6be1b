"""Fine-tuning rounds and pretraining on tiny synthetic volumes (real files, real SQLite, few steps)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
torch = pytest.importorskip("torch", reason="needs torch (no torch wheel for this Python)")

from ASSFTLib import pretext, pseudo, scoring, ssft, synthetic, training
from ASSFTLib.errors import ASSFTError, JobCancelled, WorkspaceError
from ASSFTLib.volumes import read_volume
from ASSFTLib.models import encoder_parameter_names, load_model
from ASSFTLib.settings import Settings
from ASSFTLib.workspace import Workspace
from ASSFTLib.workspace.paths import job_state_path

SHAPE = (24, 24, 24)
N_CASES = 6
N_LABELED = 3
pytestmark = pytest.mark.filterwarnings("ignore::ASSFTLib.training.TrainingWarning")


def tiny_settings(**changes) -> Settings:
    """Settings small enough for a shared 2-core machine: 16^3 patches, no test-time flips, a few steps."""
    base = dict(steps=4, pretrain_steps=4, batch_size=1, patch_size=(16, 16, 16), tta_flips=False, sw_batch_size=1,
                kfold_min_labels=3, num_threads=1, device="cpu")
    return Settings(**{**base, **changes})


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    return synthetic.make_dataset(tmp_path_factory.mktemp("tiny") / "Task98_Tiny", N_CASES, ("clean",), seed=0,
                                  shape=SHAPE)


@pytest.fixture(scope="session")
def foundation_file(tiny_dataset, tmp_path_factory) -> Path:
    """A foundation checkpoint made by the project's own pretraining (a few steps)."""
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("foundation") / "foundation.pt"
    training.pretrain(training.expand_image_paths([tiny_dataset]), out, tiny_settings(pretrain_steps=3))
    return out


def make_workspace(folder: Path, dataset: Path, foundation: Path, settings: Settings,
                   n_labeled: int = N_LABELED) -> Workspace:
    """A workspace whose first ``n_labeled`` cases carry their reference labels, with a foundation model."""
    ws = Workspace.create(folder, dataset, settings=settings, import_labels=False)
    for case in ws.cases()[:n_labeled]:
        ws.save_label(case.case_id, read_volume(case.reference_label, kind="label").array, user="test")
    ws.register_model(foundation, kind="foundation")
    return ws


@pytest.fixture
def workspace(tmp_path, tiny_dataset, foundation_file) -> Workspace:
    ws = make_workspace(tmp_path / "ws", tiny_dataset, foundation_file, tiny_settings())
    yield ws
    ws.close()


def _checkpoint_extra(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["extra"]


def test_pretrain_writes_reconstruction_checkpoint_with_pretext_and_bn_stats(foundation_file):
    loaded = load_model(foundation_file)
    assert loaded.spec.task == "reconstruction" and not loaded.spec.has_task_head
    assert loaded.spec.kwargs["out_channels"] == 1
    assert loaded.pretext is not None and loaded.pretext.spec.task == "reconstruction"
    bns = [m for m in loaded.network.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert bns and all(int(m.num_batches_tracked) == 3 for m in bns)
    assert any(not torch.allclose(m.running_mean, torch.zeros_like(m.running_mean)) for m in bns)


def test_pretext_loss_only_counts_hidden_voxels():
    net = torch.nn.Identity()
    image = torch.randn(1, 1, 8, 8, 8)
    mask = pretext.block_mask(image.shape, torch.Generator().manual_seed(0), block=4, ratio=0.5)
    assert set(mask.unique().tolist()) <= {0.0, 1.0} and mask.shape == image.shape
    # identity "reconstructs" the visible voxels perfectly and the hidden ones as 0
    expected = (image[mask.bool()] ** 2).mean()
    assert pretext.pretext_loss(net, image, mask).item() == pytest.approx(expected.item(), rel=1e-5)


def test_block_mask_follows_the_mask_settings():
    shape = (2, 1, 16, 16, 16)
    mask = pretext.block_mask(shape, torch.Generator().manual_seed(0), block=8, ratio=0.5)
    cubes = mask.reshape(2, 2, 8, 2, 8, 2, 8)  # every 8^3 cube is all hidden or all visible
    assert torch.equal(cubes.amin(dim=(2, 4, 6)), cubes.amax(dim=(2, 4, 6)))
    assert pretext.block_mask(shape, torch.Generator().manual_seed(0), block=4, ratio=1.0).min() == 1


def test_scoring_hash_changes_with_seed_and_mask_settings():
    """K_pretext and BALD depend on the seed and the mask: a change must not reuse cached scores."""
    base = Settings()
    changed = [base.replace(seed=1), base.replace(pretext_mask_block=4), base.replace(pretext_mask_ratio=0.25)]
    hashes = {base.scoring_hash()} | {s.scoring_hash() for s in changed}
    assert len(hashes) == 4
    assert base.replace(learning_rate=0.5).scoring_hash() == base.scoring_hash()  # training-only fields stay out
    with pytest.raises(ASSFTError, match="pretext_mask_ratio"):
        Settings(pretext_mask_ratio=0.0)
    with pytest.raises(ASSFTError, match="pretext_mask_block"):
        Settings(pretext_mask_block=0)


def test_round_registers_model_only_at_the_end_with_held_out_quality(workspace):
    foundation = workspace.current_model()
    seen = []
    with pytest.warns(training.TrainingWarning, match="cold start"):
        result = training.finetune_round(workspace, tiny_settings(), progress=lambda s, t, i: seen.append((s, t, i)))
    current = workspace.current_model()
    assert current.id == result["model_id"] != foundation.id
    new = load_model(current.path)
    assert new.spec.has_task_head and new.spec.classes == list(synthetic.CLASSES)
    metrics = result["metrics"]
    assert len(metrics["heldout"]) == 1 and metrics["heldout"][0] in workspace.labeled_ids()
    assert 0.0 <= metrics["heldout_dice"] <= 1.0
    trained_on = _checkpoint_extra(current.path)["trained_on"]
    assert set(trained_on).isdisjoint(metrics["heldout"]) and len(trained_on) == N_LABELED - 1
    train_steps = [s for s, t, i in seen if i.get("phase") == "train"]
    assert train_steps == list(range(1, 5))
    assert [r.status for r in workspace.rounds("train")] == ["finished"]
    assert workspace.rounds("train")[0].model_id == current.id


def test_second_round_uses_ssft_selection_and_respects_qa(workspace):
    settings = tiny_settings(confidence_threshold=0.0, distance_percentile=100.0)
    training.finetune_round(workspace, settings)
    scoring.score_cases(workspace, settings)
    teacher = load_model(workspace.current_model().path)
    before = pseudo.select_round_pseudo(workspace, teacher, settings)
    assert before is not None and {d.case_id for d in before.decisions} == set(workspace.unlabeled_ids())
    rejected = before.decisions[0].case_id
    workspace.set_qa(rejected, "rejected", user="test")
    expected = pseudo.select_round_pseudo(workspace, teacher, settings)
    result = training.finetune_round(workspace, settings)
    assert expected.selected and result["metrics"]["pseudo_ids"] == expected.selected
    assert rejected not in result["metrics"]["pseudo_ids"]
    assert result["metrics"]["start"] == "current"


def test_a_round_scores_the_previous_model_on_the_labels_it_never_trained_on(workspace, monkeypatch):
    """The second quality signal: the model that ranked the volumes, on the ones labeled since (no label held out)."""
    from ASSFTLib.inference import predict_label
    from ASSFTLib.metrics import mean_dice
    settings = tiny_settings(use_ssft=False)
    first = training.finetune_round(workspace, settings)["metrics"]
    assert first["new_label_dice"] is None, "a cold start has no previous segmentation model"
    heldout = first["heldout"]
    assert len(heldout) == 1 and sorted(first["trained_on"]) == sorted(set(workspace.labeled_ids()) - set(heldout))
    previous = load_model(workspace.current_model().path)
    new_case = workspace.unlabeled_ids()[0]
    workspace.save_label(new_case, read_volume(workspace.case(new_case).reference_label, kind="label").array,
                         user="test")
    second = training.finetune_round(workspace, settings)["metrics"]
    # unseen by the previous model: the case it held out and the one labeled since; not the ones it trained on
    assert sorted(second["new_label_dice_per_case"]) == sorted(heldout + [new_case])
    for case_id, dice in second["new_label_dice_per_case"].items():
        label, _ = predict_label(previous, read_volume(workspace.image_path(case_id)), settings)
        truth = read_volume(workspace.label_path(case_id), kind="label").array
        assert dice == pytest.approx(mean_dice(label, truth, len(workspace.classes)))
    assert second["new_label_dice"] == pytest.approx(np.mean(list(second["new_label_dice_per_case"].values())))
    # many volumes labeled between two rounds: only the most recently labeled are predicted
    from types import SimpleNamespace
    from ASSFTLib.training import finetune
    later = workspace.unlabeled_ids()[:2]
    for case_id in later:
        workspace.save_label(case_id, read_volume(workspace.case(case_id).reference_label, kind="label").array,
                             user="test")
    start = SimpleNamespace(teacher=object())  # unseen_labels only asks whether the start model can segment
    unseen = finetune.unseen_labels(workspace, start, workspace.labeled_ids())
    assert set(later) <= set(unseen) and len(unseen) == len(later) + len(second["heldout"])
    monkeypatch.setattr(finetune, "NEW_LABEL_EVAL_MAX", 1)
    assert finetune.unseen_labels(workspace, start, workspace.labeled_ids()) == [later[-1]]
    assert finetune.unseen_labels(workspace, SimpleNamespace(teacher=None), workspace.labeled_ids()) == []


def test_a_new_label_dice_that_cannot_be_measured_costs_the_round_nothing(workspace, monkeypatch):
    from ASSFTLib.training import finetune
    settings = tiny_settings(use_ssft=False, kfold_min_labels=0)
    training.finetune_round(workspace, settings)
    new_case = workspace.unlabeled_ids()[0]
    workspace.save_label(new_case, read_volume(workspace.case(new_case).reference_label, kind="label").array,
                         user="test")
    measured = finetune._heldout_dice

    def out_of_memory(network, spec, ws, case_ids, settings):
        if list(case_ids) == [new_case]:  # the previous model on the new label
            raise RuntimeError("CUDA out of memory (stand-in: no GPU here)")
        return measured(network, spec, ws, case_ids, settings)
    monkeypatch.setattr(finetune, "_heldout_dice", out_of_memory)
    before = workspace.current_model().id
    with pytest.warns(training.TrainingWarning, match="Dice on the new labels was not measured: CUDA out of memory"):
        result = training.finetune_round(workspace, settings)
    assert result["metrics"]["new_label_dice"] is None and result["metrics"]["new_label_dice_per_case"] == {}
    assert workspace.current_model().id == result["model_id"] != before  # the round still trained and registered


class _CachedScoresOnly:
    """Just what pseudo.select_round_pseudo reads of a workspace: ids, QA decisions and the score cache."""

    def __init__(self, records: dict):
        self.records = records

    def labeled_ids(self):
        return ["l1"]

    def unlabeled_ids(self):
        return ["u1", "u2", "u3", "u4"]

    def qa_decisions(self):
        return {}

    def get_scores(self, checksum, settings_hash):
        assert checksum == "abc" and settings_hash == Settings().scoring_hash()
        return self.records


def test_selection_reads_typed_cached_scores_and_skips_failure_records():
    def record(zt, confidence=None, roi_fallback=False):
        return {"K": {"bnstats": 0.1}, "zt": zt, "z0": zt, "has_task_head": True, "confidence": confidence,
                "roi_fallback": roi_fallback}
    ws = _CachedScoresOnly({"l1": record([1.0, 0.0]), "u1": record([1.0, 0.0], 0.99),
                            "u2": {"error": "VolumeError: unreadable"},
                            "u3": record([1.0, 0.0], 0.99, roi_fallback=True)})
    teacher = type("Teacher", (), {"checksum": "abc"})()
    selection = pseudo.select_round_pseudo(ws, teacher, Settings(confidence_threshold=0.5, pseudo_ratio=3.0))
    reasons = {d.case_id: d.reason for d in selection.decisions}
    assert selection.selected == ["u1"]
    assert reasons["u2"] == reasons["u4"] == ssft.REASON_NOT_SCORED
    assert reasons["u3"] == ssft.REASON_NO_FOREGROUND
    assert pseudo.select_round_pseudo(ws, None, Settings()) is None
    ws.records = {"u1": record([1.0, 0.0], 0.99), "l1": {"error": "failed"}}
    assert pseudo.select_round_pseudo(ws, teacher, Settings()) is None  # no labeled embedding: not scored yet


def test_accepted_pseudo_label_is_promoted(workspace):
    case = workspace.unlabeled_ids()[0]
    ref = read_volume(workspace.case(case).reference_label, kind="label")
    from ASSFTLib.volumes import write_volume
    write_volume(workspace.paths.pseudo_label(case), ref.array, ref.affine)
    workspace.set_qa(case, "accepted", user="test")
    result = training.finetune_round(workspace, tiny_settings())
    assert result["metrics"]["qa_promoted"] == [case]
    assert case in _checkpoint_extra(Path(result["model_path"]))["trained_on"]


def test_frozen_encoder_keeps_foundation_encoder(workspace):
    foundation = load_model(workspace.foundation_model().path)
    result = training.finetune_round(workspace, tiny_settings(finetune_mode="frozen_encoder", learning_rate=1e-2))
    new = load_model(result["model_path"])
    enc = encoder_parameter_names(new.network, new.spec)
    old_state, new_state = foundation.network.state_dict(), new.network.state_dict()
    assert enc and all(torch.equal(old_state[n], new_state[n]) for n in enc)
    shared_decoder = [n for n, _ in new.network.named_parameters()
                      if n not in enc and n in old_state and old_state[n].shape == new_state[n].shape]
    assert any(not torch.equal(old_state[n], new_state[n]) for n in shared_decoder)


def test_cancel_saves_state_and_resume_finishes(workspace, tmp_path):
    foundation = workspace.current_model()
    job_dir = tmp_path / "job"
    steps = []

    def progress(step, total, info):
        if info.get("phase") == "train":
            steps.append(step)

    with pytest.raises(JobCancelled):
        training.finetune_round(workspace, tiny_settings(), progress=progress, should_stop=lambda: len(steps) >= 2,
                                job_dir=job_dir)
    assert workspace.current_model().id == foundation.id
    assert (job_state_path(job_dir)).exists()
    assert [r.status for r in workspace.rounds("train")] == ["cancelled"]
    result = training.finetune_round(workspace, tiny_settings(), progress=progress, resume=True, job_dir=job_dir)
    assert steps == [1, 2, 3, 4]
    assert workspace.current_model().id == result["model_id"] != foundation.id
    assert not (job_state_path(job_dir)).exists()
    assert [r.status for r in workspace.rounds("train")] == ["cancelled", "finished"]


def test_no_labels_is_refused_before_a_round_starts(tmp_path, tiny_dataset, foundation_file):
    with make_workspace(tmp_path / "ws", tiny_dataset, foundation_file, tiny_settings(), n_labeled=0) as ws:
        with pytest.raises(WorkspaceError, match="no labeled volumes"):
            training.finetune_round(ws, tiny_settings())
        assert ws.rounds() == [] and ws.current_model().kind == "foundation"


def test_holdout_fold_rotates_over_all_labels():
    settings = Settings(kfold_min_labels=3)
    ids = [f"c{i}" for i in range(7)]
    folds = [training.holdout_fold(ids, settings, r) for r in range(3)]
    assert sorted(sum(folds, [])) == ids
    assert all(2 <= len(f) <= 3 for f in folds)
    assert training.holdout_fold(ids, settings, 3) == folds[0]
    assert training.holdout_fold(ids[:2], settings, 0) == []
    assert training.holdout_fold(ids, Settings(kfold_min_labels=0), 0) == []


def test_masked_dice_ce_ignores_masked_voxels():
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 4, 4, 4)
    target = torch.randint(0, 3, (1, 1, 4, 4, 4))
    weight = torch.ones(1, 1, 4, 4, 4)
    weight[..., :2] = 0
    loss = training.MaskedDiceCELoss()
    scrambled = target.clone()
    scrambled[..., :2] = (scrambled[..., :2] + 1) % 3
    assert loss(logits, target, weight).item() == pytest.approx(loss(logits, scrambled, weight).item(), rel=1e-6)
    assert loss(logits, target, torch.ones_like(weight)).item() != pytest.approx(
        loss(logits, scrambled, torch.ones_like(weight)).item(), rel=1e-3)


def test_masked_dice_ce_equals_plain_dice_ce_on_the_kept_voxels():
    """Ignored voxels must not count in any channel (MONAI's masking of class indices made them background)."""
    from monai.losses import DiceCELoss
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 4, 4, 6)
    target = torch.randint(0, 3, (2, 1, 4, 4, 6))
    weight = torch.ones(2, 1, 4, 4, 6)
    weight[..., :2] = 0
    plain = DiceCELoss(to_onehot_y=True, softmax=True)
    masked = training.MaskedDiceCELoss()
    assert masked(logits, target, weight).item() == pytest.approx(
        plain(logits[..., 2:], target[..., 2:]).item(), rel=1e-5)
    assert masked(logits, target, torch.ones_like(weight)).item() == pytest.approx(
        plain(logits, target).item(), rel=1e-5)


def test_pseudo_case_weights_follow_voxel_confidence(tiny_dataset):
    image = training.expand_image_paths([tiny_dataset])[0]
    probs = np.full((3, *SHAPE), 0.1, dtype=np.float32)
    probs[0] = 0.8
    probs[:, :4] = np.array([0.4, 0.3, 0.3], dtype=np.float32)[:, None, None, None]
    case = training.pseudo_case("x", image, probs, {"normalize": "zscore"}, tau_v=0.7)
    assert case.weight.shape == case.label.shape == case.image.shape == (1, *SHAPE)
    assert case.weight[0, :4].sum() == 0 and case.weight[0, 4:].min() == 1


def test_pseudo_command_lists_candidates_and_writes_admitted_labels(tmp_path, tiny_dataset, foundation_file, capsys):
    from ASSFTLib import cli
    settings = tiny_settings(confidence_threshold=0.0, distance_percentile=100.0)
    with make_workspace(tmp_path / "ws", tiny_dataset, foundation_file, settings) as ws:
        training.finetune_round(ws, settings)
        scoring.score_cases(ws, settings)
        unlabeled = ws.unlabeled_ids()
    capsys.readouterr()
    assert cli.main(["pseudo", str(tmp_path / "ws"), "--write"]) == 0
    out = capsys.readouterr().out
    assert all(c in out for c in unlabeled)
    written = sorted(p.name for p in (tmp_path / "ws" / "pseudo").glob("*.nii.gz"))
    admitted = [line.split()[0] for line in out.splitlines() if line.endswith(" admitted") and line.split()[0] in unlabeled]
    assert admitted and written == sorted(f"{c}.nii.gz" for c in admitted)
    label = read_volume(tmp_path / "ws" / "pseudo" / written[0], kind="label")
    assert label.shape == SHAPE and set(np.unique(label.array)) <= {0, 1, 2}
    assert f"{len(written)} pseudo-labels written for review" in out


def test_pseudo_write_with_nothing_admitted_says_so(tmp_path, tiny_dataset, foundation_file, capsys):
    from ASSFTLib import cli
    settings = tiny_settings(confidence_threshold=1.0)  # no tiny model is that sure of every voxel
    with make_workspace(tmp_path / "ws", tiny_dataset, foundation_file, settings) as ws:
        training.finetune_round(ws, settings)
        scoring.score_cases(ws, settings)
    capsys.readouterr()
    assert cli.main(["pseudo", str(tmp_path / "ws"), "--write"]) == 0
    out = capsys.readouterr().out
    assert "nothing written" in out and "no candidate was admitted" in out and "refused: " in out
    assert not list((tmp_path / "ws" / "pseudo").glob("*.nii.gz"))


def test_restart_mode_starts_from_the_foundation_every_round(workspace):
    first = training.finetune_round(workspace, tiny_settings())
    second = training.finetune_round(workspace, tiny_settings(finetune_mode="restart"))
    assert first["metrics"]["start"] == "foundation" and second["metrics"]["start"] == "foundation"
    assert workspace.rounds("train")[1].params["plan"]["source_checksum"] == workspace.foundation_model().checksum


def test_step_loop_reports_each_step_and_saves_the_step_to_resume_at(tmp_path):
    from ASSFTLib.training import loop
    torch.manual_seed(0)
    net = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    seen = []
    job = loop.StepJob(net, opt, torch.amp.GradScaler("cuda", enabled=False), tmp_path / "state.pt", {"p": 1},
                       progress=lambda s, t, info: seen.append((s, t, info)), should_stop=lambda: len(seen) >= 2)
    x = torch.ones(1, 2)

    def step_loss(step):
        return (net(x) ** 2).sum(), {"step_seen": step}

    with pytest.raises(JobCancelled, match="stopped at step 2 of 5"):
        loop.run_steps(job, 0, 5, "demo", step_loss)
    keys = ["phase", "loss", "step_seen"]
    assert [(s, t, list(i)) for s, t, i in seen] == [(1, 5, keys), (2, 5, keys)]
    assert seen[1][2]["phase"] == "demo" and seen[1][2]["step_seen"] == 1
    saved = loop.load_state(tmp_path / "state.pt")
    assert saved["step"] == 2 and saved["plan"] == {"p": 1}
    job.should_stop = None
    last = loop.run_steps(job, saved["step"], 5, "demo", step_loss)
    assert [s for s, _, _ in seen] == [1, 2, 3, 4, 5] and last == pytest.approx(seen[-1][2]["loss"], abs=1e-5)
    assert np.isnan(loop.run_steps(job, 5, 5, "demo", step_loss))  # nothing left to run


def test_rounds_from_a_foundation_without_head_keep_the_full_rate(workspace):
    """warm_lr_ratio is for adapting a model trained elsewhere: a self-supervised foundation's rounds, the
    first (new head) and the warm-started later ones, train at learning_rate."""
    settings = tiny_settings(warm_lr_ratio=0.25)
    cold = training.finetune_round(workspace, settings)
    warm = training.finetune_round(workspace, settings)
    assert cold["metrics"]["start"] == "foundation" and warm["metrics"]["start"] == "current"
    assert cold["metrics"]["learning_rate"] == warm["metrics"]["learning_rate"] == pytest.approx(
        settings.learning_rate)


def test_optimizer_runs_decoder_and_encoder_at_the_rounds_rate():
    from ASSFTLib.training.finetune import _optimizer
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    enc = {name for name, _ in net.named_parameters() if name.startswith("0.")}
    opt = _optimizer(net, enc, tiny_settings(encoder_lr_ratio=0.5), False, rate=1e-4)
    assert {g["name"]: (g["lr"], g["initial_lr"]) for g in opt.param_groups} == {
        "decoder": (1e-4, 1e-4), "encoder": (5e-5, 5e-5)}


def test_train_supervised_makes_a_headed_foundation_whose_first_round_is_warm(tmp_path, tiny_dataset,
                                                                                 foundation_file):
    """The benchmark's supervised foundation and the demo's other-site model: a head from every label of a
    folder, the throwaway workspace removed; every round of a workspace that adapts it runs at the warm rate."""
    target = training.train_supervised(tiny_dataset, foundation_file, tmp_path / "sup.pt", tiny_settings(),
                                       work=tmp_path / "work")
    assert target == tmp_path / "sup.pt" and not (tmp_path / "work").exists()
    model = load_model(target)
    assert model.spec.has_task_head and model.spec.classes == list(synthetic.CLASSES)
    ws = Workspace.create(tmp_path / "ws", tiny_dataset, settings=tiny_settings(), import_labels=False)
    case = ws.cases()[0]
    ws.save_label(case.case_id, read_volume(case.reference_label, kind="label").array, user="test")
    ws.register_model(target, kind="foundation")
    rates = []
    for mode in ("full", "full", "restart"):  # the first round, a warm-started one, one from the foundation again
        result = training.finetune_round(ws, tiny_settings(warm_lr_ratio=0.1, finetune_mode=mode))
        rates.append(result["metrics"]["learning_rate"])
    assert rates == pytest.approx([0.1 * tiny_settings().learning_rate] * 3)
    ws.close()


def test_checking_the_foundations_head_leaves_the_rounds_random_stream_alone(workspace):
    """A warm round from a self-supervised foundation loads the foundation only to see that it has no head;
    building that network must not draw from torch's seeded stream (dropout masks, new heads), or the round's
    training would change with it (it did: 0.7096 -> 0.7106 Dice in a benchmark round)."""
    from ASSFTLib.training.finetune import _start_model
    training.finetune_round(workspace, tiny_settings())  # now the current model is a headed one of this workspace
    torch.manual_seed(7)
    load_model(workspace.current_model().path)  # what a warm start itself loads
    expected = torch.get_rng_state()
    torch.manual_seed(7)
    start = _start_model(workspace, tiny_settings(), "cpu")
    assert start.source == "current" and not start.adapting
    assert torch.equal(torch.get_rng_state(), expected)

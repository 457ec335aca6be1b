"""Smoke test of the Slicer module (ASSFT/ASSFT.py and its ASSFT/ASSFTModuleLib/) outside Slicer.

Stand-ins: ONLY the names slicer-core lacks, i.e. the ``qt`` module and
``slicer.ScriptedLoadableModule`` (its four base classes, reduced to what their
constructors set).  ``ctk`` and ``slicer.app`` are not touched by importing the
module or by its logic, so they are not stood in for.  Every MRML node, the scene,
the segmentation logic and ``slicer.util`` are the real slicer-core ones; the
background job is a real worker subprocess.
"""
from __future__ import annotations

import importlib.util
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (pip install slicer-core)")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the 'slicer' package here is not Slicer's core", allow_module_level=True)

from ASSFTLib import mrml  # noqa: E402
from ASSFTLib.jobs import describe_event  # noqa: E402

MODULE_DIR = Path(__file__).resolve().parents[2] / "ASSFT"
MODULE_FILE = MODULE_DIR / "ASSFT.py"
#: The module's own package; Slicer puts the module's folder on sys.path, the fixture does the same.
MODULE_PACKAGE = "ASSFTModuleLib"


def _stand_ins() -> dict[str, types.ModuleType]:
    qt = types.ModuleType("qt")  # the module only refers to qt inside widget methods

    slm = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent):
            self.parent = parent

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent=None):
            name = type(self).__name__
            self.moduleName = name[:-len("Logic")] if name.endswith("Logic") else name

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None):
            self.parent = parent

    class ScriptedLoadableModuleTest:
        pass

    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleLogic, ScriptedLoadableModuleWidget,
                ScriptedLoadableModuleTest):
        setattr(slm, cls.__name__, cls)
    return {"qt": qt, "slicer.ScriptedLoadableModule": slm}


@pytest.fixture(scope="module")
def module():
    saved = {name: sys.modules.get(name) for name in ("qt", "slicer.ScriptedLoadableModule")}
    sys.modules.update(_stand_ins())
    sys.path.insert(0, str(MODULE_DIR))
    try:
        spec = importlib.util.spec_from_file_location("ASSFT", MODULE_FILE)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.path.remove(str(MODULE_DIR))
        for name in [n for n in sys.modules if n == MODULE_PACKAGE or n.startswith(MODULE_PACKAGE + ".")]:
            del sys.modules[name]  # built on the stand-ins: never reused by another test
        for name, value in saved.items():
            if value is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = value


@pytest.fixture()
def logic(module):
    return module.ASSFTLogic(scene=mrml.standalone_scene().scene)


@pytest.fixture()
def workspace_folder(tmp_path):
    from ASSFTLib.synthetic import make_dataset

    make_dataset(tmp_path / "data", n_cases=3, shape=(16, 20, 12), with_labels=False)
    return tmp_path


def test_module_declares_itself(module):
    parent = types.SimpleNamespace()
    module.ASSFT(parent)
    assert parent.title == "ASSFT"
    assert "Segmentations" in parent.dependencies
    assert issubclass(module.ASSFTWidget, slicer.util.VTKObservationMixin)
    assert module.ASSFTLogic(scene=mrml.standalone_scene().scene).moduleName == "ASSFT"


_LOAD_WITHOUT = """
import importlib.abc, importlib.util, sys
BLOCKED = set(sys.argv[1].split(","))

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError("not installed here: " + name)
        return None

sys.meta_path.insert(0, Block())
sys.path[:0] = [sys.argv[2], sys.argv[3]]
import test_module_smoke as t
from ASSFTLib import mrml
sys.modules.update(t._stand_ins())
spec = importlib.util.spec_from_file_location("ASSFT", t.MODULE_FILE)
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
logic = mod.ASSFTLogic(scene=mrml.standalone_scene().scene)
assert logic.getParameterNode().budget == 2
print("loaded;", ",".join(sorted(n for n in sys.modules if n.split(".")[0] in BLOCKED)) or "none of them imported")
"""


def test_module_loads_before_its_dependencies_are_installed(module):
    """The panel must load without torch, MONAI, nibabel and tqdm: it is what offers to install them."""
    import subprocess

    requirements = sys.modules[MODULE_PACKAGE + ".install"].REQUIREMENTS
    assert {"torch", "monai", "nibabel"} <= set(requirements)
    blocked = ",".join(sorted(set(requirements) | {"SimpleITK"}))
    done = subprocess.run([sys.executable, "-c", _LOAD_WITHOUT, blocked, str(Path(__file__).parent), str(MODULE_DIR)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("loaded; none of them imported"), done.stdout


def test_parameters_are_typed_and_stored_in_the_scene(module, logic):
    params = logic.getParameterNode()
    assert params.budget == 2 and params.prefill is True  # defaults before anything is stored
    params.budget = 5
    params.prefill = False
    params.overlayOpacity = 0.25
    params.workspace = "/data/ws"
    again = logic.getParameterNode()
    assert (again.budget, again.prefill, again.overlayOpacity, again.workspace) == (5, False, 0.25, "/data/ws")
    node = logic.scene.GetSingletonNode("ASSFT", "vtkMRMLScriptedModuleNode")
    assert node.GetParameter("budget") == "5"
    with pytest.raises(AttributeError):
        params.not_a_parameter = 1


def test_workspace_without_model_has_an_empty_worklist_that_says_why(logic, workspace_folder):
    summary = logic.session.create(str(workspace_folder / "ws"), str(workspace_folder / "data"))
    assert "3 volumes" in summary
    node, message = logic.worklist.update()
    assert node.IsA("vtkMRMLTableNode") and node.GetNumberOfRows() == 0
    assert "model" in message.lower()
    assert logic.worklist.nextCase() is None
    logic.session.close()


def test_label_round_trip_through_a_segmentation(logic, workspace_folder):
    from ASSFTLib.volumes import read_volume

    logic.session.create(str(workspace_folder / "ws"), str(workspace_folder / "data"))
    case_id = logic.workspace.unlabeled_ids()[0]
    image_node, seg_node, source = logic.labeling.loadCase(case_id)  # no label: starts empty
    assert source == "empty" and not logic.labeling.hasUnsavedChanges()
    image = read_volume(logic.workspace.image_path(case_id))
    np.testing.assert_allclose(mrml.node_affine(image_node), image.affine, atol=1e-6)

    label = np.zeros(image.array.shape, np.uint8)
    label[3:9, 4:12, 2:7] = 1
    mrml.segmentation_from_labelmap(logic.scene, label, image.affine, logic.workspace.classes,
                                    reference_node=image_node, node=seg_node)  # what painting does
    assert logic.labeling.hasUnsavedChanges()
    path = logic.labeling.saveCurrentLabel(user="pytest")
    assert not logic.labeling.hasUnsavedChanges()
    np.testing.assert_array_equal(read_volume(path, kind="label").array, label)
    assert case_id in logic.workspace.labeled_ids()
    assert logic.workspace.label_history(case_id)[-1]["source"] == "manual"

    # loading it again starts from the saved label
    _, seg_node2, source2 = logic.labeling.loadCase(case_id)
    assert source2 == "its saved label"
    back, _ = mrml.labelmap_from_segmentation(seg_node2, image_node, len(logic.workspace.classes))
    np.testing.assert_array_equal(back, label)
    logic.session.close()


def test_saving_without_a_loaded_case_is_a_clear_error(logic, workspace_folder):
    from ASSFTLib.errors import ASSFTError

    with pytest.raises(ASSFTError, match="no workspace"):
        logic.worklist.update()
    logic.session.create(str(workspace_folder / "ws"), str(workspace_folder / "data"))
    with pytest.raises(ASSFTError, match="no volume is loaded"):
        logic.labeling.saveCurrentLabel()
    logic.session.close()


def test_job_poller_against_a_real_worker(logic, workspace_folder):
    """A score job on a workspace without a model fails; the panel polls until the process exits."""
    logic.session.create(str(workspace_folder / "ws"), str(workspace_folder / "data"))
    job = logic.jobs.start("score", python=sys.executable)
    events, deadline = [], time.monotonic() + 120
    while time.monotonic() < deadline:
        events += job.poll()  # what the QTimer does; never blocks
        if events and events[-1]["event"] == "exit":
            break
        time.sleep(0.1)
    kinds = [e["event"] for e in events]
    assert kinds[-1] == "exit" and events[-1]["returncode"] != 0, kinds
    assert "error" in kinds, kinds
    error = next(e for e in events if e["event"] == "error")
    shown = describe_event(error)["text"]
    assert shown.startswith("Failed:") and len(shown) > len("Failed: ")
    logic.session.close()


def _run(logic, kind, args):
    """A real worker job, polled as the panel's timer does, until it exits; its events."""
    job = logic.jobs.start(kind, sys.executable, args)
    events, deadline = [], time.monotonic() + 300
    while time.monotonic() < deadline and not (events and events[-1]["event"] == "exit"):
        events += job.poll()
        time.sleep(0.05)
    assert events and events[-1]["returncode"] == 0, (events, job.stderr_tail)
    return events


@pytest.mark.torch
def test_worklist_labeling_and_pseudo_qa_with_a_scored_model(logic, tmp_path):
    """A tiny (untrained) network with a task head: ranking with reasons, Next, pre-fill and pseudo-labels from
    background predict jobs, candidates and refusals, an overlay in nodes of its own, QA."""
    import torch

    from ASSFTLib import models, scoring, synthetic

    data = synthetic.make_dataset(tmp_path / "data", 4, ("clean", "bias_contrast"), shape=(20, 24, 18),
                                  with_labels=False)
    logic.session.create(str(tmp_path / "ws"), str(data))
    ws = logic.workspace
    torch.manual_seed(0)
    spec = models.default_spec(ws.classes, patch_size=(16, 16, 16))
    spec = spec.replace(kwargs={**spec.kwargs, "channels": [4, 8, 16], "strides": [2, 2]}, has_task_head=True)
    models.save_checkpoint(tmp_path / "m.pt", models.build_network(spec), spec)
    ws.register_model(tmp_path / "m.pt", kind="finetuned")
    ws.save_label("synth_000", synthetic.make_case((0, 0), "clean", (20, 24, 18))[1])
    # open filter so that candidates exist for an untrained network (not scoring fields: the cache stays valid)
    ws.save_settings(ws.settings.replace(tta_flips=False, device="cpu", confidence_threshold=0.0,
                                         distance_percentile=100.0))
    scoring.score_cases(ws)

    logic.session.updateSettings(budget=1)
    assert ws.settings.budget == 1 and logic.session.panelSettings() == {"budget": 1, "device": "cpu"}
    node, message = logic.worklist.update()
    ids = logic.worklist.caseIds()
    assert sorted(ids) == sorted(ws.unlabeled_ids()) and node.GetNumberOfRows() == 3
    assert "3 volumes to label" in message and "Batch" in message
    rows = mrml.rows_from_table(node)
    assert [r["batch"] for r in rows] == ["yes", "", ""] and all(r["why"] for r in rows)
    assert node.GetColumnDescription("K")  # the tooltip Slicer's table view shows
    assert logic.worklist.nextCase() == ids[0] and logic.worklist.nextCase(after=ids[0]) == ids[1]
    assert logic.worklist.nextCase(after=ids[-1]) is None

    image_a, seg_a, shown = logic.labeling.loadCase(ids[0])
    assert shown == "empty" and logic.session.modelCanSegment()
    out = _run(logic, "predict", ["--case", ids[0], "--purpose", "prefill"])[-2]["outputs"][ids[0]]
    assert logic.labeling.applyPrefill(ids[0], out)
    prefilled, _ = logic.labeling.currentLabel()
    assert prefilled.shape == (20, 24, 18) and prefilled.max() < len(ws.classes)
    assert not logic.labeling.hasUnsavedChanges()  # a pre-fill alone is not the radiologist's paint

    candidates, refused, message = logic.qa.candidates()
    assert candidates and {"case_id", "confidence", "distance", "qa"} <= set(candidates[0])
    assert "synth_000" not in {r["case_id"] for r in candidates + refused}
    case_id = next(r["case_id"] for r in candidates if r["case_id"] != ids[0])
    assert logic.qa.needsPrediction(case_id)
    _run(logic, "predict", ["--case", case_id, "--purpose", "pseudo"])
    assert not logic.qa.needsPrediction(case_id)
    image_b, overlay, slice_index = logic.qa.showPseudoLabel(case_id)
    assert image_b is not image_a and overlay is not seg_a  # reviewing B never touches A's nodes
    assert logic.labeling.imageNode is image_a and logic.labeling.currentCase == ids[0]
    assert 0 <= slice_index < 18
    logic.qa.setOverlayDisplay(0.2, fill=False, outline=True)
    assert mrml.overlay_display(overlay) == {"opacity": pytest.approx(0.2), "fill": False, "outline": True}
    logic.labeling.saveCurrentLabel()  # A still saves on its own grid
    assert ids[0] in ws.labeled_ids()

    logic.qa.setQA(case_id, "rejected")
    after, refused_after, _ = logic.qa.candidates()
    assert case_id not in {r["case_id"] for r in after}  # a rejected volume is never pseudo-labeled
    logic.session.close()


@pytest.mark.torch
def test_worklist_before_the_first_score_asks_for_scoring(logic, tmp_path):
    from ASSFTLib import models, synthetic

    data = synthetic.make_dataset(tmp_path / "data", 3, ("clean",), shape=(20, 24, 18), with_labels=False)
    logic.session.create(str(tmp_path / "ws"), str(data))
    spec = models.default_spec(logic.workspace.classes, patch_size=(16, 16, 16))
    models.save_checkpoint(tmp_path / "m.pt", models.build_network(spec), spec)
    logic.workspace.register_model(tmp_path / "m.pt", kind="foundation")
    node, message = logic.worklist.update()
    assert node.GetNumberOfRows() == 0
    assert not logic.session.modelCanSegment()  # a foundation model: no pre-fill
    assert "not scored yet" in message
    logic.session.close()


def test_reasons_are_said_in_plain_words(module):
    """The worklist's "why" and the QA's refusals speak of the volume, not of K, ASD or tau."""
    import types as t

    worklist = sys.modules[MODULE_PACKAGE + ".worklist"]
    rows = [t.SimpleNamespace(K=0.9, ASD=0.1, Div=0.8), t.SimpleNamespace(K=0.1, ASD=0.9, Div=0.1),
            t.SimpleNamespace(K=0.5, ASD=0.5, Div=0.5), t.SimpleNamespace(K=None, ASD=None, Div=None)]
    why = worklist.reasons(rows)
    assert why[0] == "unlike what the model has seen; unlike the volumes already labeled"
    assert why[1] == "the model is uncertain inside the anatomy"
    assert why[2] == why[3] == "middle of the pool on every measurement"
    qa = sys.modules[MODULE_PACKAGE + ".pseudo_qa"]
    assert qa.plainReason("rejected in QA") == "you rejected it"
    for raw in ("confidence 0.512 < tau_c 0.900", "distance 0.300 > tau_d 0.120"):
        plain = qa.plainReason(raw)
        assert "tau" not in plain and ("confident" in plain or "unlike" in plain)
    assert "as many pseudo-labels" in qa.plainReason("passes, but over the cap rho*|L| = 2")

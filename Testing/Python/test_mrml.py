"""ASSFTLib.mrml against the real Slicer core (slicer-core): geometry, segmentations, tables, scenes."""
from __future__ import annotations

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (pip install slicer-core)")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the 'slicer' package here is not Slicer's core", allow_module_level=True)

from ASSFTLib import mrml  # noqa: E402
from ASSFTLib.errors import GeometryError, LabelError  # noqa: E402


def _oblique_affine(spacing=(0.8, 1.1, 2.5), origin=(-12.0, 30.5, 7.25), angle=0.4) -> np.ndarray:
    """A RAS affine with rotated axes, anisotropic spacing and an offset origin."""
    c, s = np.cos(angle), np.sin(angle)
    rot_z = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    rot_x = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    affine = np.eye(4)
    affine[:3, :3] = rot_z @ rot_x @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


def _label(shape=(9, 12, 7)) -> np.ndarray:
    """Two classes in asymmetric blocks, so any axis swap or flip changes the array."""
    label = np.zeros(shape, np.uint8)
    label[1:4, 2:9, 1:3] = 1
    label[5:8, 1:4, 3:6] = 2
    return label


@pytest.fixture()
def scene():
    return mrml.standalone_scene().scene


def test_volume_round_trip_keeps_array_order_and_geometry(scene):
    rng = np.random.default_rng(0)
    image = rng.normal(size=(9, 12, 7)).astype(np.float32)
    affine = _oblique_affine()
    node = mrml.volume_node_from_array(scene, image, affine, name="img")

    assert node.IsA("vtkMRMLScalarVolumeNode")
    assert node.GetImageData().GetDimensions() == image.shape  # VTK's (I, J, K) dims = numpy (X, Y, Z)
    np.testing.assert_allclose(node.GetSpacing(), (0.8, 1.1, 2.5))
    np.testing.assert_allclose(node.GetOrigin(), (-12.0, 30.5, 7.25))
    back, back_affine = mrml.array_from_volume_node(node)
    np.testing.assert_array_equal(back, image)
    np.testing.assert_allclose(back_affine, affine, atol=1e-9)

    # a voxel's world position agrees between our affine and Slicer's own IJK->RAS transform
    ijk = (3, 7, 5)
    matrix = slicer.vtkMatrix4x4() if hasattr(slicer, "vtkMatrix4x4") else __import__("vtk").vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    ras_slicer = matrix.MultiplyPoint((*ijk, 1.0))[:3]
    np.testing.assert_allclose(ras_slicer, (affine @ (*ijk, 1.0))[:3], atol=1e-9)


def test_labelmap_node_keeps_integer_values(scene):
    label = _label()
    node = mrml.volume_node_from_array(scene, label, _oblique_affine(), name="lab", labelmap=True)
    assert node.IsA("vtkMRMLLabelMapVolumeNode")
    back, _ = mrml.array_from_volume_node(node)
    assert back.dtype == label.dtype
    np.testing.assert_array_equal(back, label)


def test_sheared_or_broken_affine_is_refused(scene):
    sheared = np.eye(4)
    sheared[0, 1] = 0.5
    with pytest.raises(GeometryError, match="sheared"):
        mrml.volume_node_from_array(scene, np.zeros((3, 3, 3)), sheared)
    with pytest.raises(GeometryError):
        mrml.volume_node_from_array(scene, np.zeros((3, 3, 3)), np.diag([1.0, 0.0, 1.0, 1.0]))
    with pytest.raises(GeometryError, match="3D"):
        mrml.volume_node_from_array(scene, np.zeros((3, 3)), np.eye(4))


def test_labelmap_segmentation_round_trip(scene):
    label = _label()
    affine = _oblique_affine()
    image = mrml.volume_node_from_array(scene, label.astype(np.float32), affine, name="img")
    seg = mrml.segmentation_from_labelmap(scene, label, affine, ["background", "head", "tail"],
                                          reference_node=image)
    segmentation = seg.GetSegmentation()
    assert [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())] == \
        ["class_1", "class_2"]
    assert segmentation.GetSegment("class_2").GetName() == "tail"

    back, back_affine = mrml.labelmap_from_segmentation(seg, image, num_classes=3)
    np.testing.assert_array_equal(back, label)
    np.testing.assert_allclose(back_affine, affine, atol=1e-9)


def test_missing_class_still_gets_a_segment_and_keeps_its_value(scene):
    label = _label()
    label[label == 1] = 0  # only class 2 present: it must come back as 2, not 1
    affine = np.diag([1.5, 1.5, 3.0, 1.0])
    image = mrml.volume_node_from_array(scene, label.astype(np.float32), affine, name="img")
    seg = mrml.segmentation_from_labelmap(scene, label, affine, ["bg", "a", "b"], reference_node=image)
    assert seg.GetSegmentation().GetSegment("class_1") is not None
    back, _ = mrml.labelmap_from_segmentation(seg, image, num_classes=3)
    np.testing.assert_array_equal(back, label)


def test_edited_segmentation_exports_the_edit(scene):
    label = _label()
    affine = _oblique_affine()
    image = mrml.volume_node_from_array(scene, label.astype(np.float32), affine, name="img")
    seg = mrml.segmentation_from_labelmap(scene, label, affine, ["bg", "a", "b"], reference_node=image)
    edited = label.copy()
    edited[0, 0, 0] = 2
    edited[label == 1] = 0
    mrml.segmentation_from_labelmap(scene, edited, affine, ["bg", "a", "b"], reference_node=image, node=seg)
    back, _ = mrml.labelmap_from_segmentation(seg, image, num_classes=3)
    np.testing.assert_array_equal(back, edited)


def test_bad_labels_and_foreign_segments_are_refused(scene):
    affine = np.eye(4)
    with pytest.raises(LabelError, match="outside"):
        mrml.segmentation_from_labelmap(scene, np.full((4, 4, 4), 3), affine, ["bg", "a"])
    image = mrml.volume_node_from_array(scene, np.zeros((4, 4, 4)), affine)
    seg = mrml.segmentation_from_labelmap(scene, np.zeros((4, 4, 4), np.uint8), affine, ["bg", "a"],
                                          reference_node=image)
    seg.GetSegmentation().AddEmptySegment("scribble", "my scribble")
    with pytest.raises(LabelError, match="my scribble"):
        mrml.labelmap_from_segmentation(seg, image, num_classes=2)


def test_overlay_display_settings(scene):
    seg = mrml.segmentation_from_labelmap(scene, _label(), np.eye(4), ["bg", "a", "b"])
    mrml.set_overlay_display(seg, opacity=0.3, fill=False, outline=True)
    assert mrml.overlay_display(seg) == {"opacity": pytest.approx(0.3), "fill": False, "outline": True}
    assert seg.GetDisplayNode().GetOpacity2DOutline() == pytest.approx(0.6)
    mrml.set_overlay_display(seg, opacity=1.7, fill=True, outline=False)
    assert mrml.overlay_display(seg) == {"opacity": 1.0, "fill": True, "outline": False}


def test_worklist_table_round_trip(scene):
    rows = [
        {"rank": 1, "case_id": "hippocampus_003", "status": "unlabeled", "K": 0.8, "ASD": 0.4, "Div": 1.0,
         "q": 0.6, "picked": 1},
        {"rank": 2, "case_id": "hippocampus_017", "status": "unlabeled", "K": 0.2, "ASD": None, "Div": 0.5,
         "q": 0.1, "picked": 0},
    ]
    node = mrml.worklist_table(scene, rows)
    assert node.GetNumberOfRows() == 2
    assert node.GetNumberOfColumns() == len(mrml.WORKLIST_COLUMNS)
    back = mrml.rows_from_table(node)
    assert [r["case_id"] for r in back] == ["hippocampus_003", "hippocampus_017"]
    assert back[0]["q"] == pytest.approx(0.6)
    assert np.isnan(back[1]["ASD"])

    # refilling the same node replaces the rows (the worklist after a new scoring pass)
    mrml.worklist_table(scene, rows[1:], node=node)
    assert [r["case_id"] for r in mrml.rows_from_table(node)] == ["hippocampus_017"]


def test_parameter_node_is_a_singleton(scene):
    first = mrml.parameter_node(scene)
    first.SetParameter("workspace", "/data/ws")
    second = mrml.parameter_node(scene)
    assert second is not None and second.GetID() == first.GetID()
    assert second.GetParameter("workspace") == "/data/ws"


def test_scene_save_and_load(tmp_path, scene):
    label = _label()
    affine = _oblique_affine()
    image = mrml.volume_node_from_array(scene, label.astype(np.float32) * 10, affine, name="img")
    seg = mrml.segmentation_from_labelmap(scene, label, affine, ["bg", "a", "b"], reference_node=image, name="seg")
    mrml.worklist_table(scene, [{"rank": 1, "case_id": "c1", "status": "unlabeled", "q": 0.5}], name="worklist")
    mrml.parameter_node(scene).SetParameter("workspace", "/data/ws")

    path = tmp_path / "scene" / "assft.mrml"
    mrml.save_scene(scene, str(path))
    assert path.is_file()

    loaded = mrml.load_scene(str(path)).scene
    image2 = loaded.GetFirstNodeByName("img")
    array2, affine2 = mrml.array_from_volume_node(image2)
    np.testing.assert_array_equal(array2, label.astype(np.float32) * 10)
    np.testing.assert_allclose(affine2, affine, atol=1e-5)
    seg2 = loaded.GetFirstNodeByName("seg")
    back, _ = mrml.labelmap_from_segmentation(seg2, image2, num_classes=3)
    np.testing.assert_array_equal(back, label)
    assert mrml.rows_from_table(loaded.GetFirstNodeByName("worklist"))[0]["case_id"] == "c1"
    assert mrml.parameter_node(loaded).GetParameter("workspace") == "/data/ws"

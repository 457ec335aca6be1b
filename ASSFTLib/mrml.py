"""MRML side of ASSFT: numpy volumes <-> Slicer nodes, the worklist table, overlays.

This is the only file of :mod:`ASSFTLib` that imports ``slicer``.  It runs inside
3D Slicer and, for tests and offline use, against ``slicer-core`` (Slicer's Qt-free
core on PyPI) with a scene made by :func:`standalone_scene`.

Conventions (docs/architecture.md):

- Arrays are in file index order ``(X, Y, Z)`` with a 4x4 RAS voxel->world
  ``affine``.  VTK image data, and so ``slicer.util.arrayFromVolume``, index the
  same voxels as ``(K, J, I) = (Z, Y, X)``; every function here transposes at the
  boundary, so callers never see VTK's order.
- The ``affine`` *is* the node's IJKToRAS matrix: I runs along numpy axis 0.
- A segmentation made here holds one segment per foreground class with the stable
  ID ``class_<k>`` (k = 1..C-1), so the user can rename or recolour segments in the
  Segment Editor and the label values still come back unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import slicer
import vtk

from .errors import ASSFTError, GeometryError, LabelError

#: Columns of the worklist table, in display order (rows from ``scoring.rank_cases``).
WORKLIST_COLUMNS = ("rank", "case_id", "status", "K", "ASD", "Div", "q", "picked")
_TEXT_COLUMNS = {"case_id", "status", "batch", "why"}

#: Segment colours (RGB 0..1) for classes 1, 2, ...; cycles when there are more classes.
CLASS_COLORS = ((0.90, 0.35, 0.20), (0.25, 0.65, 0.95), (0.35, 0.85, 0.35), (0.95, 0.85, 0.25),
                (0.75, 0.40, 0.85), (0.30, 0.85, 0.80))


def segment_id(class_index: int) -> str:
    """Stable segment ID of foreground class ``class_index`` (>= 1)."""
    return f"class_{int(class_index)}"


# ----------------------------------------------------------------------------
# Scene set-up
# ----------------------------------------------------------------------------
@dataclass
class StandaloneScene:
    """A scene with the logics that segmentations, colours and tables need.

    Holds references to the logic objects so that they live as long as the scene.
    """

    scene: Any
    app_logic: Any
    logics: dict


def standalone_scene() -> StandaloneScene:
    """A new ``vtkMRMLScene`` with Colors, Segmentations and Tables logics registered.

    Inside Slicer the application does this; outside (slicer-core, tests, scripts)
    the logics must exist before segmentation nodes are made, or label colours and
    representation conversions fail.
    """
    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    logics = {}
    for name, cls in (("Colors", slicer.vtkSlicerColorLogic),
                      ("Segmentations", slicer.vtkSlicerSegmentationsModuleLogic),
                      ("Tables", slicer.vtkSlicerTablesLogic)):
        logic = cls()
        logic.SetMRMLApplicationLogic(app_logic)
        # The colour logic logs an error that Slicer's own colour files are absent
        # (there is no Slicer home folder here); the built-in tables still load.
        logic.SetMRMLScene(scene)
        app_logic.SetModuleLogic(name, logic)
        logics[name] = logic
    return StandaloneScene(scene=scene, app_logic=app_logic, logics=logics)


def parameter_node(scene, module_name: str = "ASSFT"):
    """The module's singleton ``vtkMRMLScriptedModuleNode`` in ``scene`` (made when absent)."""
    node = scene.GetSingletonNode(module_name, "vtkMRMLScriptedModuleNode")
    if node is None:
        node = slicer.vtkMRMLScriptedModuleNode()
        node.SetSingletonTag(module_name)
        node.SetName(module_name)
        node.SetAttribute("ModuleName", module_name)
        node = scene.AddNode(node)
    return node


# ----------------------------------------------------------------------------
# Geometry
# ----------------------------------------------------------------------------
def _check_affine(affine: np.ndarray) -> np.ndarray:
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise GeometryError(f"affine must be a finite 4x4 matrix, got shape {affine.shape}",
                            hint="pass the RAS voxel-to-world matrix of the volume")
    if not np.allclose(affine[3], (0, 0, 0, 1)):
        raise GeometryError("affine's last row must be (0, 0, 0, 1)", hint="pass a homogeneous 4x4 matrix")
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    if np.any(spacing <= 0):
        raise GeometryError(f"affine has a zero-length axis (spacing {spacing.tolist()})",
                            hint="the volume's header is broken; fix its voxel size")
    direction = affine[:3, :3] / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        raise GeometryError("affine has sheared axes, which Slicer volumes cannot represent",
                            hint="resample the volume to an orthogonal grid first")
    return affine


def set_node_affine(node, affine: np.ndarray) -> None:
    """Set a volume node's geometry (spacing, origin, directions) from a RAS ``affine``."""
    affine = _check_affine(affine)
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(affine[r, c]))
    node.SetIJKToRASMatrix(matrix)


def node_affine(node) -> np.ndarray:
    """A volume node's IJKToRAS matrix as a 4x4 numpy RAS ``affine``."""
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


# ----------------------------------------------------------------------------
# Volumes
# ----------------------------------------------------------------------------
def volume_node_from_array(scene, array: np.ndarray, affine: np.ndarray, name: str = "volume",
                           labelmap: bool = False, node=None):
    """Add (or update ``node``) a scalar or labelmap volume node holding ``array``.

    ``array``: (X, Y, Z) in file index order; ``affine``: 4x4 RAS voxel->world.
    Returns the ``vtkMRMLScalarVolumeNode`` / ``vtkMRMLLabelMapVolumeNode``.
    """
    array = np.asarray(array)
    if array.ndim != 3:
        raise GeometryError(f"{name}: expected a 3D (X, Y, Z) array, got shape {array.shape}",
                            hint="pass one channel of the volume")
    if node is None:
        cls = "vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode"
        node = scene.AddNewNodeByClass(cls, name)
    set_node_affine(node, affine)
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array.transpose(2, 1, 0)))
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    return node


def array_from_volume_node(node) -> tuple[np.ndarray, np.ndarray]:
    """``(array (X, Y, Z), affine 4x4 RAS)`` of a volume node; the array is a copy."""
    if node is None or node.GetImageData() is None:
        raise GeometryError("the volume node holds no image data", hint="load the volume first")
    array = slicer.util.arrayFromVolume(node).transpose(2, 1, 0).copy()
    return array, node_affine(node)


# ----------------------------------------------------------------------------
# Segmentations
# ----------------------------------------------------------------------------
def _segment_ids(num_classes: int) -> vtk.vtkStringArray:
    ids = vtk.vtkStringArray()
    for k in range(1, num_classes):
        ids.InsertNextValue(segment_id(k))
    return ids


def _ensure_class_segments(segmentation_node, class_names: Sequence[str]) -> None:
    segmentation = segmentation_node.GetSegmentation()
    for k in range(1, len(class_names)):
        if segmentation.GetSegment(segment_id(k)) is None:
            color = CLASS_COLORS[(k - 1) % len(CLASS_COLORS)]
            segmentation.AddEmptySegment(segment_id(k), str(class_names[k]), color)


def segmentation_from_labelmap(scene, label: np.ndarray, affine: np.ndarray, class_names: Sequence[str],
                               name: str = "segmentation", reference_node=None, node=None):
    """A ``vtkMRMLSegmentationNode`` with one segment per foreground class of ``label``.

    ``label``: (X, Y, Z) integer class indices 0..C-1; ``class_names``: C names,
    background first.  Every class gets a segment (``class_<k>``), empty when the
    label lacks it, so the user can paint it.  ``reference_node`` (the image) sets
    the segmentation's reference geometry; ``node`` updates an existing node.
    """
    label = np.asarray(label)
    num_classes = len(class_names)
    if num_classes < 2:
        raise LabelError("need at least two class names (background first)", hint="pass the dataset's labels")
    if label.size and (label.min() < 0 or label.max() >= num_classes):
        raise LabelError(f"{name}: label values {int(label.min())}..{int(label.max())} lie outside 0..{num_classes - 1}",
                         hint="check the number of classes of the dataset")
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
        node.CreateDefaultDisplayNodes()
    if reference_node is not None:
        node.SetReferenceImageGeometryParameterFromVolumeNode(reference_node)
    _ensure_class_segments(node, class_names)
    temp = volume_node_from_array(scene, label.astype(np.int16, copy=False), affine, name=f"{name}_import",
                                  labelmap=True)
    try:
        ok = slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(
            temp, node, _segment_ids(num_classes))
    finally:
        scene.RemoveNode(temp)
    if not ok:
        raise LabelError(f"{name}: Slicer could not import the labelmap into the segmentation",
                         hint="check that the label is a 3D integer volume")
    return node


def labelmap_from_segmentation(segmentation_node, reference_node, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """``(label (X, Y, Z) uint8, affine)`` of a segmentation on ``reference_node``'s grid.

    Segment ``class_<k>`` becomes value k.  Segments the user added under other
    IDs cannot be mapped to a class and raise :class:`LabelError`.
    """
    segmentation = segmentation_node.GetSegmentation()
    known = {segment_id(k) for k in range(1, num_classes)}
    extra = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())
             if segmentation.GetNthSegmentID(i) not in known]
    if extra:
        names = ", ".join(segmentation.GetSegment(s).GetName() for s in extra)
        raise LabelError(f"segments {names} do not belong to a class of this task",
                         hint="paint into the existing class segments and delete the extra ones")
    scene = segmentation_node.GetScene()
    out = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "assft_export")
    try:
        ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            segmentation_node, _segment_ids(num_classes), out, reference_node)
        if not ok:
            raise LabelError("Slicer could not export the segmentation to a labelmap",
                             hint="check that the segmentation has a reference volume")
        array, affine = array_from_volume_node(out)
    finally:
        scene.RemoveNode(out)
    return array.astype(np.uint8), affine


def set_overlay_display(segmentation_node, opacity: float = 0.5, fill: bool = True, outline: bool = True) -> None:
    """Slice-view display of a (pseudo-label) overlay: 2D opacity and fill/outline visibility."""
    display = segmentation_node.GetDisplayNode()
    if display is None:
        segmentation_node.CreateDefaultDisplayNodes()
        display = segmentation_node.GetDisplayNode()
    opacity = float(np.clip(opacity, 0.0, 1.0))
    display.SetVisibility(True)
    display.SetVisibility2DFill(bool(fill))
    display.SetVisibility2DOutline(bool(outline))
    display.SetOpacity2DFill(opacity)
    display.SetOpacity2DOutline(min(1.0, 2.0 * opacity))


def overlay_display(segmentation_node) -> dict:
    """The settings :func:`set_overlay_display` sets, read back from the display node."""
    display = segmentation_node.GetDisplayNode()
    return {"opacity": display.GetOpacity2DFill(), "fill": bool(display.GetVisibility2DFill()),
            "outline": bool(display.GetVisibility2DOutline())}


# ----------------------------------------------------------------------------
# Worklist table
# ----------------------------------------------------------------------------
def _row_value(row: Any, column: str) -> Any:
    if isinstance(row, Mapping):
        return row.get(column)
    return getattr(row, column, None)


def worklist_table(scene, rows: Iterable[Any], name: str = "ASSFT worklist",
                   columns: Sequence[str] = WORKLIST_COLUMNS, node=None, titles: dict | None = None):
    """Fill a ``vtkMRMLTableNode`` with ranked cases, one row per case.

    ``rows``: mappings or objects with the attributes in ``columns`` (rows of
    ``scoring.rank_cases``).  Numbers are stored as doubles (NaN when missing),
    ``case_id``/``status`` as text.  ``node`` is cleared and refilled.
    ``titles``: column -> (header, tooltip), shown by Slicer's table view.
    """
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    table = node.GetTable()
    table.Initialize()
    arrays = []
    for column in columns:
        array = vtk.vtkStringArray() if column in _TEXT_COLUMNS else vtk.vtkDoubleArray()
        array.SetName(column)
        table.AddColumn(array)
        arrays.append(array)
    for row in rows:
        for column, array in zip(columns, arrays):
            value = _row_value(row, column)
            if column in _TEXT_COLUMNS:
                array.InsertNextValue("" if value is None else str(value))
            else:
                array.InsertNextValue(float("nan") if value is None else float(value))
    node.SetUseColumnTitleAsColumnHeader(True)
    set_title = getattr(node, "SetColumnTitle", None) or node.SetColumnLongName  # the older name before Slicer 5.9
    for column, (title, tooltip) in (titles or {}).items():
        set_title(column, title)
        node.SetColumnDescription(column, tooltip)
    node.SetLocked(True)
    node.Modified()
    return node


def rows_from_table(node) -> list[dict]:
    """The table's rows as dicts (column name -> str or float), the inverse of :func:`worklist_table`."""
    table = node.GetTable()
    names = [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())]
    rows = []
    for r in range(table.GetNumberOfRows()):
        row = {}
        for c, name in enumerate(names):
            value = table.GetValue(r, c)
            row[name] = value.ToString() if name in _TEXT_COLUMNS else value.ToDouble()
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------
# Scene files
# ----------------------------------------------------------------------------
def save_scene(scene, mrml_path: str) -> None:
    """Write every storable node beside ``mrml_path``, then the ``.mrml`` file itself.

    Slicer's own "Save" does this through the application; this is the standalone
    equivalent (NRRD volumes, ``.seg.nrrd`` segmentations, TSV tables).
    """
    from pathlib import Path

    from .fileutil import atomic_write_text

    mrml_path = Path(mrml_path)
    folder = mrml_path.parent
    folder.mkdir(parents=True, exist_ok=True)
    nodes = scene.GetNodesByClass("vtkMRMLStorableNode")
    for i in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(i)
        if node.GetHideFromEditors() or not node.GetSaveWithScene():
            continue
        if node.GetStorageNode() is None and not node.AddDefaultStorageNode():
            continue
        storage = node.GetStorageNode()
        target = folder / f"{node.GetID()}.{storage.GetDefaultWriteFileExtension()}"
        storage.SetFileName(str(target))
        if not storage.WriteData(node):
            raise ASSFTError(f"Slicer could not write node {node.GetName()!r}", path=target,
                                hint="check free disk space and write permission")
    scene.SetRootDirectory(str(folder))
    scene.SetURL(str(mrml_path))
    scene.SetSaveToXMLString(1)
    try:
        ok = scene.Commit()
        xml = scene.GetSceneXMLString()
    finally:
        scene.SetSaveToXMLString(0)
    if not ok or not xml:
        raise ASSFTError("Slicer could not serialise the scene", path=mrml_path,
                         hint="a node of the scene cannot be saved; remove it and retry")
    atomic_write_text(mrml_path, xml)


def load_scene(mrml_path: str) -> StandaloneScene:
    """Read a ``.mrml`` file (and the node files it names) into a new standalone scene."""
    from pathlib import Path

    mrml_path = Path(mrml_path)
    if not mrml_path.is_file():
        raise ASSFTError("scene file not found", path=mrml_path, hint="check the path")
    loaded = standalone_scene()
    loaded.scene.SetURL(str(mrml_path))
    if not loaded.scene.Connect():
        raise ASSFTError("Slicer could not read the scene", path=mrml_path,
                         hint="the file is not a Slicer .mrml scene or is damaged")
    return loaded

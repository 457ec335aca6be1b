"""A stand-in Slicer application, so that ASSFT's real panel (``ASSFT/ASSFT.py``) runs under pytest.

What is real: Qt (PySide6, offscreen), slicer-core's MRML scene, nodes, logics
and ``slicer.util``, Slicer's own ``ScriptedLoadableModule.py``,
``parameterNodeWrapper/`` and ``i18n.py`` from ``../shared/slicer-python/<version>/``
(unmodified copies of Slicer 5.8.1 and 5.10.0), the module's ``.ui`` file, the
workspace, and the background jobs (real worker processes).

What is stood in for, because it exists only inside the Slicer application:

- ``qt``: PythonQt is mapped onto PySide6 with PythonQt's idioms: signal strings
  in ``connect("clicked(bool)", slot)``, slots called with as many arguments as
  they take, Qt properties read and assigned as attributes (``button.text``,
  ``label.text = ...``, ``widget.name`` for the object name).
- ``ctk`` and ``qMRML*`` C++ widgets: plain-Qt widgets with the same properties,
  signals and methods the module uses (``ctkPathLineEdit.currentPath``,
  ``ctkCollapsibleButton``, ``ctkSliderWidget``, ``qMRMLTableView`` showing a
  real ``vtkMRMLTableNode`` with its column titles and tooltips,
  ``qMRMLSegmentEditorWidget`` drawing the real segmentation over the real
  volume, and able to "paint" into it); ``ctkMessageBox`` records the dialog and
  answers from a script, since a modal dialog cannot be clicked here.
- ``slicer.app``: cursor, settings, module manager (its ``moduleAboutToBeUnloaded``
  signal is what reloading a module emits), the main window, and the startup
  environment (the launcher's PYTHONHOME/PYTHONPATH removed).
- the slice viewer: a widget that draws the real ``vtkMRMLSliceCompositeNode``'s
  background volume and the segmentations shown on it, for screenshots.
"""
from __future__ import annotations

import importlib.util
import inspect
import os
import sys
import types
from pathlib import Path
from typing import Any, Callable, Optional

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np  # noqa: E402
from PySide6 import QtCore, QtGui, QtUiTools, QtWidgets  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SLICER_PYTHON = Path(os.environ.get("ASSFT_SLICER_PYTHON", REPO.parent / "shared" / "slicer-python"))
VERSIONS = ("v5.8.1", "v5.10.0")
MODULE_DIR = REPO / "ASSFT"


# ---------------------------------------------------------------------------- PythonQt idioms on PySide6
def _trimmed(slot: Callable) -> Callable:
    """PythonQt calls a slot with only as many of the signal's arguments as it accepts."""
    try:
        params = list(inspect.signature(slot).parameters.values())
    except (TypeError, ValueError):
        return slot
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return slot
    n = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)
    return lambda *args: slot(*args[:n])


_PROPERTY_CACHE: dict[type, frozenset] = {}


def _qt_properties(cls) -> frozenset:
    if cls not in _PROPERTY_CACHE:
        meta = cls.staticMetaObject
        _PROPERTY_CACHE[cls] = frozenset(meta.property(i).name() for i in range(meta.propertyCount()))
    return _PROPERTY_CACHE[cls]


def _pythonqt_attributes(cls_holder: list) -> dict:
    """``__getattribute__``/``__setattr__`` mapping Qt properties to attributes (and ``name`` to objectName)."""

    def __getattribute__(self, name):
        if name == "name":
            return QtCore.QObject.objectName(self)
        if not name.startswith("_") and name in _qt_properties(type(self)):
            return QtCore.QObject.property(self, name)
        return super(cls_holder[0], self).__getattribute__(name)

    def __setattr__(self, name, value):
        if name in _qt_properties(type(self)):
            if not QtCore.QObject.setProperty(self, name, value):
                raise AttributeError(f"cannot set Qt property {name} of {type(self).__name__} to {value!r}")
            return
        super(cls_holder[0], self).__setattr__(name, value)

    return {"__getattribute__": __getattribute__, "__setattr__": __setattr__}


def _pythonqt_connect(self, signal, slot, *rest):
    """``obj.connect("clicked(bool)", slot)`` as in PythonQt."""
    if not isinstance(signal, str):
        return QtCore.QObject.connect(self, signal, slot, *rest)
    name, _, argtext = signal.partition("(")
    bound = getattr(self, name)
    args = [a.strip() for a in argtext.rstrip(")").split(",") if a.strip()]
    try:  # pick the overload named in the signature, as PythonQt does
        types_ = [_PY_TYPES.get(a, a) for a in args]
        bound = (bound[types_[0]] if len(types_) == 1 else bound[tuple(types_)]) if types_ else bound
    except (KeyError, IndexError, TypeError):
        pass
    return bound.connect(_trimmed(slot))


def _pythonqt_disconnect(self, signal, slot=None):
    name = signal.partition("(")[0]
    try:
        getattr(self, name).disconnect()
    except (RuntimeError, TypeError):
        pass


_PY_TYPES = {"bool": bool, "int": int, "double": float, "QString": str}
_PYTHONQT_METHODS = {"connect": _pythonqt_connect, "disconnect": _pythonqt_disconnect}
_CLASS_CACHE: dict[type, type] = {}


def pythonqt(base: type, extra: Optional[dict] = None, name: Optional[str] = None) -> type:
    """A subclass of the PySide6 class ``base`` that behaves as PythonQt's wrapper of it."""
    if extra is None and base in _CLASS_CACHE:
        return _CLASS_CACHE[base]
    holder: list = []
    cls = type(name or base.__name__, (base,), {**_PYTHONQT_METHODS, **_pythonqt_attributes(holder), **(extra or {})})
    holder.append(cls)
    if extra is None:
        _CLASS_CACHE[base] = cls
    return cls


# ---------------------------------------------------------------------------- ctk / qMRML stand-ins
class _PathLineEdit(QtWidgets.QLineEdit):
    currentPathChanged = QtCore.Signal(str)

    def __init__(self, parent=None):
        QtWidgets.QLineEdit.__init__(self, parent)
        QtWidgets.QLineEdit.textChanged.__get__(self).connect(lambda text: self.currentPathChanged.emit(text))

    def _getPath(self):
        return QtWidgets.QLineEdit.text(self)

    def _setPath(self, value):
        QtWidgets.QLineEdit.setText(self, value)

    currentPath = QtCore.Property(str, _getPath, _setPath)
    filters = QtCore.Property(int, lambda self: 0, lambda self, v: None)


class _CollapsibleButton(QtWidgets.QGroupBox):
    def _getCollapsed(self):
        return bool(QtCore.QObject.property(self, "_collapsed") or False)

    def _setCollapsed(self, value):
        QtCore.QObject.setProperty(self, "_collapsed", bool(value))

    collapsed = QtCore.Property(bool, _getCollapsed, _setCollapsed)

    def _getText(self):
        return QtWidgets.QGroupBox.title(self)

    def _setText(self, value):
        QtWidgets.QGroupBox.setTitle(self, value)

    text = QtCore.Property(str, _getText, _setText)


class _SliderWidget(QtWidgets.QDoubleSpinBox):
    def __init__(self, parent=None):
        QtWidgets.QDoubleSpinBox.__init__(self, parent)
        QtWidgets.QDoubleSpinBox.setRange(self, 0.0, 1.0)
        QtWidgets.QDoubleSpinBox.setSingleStep(self, 0.05)


class _MRMLWidget(QtWidgets.QWidget):
    mrmlSceneChanged = QtCore.Signal(object)

    def setMRMLScene(self, scene):
        self._scene = scene
        self.mrmlSceneChanged.emit(scene)


class _TableView(QtWidgets.QTableView):
    """qMRMLTableView: shows a real vtkMRMLTableNode (column titles and their tooltips)."""

    def __init__(self, parent=None):
        QtWidgets.QTableView.__init__(self, parent)
        self._model = QtGui.QStandardItemModel(self)
        QtWidgets.QTableView.setModel(self, self._model)
        QtWidgets.QTableView.setSelectionBehavior(self, QtWidgets.QAbstractItemView.SelectRows)
        QtWidgets.QTableView.setEditTriggers(self, QtWidgets.QAbstractItemView.NoEditTriggers)
        self.tableNode = None

    def setMRMLScene(self, scene):
        pass

    def setMRMLTableNode(self, node):
        self.tableNode = node
        model = self._model
        model.clear()
        if node is None:
            return
        table = node.GetTable()
        columns = [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())]
        for c, column in enumerate(columns):
            title = getattr(node, "GetColumnTitle", None) or node.GetColumnLongName
            item = QtGui.QStandardItem(title(column) or column)
            item.setToolTip(node.GetColumnDescription(column))
            model.setHorizontalHeaderItem(c, item)
        for r in range(table.GetNumberOfRows()):
            cells = []
            for c in range(len(columns)):
                value = table.GetValue(r, c)
                text = value.ToString()
                if value.IsNumeric():
                    number = value.ToDouble()
                    text = "" if number != number else (f"{number:.0f}" if columns[c] == "rank" else f"{number:.2f}")
                cells.append(QtGui.QStandardItem(text))
            model.appendRow(cells)
        QtWidgets.QTableView.resizeColumnsToContents(self)


def _render(image: np.ndarray, labels: list[tuple[np.ndarray, float]], z: Optional[int] = None,
            size: int = 300) -> QtGui.QPixmap:
    """An axial slice of ``image`` (X, Y, Z) with label overlays (array, opacity), as a pixmap."""
    from ASSFTLib.mrml import CLASS_COLORS
    if z is None:
        fg = sum((lab > 0).reshape(-1, lab.shape[-1]).sum(axis=0) for lab, _ in labels) if labels else None
        z = int(np.argmax(fg)) if fg is not None and np.any(fg) else image.shape[2] // 2
    sl = image[:, :, z].astype(np.float32)
    lo, hi = np.percentile(sl, (1, 99))
    gray = np.clip((sl - lo) / max(hi - lo, 1e-6), 0, 1)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    for lab, opacity in labels:
        ls = lab[:, :, z]
        for k in range(1, int(ls.max()) + 1):
            color = np.array(CLASS_COLORS[(k - 1) % len(CLASS_COLORS)])
            mask = ls == k
            rgb[mask] = (1 - opacity) * rgb[mask] + opacity * color
    rgb8 = np.ascontiguousarray((np.transpose(rgb, (1, 0, 2))[::-1] * 255).astype(np.uint8))  # rows = anterior up
    h, w, _ = rgb8.shape
    qimage = QtGui.QImage(rgb8.data, w, h, 3 * w, QtGui.QImage.Format_RGB888).copy()
    return QtGui.QPixmap.fromImage(qimage).scaled(size, size, QtCore.Qt.KeepAspectRatio)


class _SegmentEditor(_MRMLWidget):
    """qMRMLSegmentEditorWidget: the segmentation and source volume it edits, drawn; ``paint`` edits for real."""

    def __init__(self, parent=None):
        _MRMLWidget.__init__(self, parent)
        self.segmentationNode = self.sourceVolumeNode = self.editorNode = None
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self._title = QtWidgets.QLabel("Segment Editor (stand-in): Paint  Erase  Threshold  Islands", self)
        self._view = QtWidgets.QLabel(self)
        self._view.setMinimumHeight(160)
        self._view.setAlignment(QtCore.Qt.AlignCenter)
        layout.addWidget(self._title)
        layout.addWidget(self._view)

    def setMRMLSegmentEditorNode(self, node):
        self.editorNode = node

    def setSegmentationNode(self, node):
        self.segmentationNode = node
        self.redraw()

    def setSourceVolumeNode(self, node):
        self.sourceVolumeNode = node
        self.redraw()

    setMasterVolumeNode = setSourceVolumeNode

    def _label(self) -> np.ndarray:
        from ASSFTLib import mrml
        n = self.segmentationNode.GetSegmentation().GetNumberOfSegments() + 1
        return mrml.labelmap_from_segmentation(self.segmentationNode, self.sourceVolumeNode, n)[0]

    def paint(self, box: tuple, value: int = 1) -> int:
        """What painting with the Segment Editor does: voxels of ``box`` (slices) set to ``value``; how many changed."""
        from ASSFTLib import mrml
        label = self._label()
        before = label.copy()
        label[box] = value
        names = [self.segmentationNode.GetSegmentation().GetNthSegment(i).GetName()
                 for i in range(self.segmentationNode.GetSegmentation().GetNumberOfSegments())]
        mrml.segmentation_from_labelmap(self.segmentationNode.GetScene(), label, mrml.node_affine(self.sourceVolumeNode),
                                        ["background"] + names, reference_node=self.sourceVolumeNode,
                                        node=self.segmentationNode)
        self.redraw()
        return int(np.sum(label != before))

    def redraw(self):
        from ASSFTLib import mrml
        if self.segmentationNode is None or self.sourceVolumeNode is None:
            QtWidgets.QLabel.setText(self._view, "(no volume loaded)")
            return
        image, _ = mrml.array_from_volume_node(self.sourceVolumeNode)
        QtWidgets.QLabel.setPixmap(self._view, _render(image, [(self._label(), 0.45)], size=200))


class SliceView(QtWidgets.QLabel):
    """The red slice view: the real slice composite node's background, and the segmentations shown on it."""

    def __init__(self, scene, parent=None):
        QtWidgets.QLabel.__init__(self, parent)
        self.scene = scene
        self.composite = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode", "Red composite")
        QtWidgets.QLabel.setMinimumSize(self, 320, 320)
        QtWidgets.QLabel.setAlignment(self, QtCore.Qt.AlignCenter)
        QtWidgets.QLabel.setStyleSheet(self, "background: black; color: white")

    def redraw(self):
        from ASSFTLib import mrml
        volume = self.scene.GetNodeByID(self.composite.GetBackgroundVolumeID() or "")
        if volume is None:
            QtWidgets.QLabel.setText(self, "(empty slice view)")
            return
        image, _ = mrml.array_from_volume_node(volume)
        overlays = []
        for i in range(self.scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")):
            seg = self.scene.GetNthNodeByClass(i, "vtkMRMLSegmentationNode")
            ref = seg.GetNodeReference(seg.GetReferenceImageGeometryReferenceRole())
            display = seg.GetDisplayNode()
            if ref is not volume or display is None or not display.GetVisibility():
                continue
            n = seg.GetSegmentation().GetNumberOfSegments() + 1
            opacity = display.GetOpacity2DFill() if display.GetVisibility2DFill() else 0.2
            overlays.append((mrml.labelmap_from_segmentation(seg, volume, n)[0], float(opacity)))
        QtWidgets.QLabel.setPixmap(self, _render(image, overlays))


class MessageBox:
    """ctkMessageBox: records each dialog and answers with the next scripted button (default: the first one)."""

    log: list = []
    answers: list = []

    def __init__(self, parent=None):
        self.text = self.windowTitle = self.detailedText = ""
        self.icon = None
        self.standardButtons = QtWidgets.QMessageBox.Ok
        self.dontShowAgainSettingsKey = ""

    def deleteLater(self):
        pass

    def exec_(self):
        answer = MessageBox.answers.pop(0) if MessageBox.answers else QtWidgets.QMessageBox.Ok
        MessageBox.log.append({"title": self.windowTitle.strip(), "text": self.text, "answer": answer})
        return answer

    exec = exec_


# ---------------------------------------------------------------------------- qt, ctk, slicer.app
class _UiLoader(QtUiTools.QUiLoader):
    STANDINS = {"ctkPathLineEdit": _PathLineEdit, "ctkCollapsibleButton": _CollapsibleButton,
                "ctkSliderWidget": _SliderWidget, "qMRMLWidget": _MRMLWidget, "qMRMLTableView": _TableView,
                "qMRMLSegmentEditorWidget": _SegmentEditor}

    def createWidget(self, className, parent=None, name=""):
        base = self.STANDINS.get(className) or getattr(QtWidgets, className, None)
        if base is None:
            return super().createWidget(className, parent, name)
        widget = pythonqt(base)(parent)
        QtCore.QObject.setObjectName(widget, name)
        return widget


def make_qt_module() -> types.ModuleType:
    qt = types.ModuleType("qt")
    for module in (QtCore, QtGui, QtWidgets):
        for key in dir(module):
            if key.startswith("Q") or key == "Qt":
                value = getattr(module, key)
                setattr(qt, key, pythonqt(value) if isinstance(value, type) and issubclass(value, QtCore.QObject)
                        and key not in ("QObject", "QCoreApplication", "QApplication", "QGuiApplication") else value)
    qt.QUiLoader = _UiLoader
    qt.QFile = QtCore.QFile
    qt.QSettings = QtCore.QSettings
    qt.QTableWidgetItem = QtWidgets.QTableWidgetItem
    qt.QMessageBox = QtWidgets.QMessageBox
    return qt


def make_ctk_module() -> types.ModuleType:
    ctk = types.ModuleType("ctk")
    ctk.ctkMessageBox = MessageBox
    ctk.ctkCollapsibleButton = pythonqt(_CollapsibleButton)
    ctk.ctkPathLineEdit = pythonqt(_PathLineEdit)
    ctk.ctkSliderWidget = pythonqt(_SliderWidget)

    def __getattr__(name):  # other ctk classes named by parameterNodeWrapper's connectors: never instantiated here
        cls = type(name, (QtWidgets.QWidget,), {})
        setattr(ctk, name, cls)
        return cls

    ctk.__getattr__ = __getattr__
    return ctk


class ModuleManager(QtCore.QObject):
    moduleAboutToBeUnloaded = QtCore.Signal(str)

    def connect(self, signal, slot):
        return _pythonqt_connect(self, signal, slot)

    def disconnect(self, signal, slot=None):
        return _pythonqt_disconnect(self, signal, slot)


class SlicerApp:
    """The parts of ``slicer.app`` that the module and ``slicer.util`` use."""

    applicationName = "Slicer"
    slicerHome = "/nonexistent/Slicer"  # no PythonSlicer here: jobs use the Python for jobs, or this one

    def __init__(self, qapp, launcherEnvironment: dict):
        self.qapp = qapp
        self._moduleManager = ModuleManager()
        self._launcherEnvironment = launcherEnvironment
        self.mainWindow = None

    def testingEnabled(self) -> bool:
        return False

    def translate(self, context, text):
        return QtCore.QCoreApplication.translate(context, text)

    def setOverrideCursor(self, cursor):
        QtWidgets.QApplication.setOverrideCursor(cursor)

    def restoreOverrideCursor(self):
        QtWidgets.QApplication.restoreOverrideCursor()

    def moduleManager(self):
        return self._moduleManager

    def topLevelWidgets(self):
        return [self.mainWindow] if self.mainWindow is not None else []

    def layoutManager(self):
        return None

    def processEvents(self):
        QtWidgets.QApplication.processEvents()

    def startupEnvironment(self):
        """The environment before the launcher: without what it adds (PYTHONHOME, PYTHONPATH)."""
        env = QtCore.QProcessEnvironment()
        for key, value in os.environ.items():
            if key not in self._launcherEnvironment:
                env.insert(key, value)
        return env


# ---------------------------------------------------------------------------- the application
class Harness:
    """Slicer's Python layer of one release, with the ASSFT module loaded, its panel in a main window."""

    def __init__(self, version: str, screenshots: Optional[Path] = None, settings_dir: Optional[Path] = None):
        self.version = version
        self.settings_dir = settings_dir
        self.screenshots = screenshots
        self.shots: list[Path] = []
        self._saved_modules: dict[str, Any] = {}
        self._saved_env: dict[str, Optional[str]] = {}

    # -- set-up and tear-down
    def __enter__(self) -> "Harness":
        import slicer
        from ASSFTLib import mrml
        self.qapp = QtWidgets.QApplication.instance() or QtWidgets.QApplication(["Slicer"])
        QtCore.QCoreApplication.setOrganizationName("ASSFT-tests")
        QtCore.QCoreApplication.setApplicationName(f"Slicer-{self.version}")
        if self.settings_dir is not None:  # the application settings (qt.QSettings) of this test only
            QtCore.QSettings.setDefaultFormat(QtCore.QSettings.IniFormat)
            QtCore.QSettings.setPath(QtCore.QSettings.IniFormat, QtCore.QSettings.UserScope, str(self.settings_dir))
        # Slicer's launcher sets these for its own Python; a job's Python must not see them.
        launcher = {"PYTHONHOME": str(Path(os.environ.get("TMPDIR", "/tmp")) / "Slicer-launcher-python-home")}
        for key, value in launcher.items():
            self._saved_env[key] = os.environ.get(key)
            os.environ[key] = value
        names = ("qt", "ctk", "slicer.ScriptedLoadableModule", "slicer.parameterNodeWrapper", "slicer.i18n",
                 "ASSFT", "ASSFTModuleLib")
        for name in list(sys.modules):
            if name in names or any(name.startswith(n + ".") for n in names):
                self._saved_modules[name] = sys.modules.pop(name)
        self._saved_slicer = {k: getattr(slicer, k, None) for k in ("app", "mrmlScene", "modules", "qMRMLWidget",
                                                                   "qMRMLSliderWidget", "qMRMLSpinBox",
                                                                   "qMRMLRangeWidget", "qMRMLNodeComboBox",
                                                                   "qMRMLSubjectHierarchyTreeView",
                                                                   "qMRMLSegmentsTableView",
                                                                   "ScriptedLoadableModule",
                                                                   "parameterNodeWrapper", "i18n",
                                                                   "selfTests")}
        sys.modules["qt"] = self.qt = make_qt_module()
        sys.modules["ctk"] = make_ctk_module()
        self.standalone = mrml.standalone_scene()
        self.scene = self.standalone.scene
        slicer.mrmlScene = self.scene
        slicer.app = self.app = SlicerApp(self.qapp, launcher)
        slicer.modules = types.SimpleNamespace(assft=types.SimpleNamespace(path=str(MODULE_DIR / "ASSFT.py")))
        slicer.selfTests = {}
        slicer.qMRMLWidget = pythonqt(_MRMLWidget)
        for name in ("qMRMLSliderWidget", "qMRMLSpinBox", "qMRMLRangeWidget", "qMRMLNodeComboBox",
                     "qMRMLSubjectHierarchyTreeView", "qMRMLSegmentsTableView"):
            setattr(slicer, name, type(name, (QtWidgets.QWidget,), {}))
        base = SLICER_PYTHON / self.version / "slicer"
        self._load("slicer.i18n", base / "i18n.py")
        self._load("slicer.parameterNodeWrapper", base / "parameterNodeWrapper" / "__init__.py", package=True)
        self._load("slicer.ScriptedLoadableModule", base / "ScriptedLoadableModule.py")
        sys.path.insert(0, str(MODULE_DIR))
        self.module = self._load("ASSFT", MODULE_DIR / "ASSFT.py")
        MessageBox.log, MessageBox.answers = [], []
        self._build_window()
        return self

    def _load(self, name: str, path: Path, package: bool = False):
        import slicer
        kwargs = {"submodule_search_locations": [str(path.parent)]} if package else {}
        spec = importlib.util.spec_from_file_location(name, path, **kwargs)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        if name.startswith("slicer."):
            setattr(slicer, name.split(".", 1)[1], module)
        return module

    def _build_window(self):
        self.window = pythonqt(QtWidgets.QMainWindow)()
        QtCore.QObject.setObjectName(self.window, "qSlicerMainWindow")
        central = QtWidgets.QWidget()
        row = QtWidgets.QHBoxLayout(central)
        self.moduleParent = pythonqt(_MRMLWidget)()
        QtWidgets.QWidget.setLayout(self.moduleParent, QtWidgets.QVBoxLayout())
        scroll = QtWidgets.QScrollArea()
        scroll.setWidget(self.moduleParent)
        scroll.setWidgetResizable(True)
        scroll.setFixedWidth(480)  # a module panel's usual width
        self.sliceView = SliceView(self.scene)
        row.addWidget(scroll)
        row.addWidget(self.sliceView)
        self.window.setCentralWidget(central)
        self.window.resize(880, 1400)
        self.app.mainWindow = self.window
        self.moduleInfo = types.SimpleNamespace(path=str(MODULE_DIR / "ASSFT.py"))
        self.module.ASSFT(self.moduleInfo)
        self.widget = self.module.ASSFTWidget(self.moduleParent)
        self.widget.setup()
        self.moduleParent.isEntered = True
        self.ui = self.widget.ui
        self.window.show()
        self.pump()

    def reload(self):
        """What Slicer's Reload does: ``moduleAboutToBeUnloaded`` (the widget's ``cleanup()``), then a new widget."""
        self.app.moduleManager().moduleAboutToBeUnloaded.emit("ASSFT")
        old = self.moduleParent.layout()
        while old.count():
            item = old.takeAt(0)
            if item.widget() is not None:  # gone from the window now, as Slicer's reload replaces the panel
                item.widget().hide()
                item.widget().setParent(None)
                item.widget().deleteLater()
        self.widget = self.module.ASSFTWidget(self.moduleParent)
        self.widget.setup()
        self.ui = self.widget.ui
        self.pump()

    def __exit__(self, *exc):
        import slicer
        try:
            self.widget.cleanup()
        except Exception:
            pass
        self.window.close()
        self.window.deleteLater()
        self.pump()
        sys.path.remove(str(MODULE_DIR))
        for name in [n for n in sys.modules if n in ("qt", "ctk", "ASSFT") or n.startswith("ASSFTModuleLib")
                     or n.startswith("slicer.ScriptedLoadableModule") or n.startswith("slicer.parameterNodeWrapper")
                     or n == "slicer.i18n"]:
            del sys.modules[name]
        sys.modules.update(self._saved_modules)
        for key, value in self._saved_slicer.items():
            if value is None:
                if hasattr(slicer, key):
                    delattr(slicer, key)
            else:
                setattr(slicer, key, value)
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    # -- driving
    def pump(self, seconds: float = 0.0):
        """Let Qt run (timers, signals) for ``seconds``."""
        import time
        end = time.monotonic() + seconds
        while True:
            self.qapp.processEvents()
            if time.monotonic() >= end:
                return
            time.sleep(0.02)

    def wait(self, condition: Callable[[], bool], timeout: float = 300.0, what: str = "") -> None:
        import time
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what or condition}; status: "
                                     f"{self.ui.jobStatusLabel.text!r}, dialogs: {MessageBox.log[-3:]}")
            self.pump(0.1)

    def jobsIdle(self) -> bool:
        return self.widget._job is None and self.widget._predictJob is None

    def click(self, name: str):
        button = getattr(self.ui, name)
        assert button.enabled, f"{name} is disabled"
        QtWidgets.QAbstractButton.click(button)
        self.pump()

    def set(self, name: str, prop: str, value):
        setattr(getattr(self.ui, name), prop, value)
        self.pump()

    def selectWorklistRow(self, row: int):
        view = self.ui.worklistTableView
        index = view.model().index(row, 0)
        QtWidgets.QTableView.setCurrentIndex(view, index)
        return index

    def doubleClickWorklistRow(self, row: int):
        index = self.selectWorklistRow(row)
        self.ui.worklistTableView.doubleClicked.emit(index)
        self.pump()

    def selectPseudoRow(self, row: int):
        QtWidgets.QTableWidget.selectRow(self.ui.pseudoTableWidget, row)
        self.pump()

    def dialogs(self) -> list:
        return MessageBox.log

    def answer(self, *buttons):
        MessageBox.answers.extend(buttons)

    def screenshot(self, name: str) -> Optional[Path]:
        self.sliceView.redraw()
        editor = self.ui.segmentEditorWidget
        if editor.segmentationNode is not None:
            try:
                editor.redraw()
            except Exception:
                pass
        self.pump()
        if self.screenshots is None:
            return None
        self.screenshots.mkdir(parents=True, exist_ok=True)
        path = self.screenshots / f"{len(self.shots) + 1:02d}-{name}.png"
        self.window.grab().save(str(path))
        self.shots.append(path)
        return path

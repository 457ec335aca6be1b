"""The .ui contract: every widget the module uses exists in ASSFT.ui, with the class the code assumes.

The widget names are read from every Python file of the module folder (the panel
is ASSFT/ASSFT.py; ASSFT/ASSFTModuleLib/ holds the logic and must not touch Qt).

The .ui is loaded with PySide6 offscreen (QUiLoader).  Slicer-only classes (ctk*,
qMRML*) fall back to QWidget with a warning, but object names survive, so the
names can be checked; their classes are checked against the XML itself.
"""
from __future__ import annotations

import ast
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = ROOT / "ASSFT"
MODULE_FILE = MODULE_DIR / "ASSFT.py"
#: The panel's state: the parameter node's fields and their defaults.
PARAMETERS_FILE = MODULE_DIR / "ASSFTModuleLib" / "parameters.py"
UI_FILE = ROOT / "ASSFT" / "Resources" / "UI" / "ASSFT.ui"


def _bindings() -> list[tuple[str, str, str, str]]:
    """ASSFTWidget.BINDINGS: (widget, parameter, property, signal), read from the source with ast."""
    tree = ast.parse(MODULE_FILE.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "BINDINGS" for t in node.targets):
            return [tuple(row) for row in ast.literal_eval(node.value)]
    raise AssertionError("ASSFT.py has no BINDINGS table")


def _module_files() -> list[Path]:
    """The module's Python files: the module file and its package."""
    return sorted(MODULE_DIR.rglob("*.py"))


def _names_used_by_module() -> set[str]:
    """Widget names the module reads: ``self.ui.<name>``, getattr(self.ui, "<name>") and BINDINGS."""
    source = "\n".join(path.read_text() for path in _module_files())
    names = set(re.findall(r"self\.ui\.([A-Za-z_]\w*)", source))
    names |= {row[0] for row in _bindings()}
    names |= set(re.findall(r'getattr\(self\.ui,\s*"(\w+)"\)', source))
    for tuple_text in re.findall(r"for name in \(([^)]*)\):", source):
        names |= set(re.findall(r'"(\w+(?:Button|Slider|CheckBox))"', tuple_text))
    return names


def _ui_widgets() -> dict[str, str]:
    """objectName -> class for every widget of the .ui file."""
    return {w.get("name"): w.get("class") for w in ET.parse(UI_FILE).getroot().iter("widget")}


def test_module_names_are_found_by_the_parser():
    names = _names_used_by_module()
    # a few names of each section, so that a broken parser cannot pass the contract test vacuously
    for expected in ("workspacePathLineEdit", "worklistTableView", "jobProgressBar", "pseudoTableWidget",
                     "overlayOpacitySlider", "acceptPseudoButton", "budgetSpinBox"):
        assert expected in names
    assert len(names) >= 25


def test_every_used_widget_is_in_the_ui_file():
    missing = sorted(_names_used_by_module() - set(_ui_widgets()))
    assert not missing, f"the module uses widgets that ASSFT.ui lacks: {missing}"


def test_only_the_panel_touches_qt():
    """Qt stays in the module file; its package (logic, one file per concern) neither imports Qt nor uses widgets."""
    files = _module_files()
    assert MODULE_FILE in files and len(files) > 2
    assert re.search(r"^import qt$", MODULE_FILE.read_text(), flags=re.M)
    for path in files:
        if path == MODULE_FILE:
            continue
        tree = ast.parse(path.read_text())
        imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for alias in node.names}
        imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert not imported & {"qt", "ctk", "PythonQt", "PySide2", "PySide6", "PyQt5"}, path
        assert "self.ui." not in path.read_text(), path


def test_widget_classes_match_what_the_code_calls():
    widgets = _ui_widgets()
    expected = {
        "worklistTableView": "qMRMLTableView",       # setMRMLTableNode, doubleClicked(QModelIndex)
        "pseudoTableWidget": "QTableWidget",         # setItem, selectedItems
        "overlayOpacitySlider": "ctkSliderWidget",   # valueChanged(double)
        "jobProgressBar": "QProgressBar",
        "deviceComboBox": "QComboBox",               # currentText
        "budgetSpinBox": "QSpinBox",
    }
    for name, cls in expected.items():
        assert widgets[name] == cls, name
    for widget_name, _param, prop, _signal in _bindings():
        cls = widgets[widget_name]
        if prop == "currentPath":
            assert cls == "ctkPathLineEdit", widget_name
        if prop == "checked":
            assert cls == "QCheckBox", widget_name


def test_ui_loads_offscreen_with_every_name():
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    QtWidgets = pytest.importorskip("PySide6.QtWidgets", reason="PySide6 is not installed")
    QtUiTools = pytest.importorskip("PySide6.QtUiTools")
    QtCore = pytest.importorskip("PySide6.QtCore")

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    loader = QtUiTools.QUiLoader()
    ui_file = QtCore.QFile(str(UI_FILE))
    assert ui_file.open(QtCore.QFile.ReadOnly)
    try:
        root = loader.load(ui_file)
    finally:
        ui_file.close()
    assert root is not None, loader.errorString()
    loaded = {w.objectName() for w in root.findChildren(QtCore.QObject)}
    missing = sorted(_names_used_by_module() - loaded)
    assert not missing, f"not created by the loader: {missing}"
    # the standard widgets keep the defaults the parameter node starts from
    assert root.findChild(QtWidgets.QSpinBox, "budgetSpinBox").value() == 2
    combo = root.findChild(QtWidgets.QComboBox, "deviceComboBox")
    assert [combo.itemText(i) for i in range(combo.count())] == ["auto", "cpu", "cuda"]
    assert root.findChild(QtWidgets.QCheckBox, "prefillCheckBox").isChecked()
    root.deleteLater()
    app.processEvents()


def test_parameter_defaults_agree_with_the_ui():
    """The parameter node's defaults are what the .ui shows before any state is stored."""
    source = PARAMETERS_FILE.read_text()
    body = source[source.index("class ASSFTParameterNode:"):source.index("PARAMETER_DEFAULTS")]
    defaults = dict(re.findall(r"^\s+(\w+): \w+ = (.+)$", body, flags=re.M))
    root = ET.parse(UI_FILE).getroot()

    def prop(widget: str, name: str) -> str:
        node = root.find(f".//widget[@name='{widget}']/property[@name='{name}']")
        return node[0].text

    assert defaults["budget"] == prop("budgetSpinBox", "value")
    assert defaults["prefill"].lower() == prop("prefillCheckBox", "checked")
    assert float(defaults["overlayOpacity"]) == float(prop("overlayOpacitySlider", "value"))
    assert defaults["overlayFill"].lower() == prop("overlayFillCheckBox", "checked")
    assert defaults["overlayOutline"].lower() == prop("overlayOutlineCheckBox", "checked")

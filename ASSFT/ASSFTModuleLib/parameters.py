"""The panel's state, kept in the scene's parameter node so that it survives reloading the module.

The Python that runs jobs is not here (a scene, like a workspace, may come from
someone else): the panel keeps it in Slicer's application settings.

With ``parameterNodeWrapper`` (Slicer >= 5.4) the node is wrapped as a typed
dataclass; without it (older Slicer, slicer-core) :class:`StoredParameters`
gives the same typed attributes.
"""
from __future__ import annotations

from typing import Any

from ASSFTLib import mrml

try:
    from slicer.parameterNodeWrapper import parameterNodeWrapper
except ImportError:  # Slicer < 5.4, or slicer-core outside the application
    parameterNodeWrapper = None


class ASSFTParameterNode:
    """The panel's state, kept in the scene so that it survives reloading the module."""

    workspace: str = ""
    dataset: str = ""
    model: str = ""
    device: str = "auto"
    budget: int = 2
    importLabels: bool = True
    prefill: bool = True
    overlayOpacity: float = 0.5
    overlayFill: bool = True
    overlayOutline: bool = True


#: Parameter name -> default value (its type is the parameter's type).
PARAMETER_DEFAULTS = {name: getattr(ASSFTParameterNode, name) for name in ASSFTParameterNode.__annotations__}

if parameterNodeWrapper is not None:
    ASSFTParameterNode = parameterNodeWrapper(ASSFTParameterNode)


class StoredParameters:
    """Typed access to a ``vtkMRMLScriptedModuleNode`` where ``parameterNodeWrapper`` is missing."""

    def __init__(self, node):
        object.__setattr__(self, "parameterNode", node)

    def __getattr__(self, name: str) -> Any:
        if name not in PARAMETER_DEFAULTS:
            raise AttributeError(name)
        default = PARAMETER_DEFAULTS[name]
        text = self.parameterNode.GetParameter(name)
        if text == "":
            return default
        if isinstance(default, bool):
            return text == "true"
        return type(default)(text)

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in PARAMETER_DEFAULTS:
            raise AttributeError(name)
        self.parameterNode.SetParameter(name, ("true" if value else "false") if isinstance(value, bool) else str(value))


def parameterNode(scene, moduleName: str):
    """The module's parameters in ``scene``, typed (wrapped, or :class:`StoredParameters`)."""
    node = mrml.parameter_node(scene, moduleName)
    if parameterNodeWrapper is not None:
        return ASSFTParameterNode(node)
    return StoredParameters(node)

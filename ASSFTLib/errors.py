"""Errors that reach the user.

Every error raised on bad input is an :class:`ASSFTError` that names the file
(or case) concerned and says what to do about it, so the command line, the
worker's JSON events and the Slicer panel can show one clear sentence.
"""
from __future__ import annotations

from pathlib import Path


class ASSFTError(Exception):
    """Base class: ``str(err)`` is the full message for the user.

    Parameters
    ----------
    message: what went wrong.
    path: the file or folder concerned, if any.
    hint: what the user can do about it.
    """

    def __init__(self, message: str, path: str | Path | None = None, hint: str | None = None):
        self.message = message
        self.path = None if path is None else str(path)
        self.hint = hint
        super().__init__(self.__str__())

    def __str__(self) -> str:
        text = self.message
        if self.path:
            text = f"{self.path}: {text}"
        if self.hint:
            text = f"{text} ({self.hint})"
        return text

    def to_dict(self) -> dict:
        return {"type": type(self).__name__, "message": self.message, "path": self.path, "hint": self.hint}


class VolumeError(ASSFTError):
    """A volume or label file cannot be read, or is not a usable 3D volume."""


class GeometryError(ASSFTError):
    """Image and label (or two volumes) do not share shape, spacing, origin or direction."""


class LabelError(ASSFTError):
    """A label holds values outside the dataset's classes, or cannot be saved."""


class CheckpointError(ASSFTError):
    """A model checkpoint cannot be loaded safely or does not fit the task."""


class WorkspaceError(ASSFTError):
    """The workspace folder or its database is missing, locked or inconsistent."""


class WorkspaceBusy(WorkspaceError):
    """Another process holds the workspace's job lock (the worker exits with code 4)."""


class DatasetError(ASSFTError):
    """The input dataset folder is empty, malformed, or lies about its files."""


class ArrayError(ASSFTError, ValueError):
    """An array handed to a pure function (query strategies, SSFT selection) has the wrong shape or
    non-finite values; a ``ValueError`` too, as numpy's own shape errors are."""


class JobCancelled(ASSFTError):
    """A background job was asked to stop; a resumable checkpoint was saved."""

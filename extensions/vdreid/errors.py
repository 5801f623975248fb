"""The one error hierarchy of vdreid.

Every error vdreid raises for *bad input* (a config key, a data file, a checkpoint, a run folder) or for a *fault of
the machine* (disk full, read-only folder) is a :class:`VDReIDError`. Its message names the file, line or config key,
says what was expected and what to do. The command line prints such an error as one line and exits with status 2;
any other exception is a bug in vdreid (or a library) and is shown with its traceback.

Each subclass also derives from the built-in exception a caller would naturally catch (``ValueError`` for a malformed
value, ``FileNotFoundError`` for a missing file, ...), so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class VDReIDError(Exception):
    """Base class: bad input or a machine fault, described well enough for a one-line message."""


class ConfigError(VDReIDError, ValueError):
    """A config file or command-line override names an unknown key or gives an invalid value."""


class ConfigFileNotFoundError(ConfigError, FileNotFoundError):
    """A config file named on the command line or in ``_base_`` is neither an existing file nor a shipped recipe."""


class DatasetLayoutError(VDReIDError, FileNotFoundError):
    """A folder or file the dataset layout requires is missing, empty, or outside the dataset root."""


class SplitFileError(VDReIDError, ValueError):
    """A split/index file (SYSU ``exp/*_id.txt``, RegDB/LLCM ``idx/*.txt``, ``rand_perm_cam.mat``) is malformed."""


class ImageReadError(VDReIDError, OSError):
    """An image file exists in the split but cannot be decoded."""


class PretrainedWeightsError(VDReIDError, RuntimeError):
    """Pretrained weights could not be found or do not fit the backbone."""


class CheckpointError(VDReIDError, RuntimeError):
    """A file is not a readable vdreid / torchreid / original-code checkpoint (truncated, not a checkpoint, ...)."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint file named does not exist."""


class CheckpointMismatchError(CheckpointError):
    """A state dict does not fit the model (another architecture, number of classes or configuration)."""


class NonFiniteLossError(VDReIDError, FloatingPointError):
    """A loss term became NaN or inf; training stopped before the optimiser step."""


class LeaderboardError(VDReIDError, ValueError):
    """A results JSON or the published-numbers file is malformed."""


class RunDirError(VDReIDError, RuntimeError):
    """A run folder cannot be used: it already holds another run, another process writes it, or it is not writable."""


class DiskFullError(VDReIDError, OSError):
    """Writing an output failed for lack of space; the previous file at that path is intact."""


class SyntheticTreeError(VDReIDError, FileExistsError):
    """The synthetic generator refuses to write: the folder holds a real dataset, or a synthetic tree made with other
    arguments (``--overwrite`` replaces the latter)."""


class PluginError(VDReIDError, ImportError):
    """A plug-in named with ``--plugin`` (a .py file or a module) cannot be found or imported."""


class EvaluationInputError(VDReIDError, ValueError):
    """Features, ids or options given to the evaluation (metrics, search, re-ranking) are malformed."""


__all__ = [
    "CheckpointError",
    "CheckpointMismatchError",
    "CheckpointNotFoundError",
    "ConfigError",
    "ConfigFileNotFoundError",
    "DatasetLayoutError",
    "DiskFullError",
    "EvaluationInputError",
    "ImageReadError",
    "LeaderboardError",
    "NonFiniteLossError",
    "PluginError",
    "PretrainedWeightsError",
    "RunDirError",
    "SplitFileError",
    "SyntheticTreeError",
    "VDReIDError",
]

"""Run folders: a run never destroys another run, one process writes a folder at a time, a resumed run is the run
that was started.

A *run folder* (``data.save_dir``) holds one training run: ``config.yaml``, ``train_log.jsonl``, checkpoints
(``latest.pth``, ``best_*.pth``, ``epoch_NNN.pth``), results (``results_<target>.json``), plots and tensorboard
events. The functions here take explicit arguments (no yacs) and are used by the trainer and the command line:

* :func:`check_writable` fails before any work when the folder cannot be created or written;
* :class:`RunLock` makes a second process on the same folder refuse, and takes over the lock of a crashed one;
* :func:`check_fresh` refuses to start a new run in a folder that holds one (or, with ``overwrite``, moves the old
  files aside into ``replaced-<time>/``, never deleting them);
* :func:`repair_train_log` drops a last ``train_log.jsonl`` line torn by a crash;
* :func:`resume_diff` and :func:`check_resume_config` refuse a resume whose configuration changes how the model is
  trained, and return the changes that are allowed (more epochs, evaluation, logging, paths, workers).

``docs/run-folders.md`` says the same for users.
"""

from __future__ import annotations

import errno
import fcntl
import fnmatch
import json
import logging
import os
import os.path as osp
import socket
import sys
from datetime import datetime
from typing import Any

from vdreid.atomic import atomic_write, remove_temp_files
from vdreid.data import registry as data_registry
from vdreid.errors import ConfigError, DiskFullError, RunDirError

logger = logging.getLogger(__name__)

__all__ = [
    "LATEST",
    "LOCK_NAME",
    "MISSING",
    "RESUME_MAY_CHANGE",
    "RUN_MARKERS",
    "TRAIN_LOG",
    "RunLock",
    "check_fresh",
    "check_resume_config",
    "check_writable",
    "flatten",
    "may_change_on_resume",
    "prepare_run_dir",
    "repair_train_log",
    "resume_diff",
    "run_outputs",
]

TRAIN_LOG = "train_log.jsonl"
#: the checkpoint every epoch rewrites; a resume starts from it
LATEST = "latest.pth"
#: the lock file inside a run folder (JSON: pid, host, start time and command of the process that writes the folder)
LOCK_NAME = ".vdreid.lock"
#: files whose presence means the folder holds a run (a ``config.yaml`` alone does not: no epoch ever finished)
RUN_MARKERS = (TRAIN_LOG, "*.pth", "results_*.json")
#: prefix of the sub-folder that ``overwrite`` moves a previous run into
REPLACED_PREFIX = "replaced-"


# ------------------------------------------------------------------------------------------------ a fresh folder
def run_outputs(save_dir: str) -> list[str]:
    """Names of the files in ``save_dir`` that show it holds a run (:data:`RUN_MARKERS`), sorted."""
    if not osp.isdir(save_dir):
        return []
    return sorted(n for n in os.listdir(save_dir)
                  if any(fnmatch.fnmatch(n, pat) for pat in RUN_MARKERS) and osp.isfile(osp.join(save_dir, n)))


def _fmt_names(names: list[str], limit: int = 4) -> str:
    return ", ".join(names[:limit]) + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def check_fresh(save_dir: str, overwrite: bool = False) -> str | None:
    """Make sure a *new* run may start in ``save_dir``.

    A folder that holds a run (train log, a checkpoint or results: :func:`run_outputs`) is refused with one
    :class:`~vdreid.errors.RunDirError` line naming the folder and the ways on: ``--resume latest`` to continue that
    run, another folder, or ``--overwrite``. With ``overwrite=True`` everything in the folder (except the lock file
    and earlier ``replaced-*`` folders) is moved into a new sub-folder ``replaced-<YYYYmmdd-HHMMSS>/``, nothing is
    deleted; its path is returned (None when there was nothing to move aside).
    """
    found = run_outputs(save_dir)
    if not found:
        return None
    if not overwrite:
        raise RunDirError(
            f'"{save_dir}" already holds a run ({_fmt_names(found)}). To continue it: --resume latest; to start a new '
            f"run: choose another folder (--save-dir / data.save_dir), or pass --overwrite to move the old files "
            f'into "{osp.join(save_dir, REPLACED_PREFIX)}<time>/"'
        )
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    target = osp.join(save_dir, REPLACED_PREFIX + stamp)
    k = 1
    while osp.lexists(target):
        target = osp.join(save_dir, f"{REPLACED_PREFIX}{stamp}-{k}")
        k += 1
    os.makedirs(target)
    moved = []
    for name in sorted(os.listdir(save_dir)):
        if name == LOCK_NAME or name.startswith(REPLACED_PREFIX):
            continue
        os.replace(osp.join(save_dir, name), osp.join(target, name))
        moved.append(name)
    logger.warning('--overwrite: moved the previous run in "%s" (%d entries: %s) into "%s"',
                   save_dir, len(moved), _fmt_names(moved), target)
    return target


# ------------------------------------------------------------------------------------------------ writable
def check_writable(save_dir: str) -> str:
    """Create ``save_dir`` if needed and write (then remove) a probe file in it; return its absolute path.

    Fails before any work, with one :class:`~vdreid.errors.RunDirError` line naming the folder (a read-only disk, no
    permission, a file in the way), or :class:`~vdreid.errors.DiskFullError` when not even the probe fits.
    """
    path = osp.abspath(osp.expanduser(save_dir))
    hint = "Choose a folder you can write (--save-dir / data.save_dir)."
    try:
        os.makedirs(path, exist_ok=True)
    except FileExistsError:
        raise RunDirError(f'cannot use "{path}" as the output folder: a file of that name is in the way. {hint}') \
            from None
    except OSError as exc:
        raise RunDirError(f'cannot create the output folder "{path}": {exc.strerror or exc}. {hint}') from None
    if not osp.isdir(path):
        raise RunDirError(f'cannot use "{path}" as the output folder: it is not a folder. {hint}')
    probe = osp.join(path, f".vdreid-write-test-{os.getpid()}")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            os.write(fd, b"x")
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(f'cannot write in the output folder "{path}": no space left on the device. '
                                f"Free space or choose another folder (--save-dir / data.save_dir).") from None
        raise RunDirError(f'cannot write in the output folder "{path}": {exc.strerror or exc}. {hint}') from None
    finally:
        if osp.lexists(probe):
            os.remove(probe)
    return path


# ------------------------------------------------------------------------------------------------ the lock
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _describe(holder: dict[str, Any]) -> str:
    cmd = holder.get("command")
    return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, started {holder.get('started', '?')}"
            + (f", command: {cmd}" if cmd else ""))


class RunLock:
    """``with RunLock(save_dir): ...``: exclusive use of a run folder by one process.

    The lock is the file ``save_dir/.vdreid.lock`` holding the owner's pid, host, start time and command, plus an
    advisory ``flock`` on it that the kernel drops when the owner exits or dies. A second process refuses with one
    :class:`~vdreid.errors.RunDirError` line naming the owner. A lock file left by a crashed process is taken over
    with a warning: its ``flock`` is gone, or (on file systems without ``flock``) its pid no longer exists on this
    host. A lock written on another host whose owner cannot be checked from here is refused; the message names the
    file to delete if that process is known to be gone. On normal exit (and on an exception) the lock file is
    removed. In distributed training only rank 0 takes the lock.
    """

    def __init__(self, save_dir: str) -> None:
        self.save_dir = osp.abspath(save_dir)
        self.path = osp.join(self.save_dir, LOCK_NAME)
        self._fd: int | None = None
        self.taken_over: dict[str, Any] | None = None  # the stale owner's record, when the lock was taken over

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _read(fd: int) -> dict[str, Any]:
        os.lseek(fd, 0, os.SEEK_SET)
        raw = b""
        while chunk := os.read(fd, 65536):
            raw += chunk
        try:
            rec = json.loads(raw.decode("utf-8")) if raw.strip() else {}
        except (UnicodeDecodeError, json.JSONDecodeError):
            rec = {"pid": "?", "host": "?", "started": "?", "damaged": True}
        return rec if isinstance(rec, dict) else {}

    def _record(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "host": socket.gethostname(),
                "started": datetime.now().astimezone().isoformat(timespec="seconds"),
                "command": " ".join([osp.basename(sys.argv[0] or "python")] + sys.argv[1:])[:300]}

    def _in_use(self, holder: dict[str, Any], why: str = "") -> RunDirError:
        return RunDirError(
            f'"{self.save_dir}" is in use by another vdreid process ({_describe(holder)}){why}; wait for it to '
            f'finish or use another folder. If that process is gone (e.g. its machine crashed), delete "{self.path}"'
        )

    # ------------------------------------------------------------------ acquire / release
    def acquire(self) -> RunLock:
        if self._fd is not None:
            raise RuntimeError(f"RunLock({self.save_dir!r}) is already held by this object")
        os.makedirs(self.save_dir, exist_ok=True)
        for _ in range(100):  # retried only when the file was replaced between open and lock
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            have_flock = True
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._read(fd)
                os.close(fd)
                raise self._in_use(holder) from None
            except OSError as exc:  # a file system without flock (some network mounts): pid check only
                if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    os.close(fd)
                    raise
                have_flock = False
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the previous owner removed the file after we opened it: lock the new one
                os.close(fd)
                continue
            try:
                self._take(fd, have_flock)
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
            return self
        raise RunDirError(f'could not lock "{self.path}": it keeps being replaced by another process')

    def _take(self, fd: int, have_flock: bool) -> None:
        holder = self._read(fd)
        if holder and holder.get("pid") != os.getpid():
            here = socket.gethostname()
            if holder.get("host") not in (here, "?", None):
                raise self._in_use(holder, f"; it was written on host {holder.get('host')}, where vdreid cannot "
                                           f"check from {here} whether it still runs")
            pid = holder.get("pid")
            if not have_flock and isinstance(pid, int) and _pid_alive(pid):
                raise self._in_use(holder)
            self.taken_over = holder
            logger.warning('taking over the stale lock "%s" of %s: that process no longer runs (it did not exit '
                           "normally); the run folder may hold its last complete checkpoint", self.path,
                           _describe(holder))
        data = json.dumps(self._record()).encode("utf-8")
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, data + b"\n")
        os.fsync(fd)

    def release(self) -> None:
        """Remove the lock file (when it is still ours) and drop the lock; idempotent."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            st = os.stat(self.path)
            if st.st_ino == os.fstat(fd).st_ino and self._read(fd).get("pid") == os.getpid():
                os.remove(self.path)
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> RunLock:
        return self if self.held else self.acquire()  # held already: from prepare_run_dir

    def __exit__(self, *exc: object) -> None:
        self.release()


# ------------------------------------------------------------------------------------------------ the train log
def repair_train_log(path: str) -> list[dict[str, Any]]:
    """Read ``train_log.jsonl`` (one JSON object per line) and repair a crash's damage; return the records.

    A last line that is not a complete JSON object (the process was killed while writing it) is dropped, with a
    warning naming the file and the dropped text, and the file is rewritten atomically; a complete last line that
    lacks its newline gets one (the next record would otherwise be glued to it). Damage anywhere else cannot come
    from a crash and raises :class:`~vdreid.errors.RunDirError` naming ``file:line``. A missing file gives ``[]``.
    """
    if not osp.isfile(path):
        return []
    with open(path, "rb") as f:
        raw = f.read()
    lines = raw.split(b"\n")
    ends_with_newline = lines[-1] == b""
    if ends_with_newline:
        lines.pop()
    records: list[dict[str, Any]] = []
    dropped: bytes | None = None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line.decode("utf-8"))
            if not isinstance(rec, dict):
                raise ValueError(f"a JSON {type(rec).__name__}, not an object")
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            if lineno == len(lines):
                dropped = line
                break
            raise RunDirError(
                f"{path}:{lineno}: not a JSON record ({exc}); only the last line can be torn by a crash, so this file "
                "was edited or damaged otherwise. Restore it, or remove the line to resume"
            ) from None
        records.append(rec)
    if dropped is not None or (lines and not ends_with_newline):
        text = "".join(json.dumps(r) + "\n" for r in records)
        atomic_write(path, lambda f: f.write(text), binary=False)
        if dropped is not None:
            shown = dropped[:80].decode("utf-8", "replace") + ("..." if len(dropped) > 80 else "")
            logger.warning("%s: dropped the incomplete last line %r (a crash while it was written); %d record(s) "
                           "kept", path, shown, len(records))
    return records


# ------------------------------------------------------------------------------------------------ resume policy
class _Missing:
    def __repr__(self) -> str:
        return "(absent)"


#: stands for a key that one of two configurations does not have
MISSING: Any = _Missing()

#: keys (fnmatch patterns over dotted names) that may differ on resume: they do not change how the model is trained.
#: Each dataset family adds the keys of its section that only change the evaluation (``resume_may_change``, e.g. a
#: search mode or a gallery sampler: :func:`resume_may_change_patterns`).
#: Every other key is a *training* key (``model.*``, ``sampler.*``, the method's sections, the training
#: data, ``train.lr``, ...) and a change is refused.
RESUME_MAY_CHANGE: tuple[str, ...] = (
    "train.max_epoch",  # extend (or end earlier) a run; the epochs already done stay as they ran
    "train.print_freq",
    "train.eval_freq",
    "train.eval_start",
    "train.eval_phase",  # the selection schedule and its flip: which epochs are evaluated, not how they train
    "train.eval_last",
    "train.selection_flip",
    "train.checkpoint_every",
    "train.use_gpu",
    "test.*",  # evaluation only
    "*.feature_mode",  # the test feature of a method
    "data.root",  # the data moved
    "data.save_dir",
    "data.workers",  # data order and augmentation do not depend on the worker count
    "data.targets",  # the evaluation datasets
    "data.*.direction",  # test query/gallery direction
    "data.*.num_trials",
    "model.resume",
    "model.pretrained_path",  # where the initial weights were read from; they are in the checkpoint now
)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{'train': {'lr': 1}}`` -> ``{'train.lr': 1}`` (lists and other values are leaves)."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) \
            and not isinstance(b, bool):
        return float(a) == float(b)
    return bool(a == b)


def resume_diff(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Keys whose value differs between the configuration a run started with (``saved``, e.g. from its checkpoint)
    and the current one, as ``{dotted key: (saved value, current value)}``; a key only one side has is paired
    with :data:`MISSING`. Both are plain nested dicts (``vdreid.config.to_dict(cfg)``); ``1`` equals ``1.0``."""
    a, b = flatten(saved), flatten(current)
    out = {}
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, MISSING), b.get(key, MISSING)
        if va is MISSING or vb is MISSING or not _same(va, vb):
            out[key] = (va, vb)
    return out


def may_change_on_resume(key: str) -> bool:
    """True for a key of :data:`RESUME_MAY_CHANGE` or of a dataset family's ``resume_may_change``."""
    return any(fnmatch.fnmatchcase(key, pat) for pat in resume_may_change_patterns())


def resume_may_change_patterns() -> tuple[str, ...]:
    """:data:`RESUME_MAY_CHANGE` and the evaluation-only keys every registered dataset family declares."""
    return RESUME_MAY_CHANGE + data_registry.resume_may_change_keys()


def check_resume_config(saved: dict[str, Any], current: dict[str, Any], completed_epochs: int | None = None,
                        defaults: dict[str, Any] | None = None, source: str = "the checkpoint"
                        ) -> dict[str, tuple[Any, Any]]:
    """The policy of a resume with a changed configuration; returns the allowed changes ``{key: (old, new)}``.

    Refuses (one :class:`~vdreid.errors.ConfigError` line naming every refused key with both values) when a training
    key differs: the resumed run would train with values the first epochs did not use, and the results would
    record a configuration that never ran. Keys of :data:`RESUME_MAY_CHANGE` may differ; the caller records them
    with the epoch they took effect (the results then say what ran). A key the saved configuration lacks (written by
    an older vdreid) is accepted when its current value equals ``defaults`` (the default configuration), refused
    otherwise; a key only the saved configuration has is ignored. ``train.max_epoch`` below ``completed_epochs``
    is refused.
    """
    base = flatten(defaults) if defaults else {}
    refused, allowed = [], {}
    for key, (old, new) in resume_diff(saved, current).items():
        if new is MISSING:
            continue  # a key this version no longer has: nothing can use it
        if old is MISSING and key in base and _same(base[key], new):
            continue  # added since the run started, at its default
        if may_change_on_resume(key):
            allowed[key] = (old, new)
        else:
            refused.append(f"{key} {old!r} -> {new!r}")
    if refused:
        raise ConfigError(
            f"cannot resume from {source}: training keys changed since the run started: {'; '.join(refused)}. "
            "Resume with the values it started with (its config.yaml), or start a new run in another folder; on "
            f"resume only these may change: {', '.join(resume_may_change_patterns())}"
        )
    new_max = flatten(current).get("train.max_epoch")
    if completed_epochs is not None and isinstance(new_max, int) and new_max < completed_epochs:
        raise ConfigError(f"cannot resume from {source}: train.max_epoch {new_max} is below the {completed_epochs} "
                          "epochs the run has completed; give a larger train.max_epoch")
    return allowed


# ------------------------------------------------------------------------------------------------ all together
def prepare_run_dir(save_dir: str, *, resume: bool = False, overwrite: bool = False) -> RunLock:
    """Everything a training run does to its folder before the first epoch, in order; returns the held lock.

    1. :func:`check_writable` (fails before any work); 2. :class:`RunLock` acquired (released when the returned
    object's ``with`` block ends, or by ``release()``); 3. a new run: :func:`check_fresh` (``overwrite`` moves an
    old run aside); a resumed run: :func:`repair_train_log`; 4. temporary files of an interrupted save removed.
    """
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other: resume continues the run in the folder, "
                          "overwrite moves it aside to start a new one; pass one of them")
    check_writable(save_dir)
    lock = RunLock(save_dir).acquire()
    try:
        if resume:
            repair_train_log(osp.join(save_dir, TRAIN_LOG))
        else:
            check_fresh(save_dir, overwrite=overwrite)
        remove_temp_files(save_dir)
    except BaseException:
        lock.release()
        raise
    return lock

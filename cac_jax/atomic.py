"""Atomic, verified file writes and exclusive output folders.

`write_with` is the one atomic file writer (`write_text`, `write_csv`, `write_png` and the
image writers of `volume_io` go through it): it writes into a temporary folder beside the
target, checks the file is complete (a `verify` callback, and the bytes reached the disk:
fsync'ed without error), makes it 0644 and `os.replace`s it: a reader (or a crash) never sees
a half-written output under its final name, and an existing file is only replaced by a
complete one.

`write_set` writes several files into one temporary folder inside the output folder and moves
them into place only when every one of them is complete; the file named last (e.g.
scores.json) appears last, so its presence says the set is complete.

`claim_dir` is the one way a command takes an output folder: it checks the folder before any
computation (a file, not writable, not creatable), takes an exclusive lock on it (a second
run on the same folder fails at once instead of interleaving files), removes temporary
leftovers of a killed earlier run, and on failure removes a folder it created if it stayed
empty. The lock is `flock` on the folder itself: no lock file to leave behind, and the kernel
releases it when the process dies (also after kill -9). A shard of a sharded job claims the
folder `shared`: shards run together in one folder, a whole (unsharded) run is refused while
any shard runs and the other way round. `lock_dir` locks one case folder inside it, and
`locked_file` serialises a read-modify-write (a summary file rebuilt by every shard).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
import contextlib
import csv
import errno
import fcntl
import io
import os
import shutil
import tempfile

TMP_PREFIX = ".tmp-"


class OutputDirError(OSError):
  """An output folder cannot be used (a file, not writable, locked by another run)."""


def _fsync(path: str) -> None:
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def write_with(
  path: str | os.PathLike,
  write: Callable[[str], None],
  suffix: str = "",
  verify: Callable[[str], None] | None = None,
) -> None:
  """Call `write(tmp_path)` in a temporary folder beside `path`, then move the result to `path`.

  The one atomic file writer of the package (images, PNGs, text). The temporary file has the
  final file name, so format writers that pick the format from the extension or write
  companion files (a MetaImage .mhd names its .raw) work unchanged; companions are moved into
  place first and the named file last.

  Args:
    path: the final file; its folder is created if missing.
    write: writes the complete file at the path it is given.
    suffix: ignored (the temporary file keeps the final name); accepted for older callers.
    verify: raises if the written temp file is not complete (e.g. reads it back); a full disk
      makes some writers (SimpleITK) stop early without an error.
  Every file is made 0644 (temporary files are created 0600), like the package's other outputs.
  """
  del suffix
  path = os.path.abspath(os.fspath(path))
  folder, name = os.path.split(path)
  os.makedirs(folder, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=TMP_PREFIX + "write-", dir=folder)
  try:
    tmp_path = os.path.join(tmp, name)
    write(tmp_path)
    for written in os.listdir(tmp):
      _fsync(os.path.join(tmp, written))
    if verify is not None:
      try:
        verify(tmp_path)
      except OSError as e:  # name the output, not the temporary path
        raise OSError(e.errno or errno.EIO, e.strerror or str(e), path) from None
    for written in sorted(os.listdir(tmp), key=lambda n: n == name):  # the named file last
      os.chmod(os.path.join(tmp, written), 0o644)
      os.replace(os.path.join(tmp, written), os.path.join(folder, written))
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def _check_png(path: str) -> None:
  """Raises OSError unless `path` ends with a PNG's IEND chunk (a short write drops it)."""
  with open(path, "rb") as f:
    f.seek(max(os.path.getsize(path) - 12, 0))
    if f.read(12)[4:8] != b"IEND":
      raise OSError(errno.EIO, "incomplete PNG (disk full?)", path)


def write_png(path: str | os.PathLike, save: Callable[[str], None]) -> str:
  """Write a PNG atomically, checked complete (ends with the IEND chunk); returns the path.

  `save(tmp_path)` writes it (e.g. a matplotlib `Figure.savefig` with format="png")."""
  write_with(path, save, verify=_check_png)
  return os.fspath(path)


def write_text(path: str | os.PathLike, text: str) -> None:
  """Write `text` (UTF-8) to `path` atomically; checks every byte reached the file."""
  data = text.encode("utf-8")

  def _write(tmp: str) -> None:
    with open(tmp, "wb") as f:
      f.write(data)

  def _verify(tmp: str) -> None:
    if os.path.getsize(tmp) != len(data):
      raise OSError(
        errno.EIO,
        f"short write: {os.path.getsize(tmp)} of {len(data)} bytes (disk full?)",
        os.fspath(path),
      )

  write_with(path, _write, verify=_verify)


def write_set(
  folder: str | os.PathLike,
  writers: Mapping[str, Callable[[str], None]],
  last: str | None = None,
) -> dict[str, str]:
  """Write several files, all or nothing, into `folder`.

  Args:
    folder: the output folder (exists).
    writers: {file name: write(path)}; each writer writes one complete file at the path it
      is given (atomically or not) and raises if it could not.
    last: the name moved into place last (default: the last key).
  Every file is written into a temporary folder inside `folder` first; only when all were
  written are they moved into place (one `os.replace` each, `last` last). On any error the
  temporary folder is removed and no file of the set is touched.
  Returns {name: final path}.
  """
  folder = os.fspath(folder)
  names = list(writers)
  last = names[-1] if last is None else last
  order = [n for n in names if n != last] + [last]
  tmp = tempfile.mkdtemp(prefix=TMP_PREFIX + "set-", dir=folder)
  try:
    for name in names:
      try:
        writers[name](os.path.join(tmp, name))
      except OSError as e:  # name the output, not the temporary path
        raise OSError(e.errno, e.strerror or str(e), os.path.join(folder, name)) from e
    with contextlib.suppress(FileNotFoundError):  # an old `last` must not vouch for new files
      os.remove(os.path.join(folder, last))
    for name in order:
      os.replace(os.path.join(tmp, name), os.path.join(folder, name))
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return {n: os.path.join(folder, n) for n in names}


def remove_stale(folder: str | os.PathLike) -> list[str]:
  """Remove `.tmp-*` leftovers of killed runs in `folder` (call only while holding its lock)."""
  removed = []
  folder = os.fspath(folder)
  for name in os.listdir(folder):
    if name.startswith(TMP_PREFIX):
      p = os.path.join(folder, name)
      if os.path.isdir(p) and not os.path.islink(p):
        shutil.rmtree(p, ignore_errors=True)
      else:
        with contextlib.suppress(OSError):
          os.remove(p)
      removed.append(name)
  return removed


def check_dir(path: str | os.PathLike, flag: str = "--output_dir") -> None:
  """Raises OutputDirError when `path` cannot become a writable folder (nothing is created)."""
  path = os.path.abspath(os.fspath(path))
  probe = path
  while not os.path.exists(probe):
    parent = os.path.dirname(probe)
    if parent == probe:
      break
    probe = parent
  if not os.path.isdir(probe):
    what = "is a file" if probe == path else f"lies under {probe}, which is a file"
    raise OutputDirError(errno.ENOTDIR, f"{flag} {path} {what}; give a folder")
  if not os.access(probe, os.W_OK | os.X_OK):
    raise OutputDirError(
      errno.EACCES, f"{flag} {path}: {probe} is not writable; give a folder you can write to"
    )


def _lock(fd: int, shared: bool) -> bool:
  """Take the flock on `fd` without waiting; True when it was also free for an exclusive one.

  A shared claim first tries an exclusive lock: only a run alone in the folder may remove
  leftovers, since another shard's temporary files are live.
  """
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    alone = True
  except BlockingIOError:
    if not shared:
      raise
    alone = False
  if shared:
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # raises BlockingIOError if a whole run holds it
  return alone


@contextlib.contextmanager
def claim_dir(
  path: str | os.PathLike, flag: str = "--output_dir", shared: bool = False
) -> Iterator[str]:
  """Create (if needed), lock and clean an output folder for one run; yields its absolute path.

  Raises OutputDirError (naming `flag`) before any work when the folder is a file, not
  writable, or locked by another running command. On an exception inside the block a folder
  this call created is removed if it is empty. Stale `.tmp-*` leftovers are removed (by a
  `shared` claim only when no other shard holds the folder). `shared`: one shard of a sharded
  job; shards share the folder, an exclusive claim excludes them all.
  """
  path = os.path.abspath(os.fspath(path))
  check_dir(path, flag)
  created = not os.path.exists(path)
  try:
    os.makedirs(path, exist_ok=True)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
  except OSError as e:
    raise OutputDirError(
      e.errno, f"{flag} {path}: cannot create or open the folder ({e.strerror})"
    ) from None
  try:
    try:
      alone = _lock(fd, shared)
    except BlockingIOError:
      what = "a whole (unsharded) run" if shared else "another running command"
      raise OutputDirError(
        errno.EBUSY,
        f"{flag} {path} is in use by {what} "
        "(it holds the folder's lock); wait for it to finish or give "
        "another folder",
      ) from None
    try:
      probe = tempfile.mkstemp(prefix=TMP_PREFIX + "probe-", dir=path)
    except OSError as e:
      raise OutputDirError(e.errno, f"{flag} {path} is not writable ({e.strerror})") from None
    os.close(probe[0])
    os.remove(probe[1])
    if alone:
      remove_stale(path)
    try:
      yield path
    except BaseException:
      with contextlib.suppress(OSError):
        if not shared:
          remove_stale(path)
        if created and not os.listdir(path):
          os.rmdir(path)
      raise
  finally:
    os.close(fd)  # releases the lock


def write_csv(path: str | os.PathLike, fieldnames, rows) -> None:
  """Write dict `rows` as CSV with a header (UTF-8, '\\n' line ends) atomically."""
  buf = io.StringIO()
  w = csv.DictWriter(buf, fieldnames=list(fieldnames), lineterminator="\n")
  w.writeheader()
  w.writerows(rows)
  write_text(path, buf.getvalue())


@contextlib.contextmanager
def lock_dir(path: str | os.PathLike) -> Iterator[bool]:
  """Hold an exclusive flock on folder `path` (created if missing); yields False if it is busy.

  For one case folder of a shared output folder: two runs never write one case at once.
  """
  os.makedirs(path, exist_ok=True)
  fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      yield False
      return
    yield True
  finally:
    os.close(fd)


@contextlib.contextmanager
def locked_file(path: str | os.PathLike) -> Iterator[None]:
  """Hold an exclusive flock on the (empty) lock file `path`, waiting for it.

  Serialises the rebuilds of a file that several processes read and then replace, so the last
  rebuild sees every earlier one's inputs. The lock file stays (it holds no data).
  """
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX)
    yield
  finally:
    os.close(fd)

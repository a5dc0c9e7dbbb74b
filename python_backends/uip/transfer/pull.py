"""Pull a pushed folder: missing parts in parallel into a staging folder, each part checked
against the manifest as it lands (a bad one is refetched, never kept), every file checked once
more at the end, then one rename into place."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from uip.transfer.manifest import MANIFEST_NAME, FileEntry, Manifest, part_range
from uip.transfer.options import TransferError, TransferOptions
from uip.transfer.parts import CorruptPart, Sidecar, with_retry
from uip.transfer.progress import bar
from uip.transfer.stores import Store, open_store


@dataclass(frozen=True)
class PullResult:
    dest: Path
    fetched_parts: int  # parts fetched by this run (resumed and up-to-date pulls fetch fewer)
    fetched_bytes: int
    up_to_date: bool  # the destination already held this manifest's verified folder


def staging_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".uip-partial")


def sidecar_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".uip-parts.json")


def is_pulled(dest: Path, manifest_bytes: bytes | None = None) -> bool:
    """A folder a pull renamed into place (hence verified); of this manifest when given."""
    local = dest / MANIFEST_NAME
    if not local.is_file():
        return False
    return manifest_bytes is None or local.read_bytes() == manifest_bytes


def pull(url: str, dest: Path, options: TransferOptions | None = None, force: bool = False
         ) -> PullResult:
    """Pull the folder at `url` into `dest` (created; an existing other folder only with force)."""
    options = options or TransferOptions()
    dest = Path(os.path.abspath(dest))
    store = open_store(url, options)
    raw = with_retry(f"{url}/{MANIFEST_NAME}", lambda: store.read(MANIFEST_NAME), options)
    manifest = Manifest.from_json(raw, url)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _locked(dest):
        if is_pulled(dest, raw):
            return PullResult(dest, 0, 0, True)
        if dest.exists() and not force and (not dest.is_dir() or any(dest.iterdir())):
            raise TransferError(f"{dest} exists and is not the artifact at {url}; remove it or "
                                "pull with --force to replace it")
        parts, nbytes = _fetch(store, manifest, hashlib.sha256(raw).hexdigest(), dest, options)
        staging = staging_path(dest)
        (staging / MANIFEST_NAME).write_bytes(raw)
        old = dest.with_name(dest.name + ".uip-old")  # --force: the old folder moves aside first
        if old.exists():  # left by a crash between the two renames below
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        if dest.exists():
            os.rename(dest, old)
        os.rename(staging, dest)
        sidecar_path(dest).unlink(missing_ok=True)
        if old.exists():
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    return PullResult(dest, parts, nbytes, False)


@contextmanager
def _locked(dest: Path) -> Iterator[None]:
    """One pull per destination at a time (two `uip serve`s pulling the same cache entry)."""
    with open(dest.with_name(dest.name + ".uip-lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _part_ok(fd: int, entry: FileEntry, part_size: int, index: int) -> bool:
    offset, length = part_range(entry.size, part_size, index)
    data = os.pread(fd, length, offset)
    return len(data) == length and hashlib.sha256(data).hexdigest() == entry.parts[index]


def _fetch(store: Store, manifest: Manifest, manifest_sha: str, dest: Path,
           options: TransferOptions) -> tuple[int, int]:
    """Fill the staging folder; returns (parts fetched, bytes fetched)."""
    staging = staging_path(dest)
    sidecar = Sidecar.load(sidecar_path(dest), manifest_sha)
    if not sidecar.done and staging.exists():
        shutil.rmtree(staging)  # leftovers of another manifest or of an unrecorded start
    staging.mkdir(exist_ok=True)
    fds: dict[str, int] = {}
    try:
        todo: list[tuple[FileEntry, int]] = []
        for f in manifest.files:
            path = staging / f.path
            path.parent.mkdir(parents=True, exist_ok=True)
            fds[f.path] = fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            if os.fstat(fd).st_size != f.size:
                os.ftruncate(fd, f.size)
            for i in range(len(f.parts)):
                # a part recorded as done is checked again: a killed writer may have left less
                if sidecar.is_done(f.path, i) and _part_ok(fd, f, manifest.part_size, i):
                    continue
                sidecar.done.get(f.path, set()).discard(i)
                todo.append((f, i))
        sidecar.save()
        nbytes = sum(part_range(f.size, manifest.part_size, i)[1] for f, i in todo)
        digests = {f.path: _FileDigest(f, manifest.part_size, fds[f.path]) for f in manifest.files}
        missing = {(f.path, i) for f, i in todo}
        for f in manifest.files:  # parts already on disk count as arrived
            for i in range(len(f.parts)):
                if (f.path, i) not in missing:
                    digests[f.path].arrived(i)
        _run_parts(store, manifest, todo, fds, sidecar, options, nbytes, digests)
        _verify_files(manifest, sidecar, digests)
        for fd in fds.values():
            os.fsync(fd)
    finally:
        for fd in fds.values():
            os.close(fd)
    return len(todo), nbytes


class _FileDigest:
    """A file's sha256, computed as its parts arrive (in file order, each part read back from
    disk once the ones before it are there), so the check of the whole file overlaps the
    download instead of reading everything again at the end."""

    def __init__(self, entry: FileEntry, part_size: int, fd: int):
        self.entry, self.part_size, self.fd = entry, part_size, fd
        self.hash = hashlib.sha256()
        self.next = 0
        self.ready: set[int] = set()

    def arrived(self, index: int) -> None:
        self.ready.add(index)
        while self.next in self.ready:
            self.ready.discard(self.next)
            offset, length = part_range(self.entry.size, self.part_size, self.next)
            self.hash.update(os.pread(self.fd, length, offset))
            self.next += 1

    def hexdigest(self) -> str:
        assert self.next == len(self.entry.parts), "not every part has arrived"
        return self.hash.hexdigest()


def _run_parts(store: Store, manifest: Manifest, todo: list[tuple[FileEntry, int]],
               fds: dict[str, int], sidecar: Sidecar, options: TransferOptions,
               nbytes: int, digests: dict[str, _FileDigest]) -> None:
    def fetch(f: FileEntry, i: int) -> int:
        offset, length = part_range(f.size, manifest.part_size, i)

        def once() -> bytes:
            data = store.read_range(f.path, offset, length)
            if len(data) != length:
                raise CorruptPart(f"got {len(data)} bytes, expected {length}")
            if hashlib.sha256(data).hexdigest() != f.parts[i]:
                raise CorruptPart("sha256 differs from the manifest")
            return data

        data = with_retry(f"{store.url}/{f.path} part {i + 1}/{len(f.parts)}", once, options)
        os.pwrite(fds[f.path], data, offset)
        sidecar.mark(f.path, i)
        return length

    pool = ThreadPoolExecutor(options.parallel, thread_name_prefix="uip-pull")
    progress = bar(f"pull {store.url}", nbytes, options.progress)
    futures = {pool.submit(fetch, f, i): (f, i) for f, i in todo}
    try:
        for fut in as_completed(futures):
            progress.update(fut.result())
            f, i = futures[fut]
            digests[f.path].arrived(i)
            if options.on_part is not None:
                options.on_part(f.path, i)
    finally:  # on an error or Ctrl-C: parts in flight finish and are recorded, the rest wait
        pool.shutdown(wait=True, cancel_futures=True)
        progress.close()


def _verify_files(manifest: Manifest, sidecar: Sidecar, digests: dict[str, _FileDigest]
                  ) -> None:
    """Whole-file sha256 of every file before the folder can be used."""
    for f in manifest.files:
        got = digests[f.path].hexdigest()
        if got != f.sha256:
            sidecar.done.pop(f.path, None)
            sidecar.save()
            raise TransferError(f"{f.path}: sha256 {got} differs from the manifest's "
                                f"{f.sha256} although every part matched (a manifest that does "
                                "not add up); its parts will be fetched again on the next pull")

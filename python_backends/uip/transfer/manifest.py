"""The sha256 manifest a push writes next to the files: per file size + sha256, per part sha256."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from uip.transfer.options import TransferError

MANIFEST_NAME = "uip-manifest.json"
VERSION = 1
_READ = 1024 * 1024


@dataclass(frozen=True)
class FileEntry:
    path: str  # POSIX path relative to the folder
    size: int
    sha256: str
    parts: tuple[str, ...]  # sha256 of each part_size slice, the last one shorter


@dataclass(frozen=True)
class Manifest:
    part_size: int
    files: tuple[FileEntry, ...]

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> bytes:
        doc = {"version": VERSION, "part_size": self.part_size,
               "files": [{"path": f.path, "size": f.size, "sha256": f.sha256,
                          "parts": list(f.parts)} for f in self.files]}
        return json.dumps(doc, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> Manifest:
        try:
            doc = json.loads(data)
            if doc.get("version") != VERSION:
                raise ValueError(f"version {doc.get('version')!r}, expected {VERSION}")
            part_size = int(doc["part_size"])
            files = tuple(FileEntry(str(f["path"]), int(f["size"]), str(f["sha256"]),
                                    tuple(f["parts"])) for f in doc["files"])
        except (ValueError, KeyError, TypeError) as e:
            raise TransferError(f"{where}: not a valid {MANIFEST_NAME}: {e}") from None
        manifest = cls(part_size, files)
        manifest.check(where)
        return manifest

    def check(self, where: str) -> None:
        """Reject a manifest that could write outside the folder or does not add up."""
        if self.part_size < 1:
            raise TransferError(f"{where}: part_size must be positive")
        seen: set[str] = set()
        for f in self.files:
            p = PurePosixPath(f.path)
            if p.is_absolute() or ".." in p.parts or not p.parts or f.path == MANIFEST_NAME:
                raise TransferError(f"{where}: unsafe file path {f.path!r} in the manifest")
            if f.path in seen:
                raise TransferError(f"{where}: {f.path!r} is listed twice")
            seen.add(f.path)
            if len(f.parts) != part_count(f.size, self.part_size):
                raise TransferError(f"{where}: {f.path!r} has {len(f.parts)} part hashes, "
                                    f"expected {part_count(f.size, self.part_size)}")


def part_count(size: int, part_size: int) -> int:
    return -(-size // part_size)


def part_range(size: int, part_size: int, index: int) -> tuple[int, int]:
    """(offset, length) of part `index` of a file of `size` bytes."""
    offset = index * part_size
    return offset, min(part_size, size - offset)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_READ):
            h.update(block)
    return h.hexdigest()


def hash_file(path: Path, rel: str, part_size: int) -> FileEntry:
    """One read of the file: its sha256 and the sha256 of each part."""
    whole = hashlib.sha256()
    parts: list[str] = []
    with open(path, "rb") as f:
        while True:
            part = hashlib.sha256()
            left = part_size
            while left and (block := f.read(min(_READ, left))):
                whole.update(block)
                part.update(block)
                left -= len(block)
            if left == part_size:
                break
            parts.append(part.hexdigest())
    return FileEntry(rel, path.stat().st_size, whole.hexdigest(), tuple(parts))


def folder_files(folder: Path) -> list[tuple[str, Path]]:
    """(relative POSIX path, path) of every regular file under `folder`, sorted; the manifest
    itself left out. Symlinks are refused: a pushed folder is plain files."""
    out = []
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        for name in sorted(names):
            p = Path(root) / name
            rel = p.relative_to(folder).as_posix()
            if rel == MANIFEST_NAME:
                continue
            if p.is_symlink() or not p.is_file():
                raise TransferError(f"{p} is not a regular file; push copies plain files only")
            out.append((rel, p))
    return out


def build_manifest(folder: Path, part_size: int) -> Manifest:
    from concurrent.futures import ThreadPoolExecutor

    files = folder_files(folder)
    with ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:  # hashlib frees the GIL
        entries = pool.map(lambda rp: hash_file(rp[1], rp[0], part_size), files)
        return Manifest(part_size, tuple(entries))

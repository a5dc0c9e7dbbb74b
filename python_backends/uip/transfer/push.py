"""Push a folder: every file (large ones as parallel multipart parts where the store has
multipart upload), then the manifest last, so a prefix without a manifest is never pulled."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from uip.transfer.manifest import MANIFEST_NAME, FileEntry, build_manifest, part_range
from uip.transfer.options import TransferError, TransferOptions
from uip.transfer.parts import with_retry
from uip.transfer.progress import bar
from uip.transfer.stores import Multipart, open_store


@dataclass(frozen=True)
class PushResult:
    files: int
    bytes: int
    multipart_files: int


def _read_part(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def push(folder: Path, url: str, options: TransferOptions | None = None) -> PushResult:
    options = options or TransferOptions()
    if not folder.is_dir():
        raise TransferError(f"{folder} is not a folder")
    manifest = build_manifest(folder, options.part_size)
    store = open_store(url, options)
    uploads: dict[str, tuple[Multipart, dict[int, str], int]] = {}  # path -> (mp, tags, parts)
    pool = ThreadPoolExecutor(options.parallel, thread_name_prefix="uip-push")
    progress = bar(f"push {url}", manifest.total_bytes, options.progress)
    futures: dict[Future, tuple[FileEntry, int | None]] = {}
    multipart_files = 0

    def part_job(f: FileEntry, mp: Multipart, i: int) -> str:
        offset, length = part_range(f.size, manifest.part_size, i)
        return with_retry(f"{url}/{f.path} part {i + 1}/{len(f.parts)}",
                          lambda: mp.upload_part(i + 1, _read_part(folder / f.path, offset,
                                                                   length)), options)

    try:
        for f in manifest.files:
            mp = None
            if len(f.parts) > 1:
                mp = with_retry(f"{url}/{f.path}: start upload",
                                lambda f=f: store.start_multipart(f.path), options)
            if mp is None:
                fut = pool.submit(with_retry, f"{url}/{f.path}",
                                  lambda f=f: store.put_file(f.path, folder / f.path), options)
                futures[fut] = (f, None)
                continue
            uploads[f.path] = (mp, {}, len(f.parts))
            multipart_files += 1
            for i in range(len(f.parts)):
                futures[pool.submit(part_job, f, mp, i)] = (f, i)
        for fut in as_completed(futures):
            f, i = futures[fut]
            tag = fut.result()
            if i is None:
                progress.update(f.size)
                continue
            progress.update(part_range(f.size, manifest.part_size, i)[1])
            mp, tags, n = uploads[f.path]
            tags[i + 1] = tag
            if len(tags) == n:
                with_retry(f"{url}/{f.path}: complete upload",
                           lambda mp=mp, tags=tags: mp.complete(tags), options)
                del uploads[f.path]
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        for mp, _, _ in uploads.values():
            try:
                mp.abort()
            except Exception:  # noqa: BLE001 - best effort; the original error matters
                pass
        raise
    finally:
        pool.shutdown(wait=True)
        progress.close()
    with_retry(f"{url}/{MANIFEST_NAME}", lambda: store.write(MANIFEST_NAME, manifest.to_json()),
               options)
    return PushResult(len(manifest.files), manifest.total_bytes, multipart_files)

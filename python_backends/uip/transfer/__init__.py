"""Artifact store: folders pushed to and pulled from `s3://bucket/prefix` and `http(s)://`.

A pushed folder is its files plus `uip-manifest.json` (per file: size, sha256 and the sha256 of
each part). A pull fetches the parts in parallel into a staging folder beside the destination,
checks every part and then every file against the manifest, keeps per-part state in a sidecar
(an interrupted pull resumes with the missing parts only) and renames the folder into place.
"""

from uip.transfer.options import TransferError, TransferOptions
from uip.transfer.pull import pull
from uip.transfer.push import push

__all__ = ["TransferError", "TransferOptions", "pull", "push"]

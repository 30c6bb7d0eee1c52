"""Receiving a chunked tensor upload: header, size limit, checksum, safe parsing, storage."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from intermod.v1 import intermod_pb2 as pb

from . import tensors
from .errors import InvalidArgument, ResourceExhausted
from .storage import TMP_SUFFIX, Store, atomic_path, new_id

FORMATS = {pb.TENSOR_FORMAT_SAFETENSORS: "safetensors", pb.TENSOR_FORMAT_NPY: "npy"}


def check_header(header: pb.UploadHeader, limit: int) -> None:
    if header.format not in FORMATS:
        raise InvalidArgument("header.format", "must be TENSOR_FORMAT_SAFETENSORS or "
                                               "TENSOR_FORMAT_NPY")
    if header.total_bytes <= 0:
        raise InvalidArgument("header.total_bytes", "must be positive")
    if header.total_bytes > limit:
        raise ResourceExhausted(f"upload of {header.total_bytes} bytes exceeds the server's "
                                f"limit of {limit} bytes")
    if len(header.sha256) != 64:
        raise InvalidArgument("header.sha256", "must be the 64-character hex SHA-256")


async def _receive(messages: AsyncIterator[pb.UploadTensorsRequest], tmp: Path,
                   limit: int) -> tuple[pb.UploadHeader, int, str]:
    """Write the chunks to `tmp`; returns (header, size, sha256) after checking both."""
    header: pb.UploadHeader | None = None
    digest = hashlib.sha256()
    size = 0
    with open(tmp, "wb") as f:  # noqa: ASYNC230 - writes go through to_thread
        async for msg in messages:
            if msg.WhichOneof("payload") == "header":
                if header is not None:
                    raise InvalidArgument("header", "sent twice")
                header = msg.header
                check_header(header, limit)
                continue
            if header is None:
                raise InvalidArgument("header", "the first message must carry the header")
            size += len(msg.chunk)
            if size > limit:
                raise ResourceExhausted(f"upload exceeds the server's limit of {limit} bytes")
            if size > header.total_bytes:
                raise InvalidArgument("header.total_bytes", f"the upload is longer than the "
                                                            f"declared {header.total_bytes} bytes")
            digest.update(msg.chunk)
            await asyncio.to_thread(f.write, msg.chunk)
    if header is None:
        raise InvalidArgument("header", "empty upload: no header")
    if size != header.total_bytes:
        raise InvalidArgument("header.total_bytes", f"declared {header.total_bytes} bytes, "
                                                    f"received {size}")
    if digest.hexdigest() != header.sha256.lower():
        raise InvalidArgument("header.sha256", f"checksum mismatch: the received bytes hash "
                                               f"to {digest.hexdigest()}")
    return header, size, digest.hexdigest()


def _store(tmp: Path, fmt: str, final: Path) -> list[dict[str, Any]]:
    """Parse and check the file, then keep it (an .npy is re-stored as safetensors)."""
    arrays = tensors.read_upload(tmp, fmt)
    with atomic_path(final) as out:
        if fmt == "npy":
            with open(out, "wb") as f:
                tensors.save_tensors(arrays, f)
        else:
            tmp.replace(out)
    return [{"name": k, "shape": list(v.shape), "dtype": str(v.dtype)}
            for k, v in arrays.items()]


async def receive_upload(messages: AsyncIterator[pb.UploadTensorsRequest], store: Store,
                         limit: int) -> dict[str, Any]:
    """Receive, check and store one upload; returns its tensor-set record (also stored)."""
    tensor_set_id = new_id("t")
    final = store.dir("tensors") / f"{tensor_set_id}.safetensors"
    tmp = store.dir("tmp") / f"{tensor_set_id}.upload{TMP_SUFFIX}"
    try:
        header, size, sha256 = await _receive(messages, tmp, limit)
        infos = await asyncio.to_thread(_store, tmp, FORMATS[header.format], final)
    finally:
        tmp.unlink(missing_ok=True)
    rec = {"id": tensor_set_id, "name": header.name, "path": str(final), "sha256": sha256,
           "total_bytes": size, "tensors": infos, "created": time.time()}
    store.add_tensor_set(rec)
    return rec

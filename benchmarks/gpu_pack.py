"""Pack onnxruntime-gpu for one GPU architecture small enough to carry to a device machine (< 64 MiB).

    python3 benchmarks/gpu_pack.py WHEEL_DIR .gpu/ort-gpu-sm90.tar.xz --arch 90

WHEEL_DIR is an unpacked onnxruntime_gpu wheel (onnxruntime/ and its dist-info). Most of
`libonnxruntime_providers_cuda.so` is CUDA device code for many architectures, in fatbinaries inside
its `.nv_fatbin` section: a header (magic 0xBA55ED50, version u16, header size u16, size u64) then
entries (kind u16, flags u16, header size u32, payload size u64, ..., arch u32 at +28). The payloads
of entries for other architectures are zeroed in place (offsets unchanged, so the ELF stays valid
and the driver still finds its entry by arch); xz then compresses them away. Left out: the C-API
library (the Python binding does not need it) and the pure-Python extras (transformers, quantization,
tools, datasets). Standard library only; unpack with `tarfile` (lzma is in every Python).
"""

from __future__ import annotations

import argparse
import collections
import io
import lzma
import struct
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

FATBIN_MAGIC = 0xBA55ED50
SKIP_DIRS = {"transformers", "quantization", "tools", "datasets", "__pycache__"}
SKIP_FILES = {"libonnxruntime.so.1.31.1"}


def _section(path: Path, name: str) -> tuple[int, int]:
    out = subprocess.run(["readelf", "-SW", str(path)], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        if f" {name} " in line:
            fields = line.split("]", 1)[1].split()
            return int(fields[3], 16), int(fields[4], 16)
    raise SystemExit(f"{path}: no {name} section")


def fatbin_entries(buf: bytes | bytearray, off: int, size: int) -> Iterator[tuple[int, int, int, int]]:
    """(kind, arch, payload offset, payload size) of every entry of every fatbinary in the section."""
    pos, end = off, off + size
    while pos + 16 <= end:
        magic, _version, hsize, fsize = struct.unpack_from("<IHHQ", buf, pos)
        if magic != FATBIN_MAGIC:  # alignment padding between fatbinaries
            pos += 8
            continue
        e, e_end = pos + hsize, pos + hsize + fsize
        while e < e_end:
            kind, _flags, ehsize, psize = struct.unpack_from("<HHIQ", buf, e)
            (arch,) = struct.unpack_from("<I", buf, e + 28)
            yield kind, arch, e + ehsize, psize
            e += ehsize + psize
        pos = e_end


def strip_cuda_library(path: Path, keep: set[int]) -> bytes:
    off, size = _section(path, ".nv_fatbin")
    buf = bytearray(path.read_bytes())
    kept: collections.Counter[int] = collections.Counter()
    zeroed = 0
    for _kind, arch, payload, psize in fatbin_entries(buf, off, size):
        if arch in keep:
            kept[arch] += psize
        else:
            buf[payload:payload + psize] = bytes(psize)
            zeroed += psize
    if not kept:
        raise SystemExit(f"{path}: no device code for sm_{keep}; nothing would run")
    print(f"{path.name}: kept {sum(kept.values()) / 1e6:.1f} MB for {sorted(kept)}, zeroed {zeroed / 1e6:.1f} MB")
    return bytes(buf)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("wheel_dir", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--arch", default="90", help="comma-separated SM versions to keep (H100/H200: 90)")
    args = ap.parse_args()
    keep = {int(a) for a in args.arch.split(",")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with lzma.open(args.out, "wb", preset=9 | lzma.PRESET_EXTREME) as xz, tarfile.open(fileobj=xz, mode="w") as tar:
        for path in sorted(args.wheel_dir.rglob("*")):
            rel = path.relative_to(args.wheel_dir)
            if path.is_dir() or SKIP_DIRS & set(rel.parts) or path.name in SKIP_FILES:
                continue
            if path.name == "libonnxruntime_providers_cuda.so":
                data = strip_cuda_library(path, keep)
                info = tar.gettarinfo(str(path), str(rel))
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.add(str(path), str(rel))
    print(f"{args.out}: {args.out.stat().st_size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

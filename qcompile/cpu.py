"""CPU feature detection for choosing integer kernels.

ORT's u8s8 GEMM kernels on x86 without VNNI use `vpmaddubsw`, which adds two
u8×s8 products into a saturating int16: 255·127·2 = 64770 overflows 32767.
With 7-bit weights (|w| ≤ 63) the worst case, 255·63·2 = 32130, fits.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

__all__ = ["CpuInfo", "cpu_info"]

_VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@dataclass(frozen=True)
class CpuInfo:
    machine: str
    model: str
    flags: frozenset[str]

    @property
    def has_vnni(self) -> bool:
        return any(f in self.flags for f in _VNNI_FLAGS)

    @property
    def is_x86(self) -> bool:
        return self.machine in ("x86_64", "AMD64", "i686", "i386")

    @property
    def u8s8_saturates(self) -> bool:
        """True where ORT's u8s8 kernels can saturate (x86 without VNNI)."""
        return self.is_x86 and not self.has_vnni

    def summary(self) -> dict:
        simd = sorted(f for f in self.flags if f.startswith(("avx", "amx", "sse4")) or f in _VNNI_FLAGS)
        return {"machine": self.machine, "model": self.model, "vnni": self.has_vnni, "simd": simd}


@lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    machine = platform.machine()
    model, flags = platform.processor() or "unknown", frozenset[str]()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name":
                model = value.strip()
            elif key == "flags" and not flags:
                flags = frozenset(value.split())
    return CpuInfo(machine, model, flags)

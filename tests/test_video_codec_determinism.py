"""mp4 members must not depend on the writing process's memory history.

x264's macroblock-tree rate control read memory it never wrote, so a clip encoded in a process that had freed
NaN-patterned buffers came out with other bytes (~2% of clips differed between concurrent writer processes).
The test reproduces that history on purpose: glibc hands freed blocks back to the next malloc with their old
content, so filling and freeing blocks of every size before each encode puts those bytes wherever the encoder
reads uninitialised memory. Each encode runs in a fresh child process (one with a clean heap, one with a heap
full of 0xFF, one with random bytes), and all three must write the same bytes.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

ENCODE_AFTER_CHURN = textwrap.dedent("""
    import ctypes, hashlib, json, os, sys
    import numpy as np
    from sharded_data.format import encode_video

    fill = sys.argv[1]
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]

    def dirty_the_heap():
        blocks = []
        for size in [64, 256, 1024, 1536, 3072, 4096, 8192, 16384, 65536, 200000] * 40:
            block = libc.malloc(size)
            if fill == "ff":
                ctypes.memset(block, 0xFF, size)  # 0xFFFFFFFF is a NaN as float32
            else:
                ctypes.memmove(block, os.urandom(size), size)
            blocks.append(block)
        for block in blocks:
            libc.free(block)

    # A sign-like clip: a bright blob moving over a textured background, 32 px (the study presets' size).
    rng = np.random.default_rng(0)
    background = rng.integers(40, 90, size=(32, 32, 3)).astype(np.float32)
    yy, xx = np.mgrid[:32, :32]
    hashes = []
    for clip in range(6):
        frames = []
        for t in range(24):
            cx, cy = 8 + 16 * np.sin(0.2 * t + clip), 16 + 10 * np.cos(0.15 * t * (clip + 1))
            blob = 180 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 18.0)
            frames.append(np.clip(background + blob[..., None], 0, 255).astype(np.uint8))
        if fill != "clean":
            dirty_the_heap()
        hashes.append(hashlib.sha256(encode_video(np.stack(frames), "mp4")[1]).hexdigest())
    print(json.dumps(hashes))
""")


def encode_in_child(fill: str) -> list[str]:
    result = subprocess.run([sys.executable, "-c", ENCODE_AFTER_CHURN, fill], cwd=REPO, capture_output=True,
                            text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the heap is dirtied through glibc's malloc")
def test_mp4_bytes_do_not_depend_on_what_the_process_freed_before():
    clean = encode_in_child("clean")
    assert len(set(clean)) == len(clean), "the six clips should differ from each other"
    assert encode_in_child("ff") == clean
    assert encode_in_child("random") == clean

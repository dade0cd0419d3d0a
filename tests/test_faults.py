"""Fault injection, one test (or a few) per item of issue 16: nothing trained is lost, no input can exhaust a
machine, a resumed run is the run it claims to be.

Each test injects the fault the issue found (a damaged file, a hostile name, a kill at a bad moment, a changed
flag) and checks the recipe's answer: a clear refusal naming the file and the fix, a skip that is counted, or a
fallback that loses nothing. Each docstring names the broken variant of the code the test was seen to fail on.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sharded_data.bad_samples import TooManyBadSamples
from sharded_data.format import (
    DecodeLimitError,
    ShardFilesError,
    decode_video,
    file_sha256,
    index_path,
    load_index,
    read_video_file,
)
from sharded_data.inspect import check_split
from sharded_data.reader import make_eval_loader, make_train_loader
from sharded_data.sources import FrameDirectorySource, LayoutError, csl_daily_sources, phoenix_sources
from sharded_data.write import write_corpus
from tests.test_bad_samples import edit_sample, lenient
from tests.test_reader import rows, sources, write
from tests.test_sources import build_csl_daily, smooth_frames, write_frames

REPO = Path(__file__).resolve().parents[1]
MiB = 2**20


# ------------------------------------------------------------------------ item 3: per-sample json is checked
def set_json(**fields):
    def edit(members: dict) -> dict:
        meta = json.loads(members["json"])
        meta.update(fields)
        return {**members, "json": json.dumps(meta).encode()}
    return edit


def test_item03_bad_per_sample_json_is_a_counted_bad_sample_never_a_crash_or_a_mislabel(tmp_path):
    """Broken variants tried: SampleMeta.from_json_bytes without `validate()` (the collate crashes on
    sample_id "x"; n_frames -5 passes), and decode_raw_sample without `check_against_index` (sentence id 3 instead
    of the index's passes: a mislabelled pair)."""
    corpus = write(tmp_path, n=20, per_shard=5)
    wrong_sentence = (load_index(corpus, "train").sentence_id[6] + 1) % 5
    for sample_id, edit in {3: set_json(sample_id="x"), 4: set_json(sentence_id=[1]), 5: set_json(n_frames=-5),
                            6: set_json(sentence_id=wrong_sentence), 7: set_json(fps=True),
                            8: set_json(sample_id=9)}.items():
        edit_sample(corpus, sample_id, edit)
    bad = {3, 4, 5, 6, 7, 8}
    loader = make_eval_loader(corpus, "train", 4, 0, 1, lenient(), require_every_sample=False)
    valid = [sample_id for batch in loader for sample_id, _, ok in rows(batch) if ok]
    assert sorted(valid) == [i for i in range(20) if i not in bad]
    assert loader.stats["by_cause"] == {"bad_meta": len(bad)}
    stream = make_train_loader(corpus, "train", 2, 0, 1, 0, lenient(num_workers=0))
    seen = {i for batch in stream for i in batch["sample_ids"].tolist()}
    assert not seen & bad and stream.stats["by_cause"] == {"bad_meta": stream.stats["skipped"]}


# ----------------------------------------------------------------- item 4: corpus names cannot escape ROOT
def phoenix_root(tmp_path: Path, name: str, video: str = "") -> Path:
    root = tmp_path / "PHOENIX-2014-T"
    write_frames(root / "features" / "fullFrame-210x260px" / "test" / "ok", smooth_frames(2, 0))
    annotations = root / "annotations" / "manual"
    annotations.mkdir(parents=True)
    (annotations / "PHOENIX-2014-T.test.corpus.csv").write_text(
        "name|video|start|end|speaker|orth|translation\n"
        "ok|ok/1/*.png|-1|-1|Signer01|A B|a b\n"
        f"{name}|{video}|-1|-1|Signer02|C D|c d\n")
    return root


@pytest.mark.parametrize("column", ["name", "video"])
@pytest.mark.parametrize("kind", ["relative", "absolute"])
def test_item04_phoenix_names_cannot_read_frames_outside_root(tmp_path, column, kind):
    """Broken variant tried: phoenix_sources joining names without `_inside_root`: the frames of tmp/outside
    (with an absolute name: any folder) were read as a sample."""
    outside = tmp_path / "outside"
    write_frames(outside, smooth_frames(2, 1))
    write_frames(outside / "1", smooth_frames(2, 1))
    # frames live in ROOT/features/fullFrame-210x260px/test/NAME: five levels up is tmp_path
    value = "../../../../../outside" if kind == "relative" else str(outside)
    name, video = (value, "") if column == "name" else ("plain", value + "/1/images0001.png")
    root = phoenix_root(tmp_path, name, video)
    with pytest.raises(LayoutError, match=rf"corpus\.csv:3: {column} .* not a plain name inside ROOT"):
        phoenix_sources(root, splits=("test",))


@pytest.mark.parametrize("kind", ["relative", "absolute"])
def test_item04_csl_daily_split_names_cannot_read_frames_outside_root(tmp_path, kind):
    """Broken variant tried: csl_daily_sources without `_inside_root`: tmp/outside was read as a sample."""
    outside = tmp_path / "outside"
    write_frames(outside, smooth_frames(2, 1), ".jpg")
    value = "../../../../outside" if kind == "relative" else str(outside)  # ROOT/sentence/frames_512x512/NAME
    csl = tmp_path / "CSL-Daily"
    labels = build_csl_daily(csl)
    labels[value] = ("逃出", "signer9")
    (csl / "sentence_label" / "labels.csv").write_text(
        "name|text|signer\n" + "".join(f"{name}|{text}|{signer}\n" for name, (text, signer) in labels.items()))
    split_file = csl / "sentence_label" / "split_1.txt"
    split_file.write_text(split_file.read_text() + f"{value}|train\n")
    with pytest.raises(LayoutError, match=r"split_1\.txt:7: name .* not a plain name inside ROOT"):
        csl_daily_sources(csl)


# ------------------------------------------------------------------ item 5: shard names are plain file names
@pytest.mark.parametrize("name", ["pipe:touch {flag} && echo x.tar", "../elsewhere/shards-train-000000.tar",
                                  "/abs/shards-train-000000.tar", "http://example.org/s.tar"])
def test_item05_an_index_cannot_turn_a_shard_name_into_a_command_or_a_path(tmp_path, name):
    """Broken variant tried: ShardInfo without the SHARD_FILE_NAME check: the streaming loader handed
    `pipe:touch FLAG ...` to webdataset, which ran it (the flag file appeared)."""
    corpus = write(tmp_path, n=8, per_shard=4)
    flag = tmp_path / "FLAG"
    data = json.loads(index_path(corpus, "train").read_text())
    data["shards"][0]["name"] = name.format(flag=flag)
    index_path(corpus, "train").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="not a plain file name"):
        load_index(corpus, "train")
    with pytest.raises(ValueError, match="not a plain file name"):
        list(make_train_loader(corpus, "train", 2, 0, 1, 0, lenient()))
    assert not flag.exists()


# ------------------------------------------------------------- item 6: inspect --check survives a lying tar
def test_item06_inspect_check_reports_a_member_claiming_a_tebibyte_instead_of_reading_it(tmp_path):
    """Broken variant tried: _check_shard without the `offset_data + size > file size` guard: MemoryError
    (Python asks for a 1 TiB buffer) and `inspect --check` dies."""
    corpus = write(tmp_path, n=4, per_shard=4)
    index = load_index(corpus, "train")
    header = tarfile.TarInfo("train_00000000.frames.npy")
    header.size = 2**40  # 1 TiB, in GNU base-256 notation
    lying = header.tobuf(tarfile.GNU_FORMAT) + b"\x93NUMPY" + bytes(1000)
    (corpus / index.shards[0].name).write_bytes(lying)
    assert len(lying) < 1600
    causes = [f"{b.key}: {b.cause}" for b in check_split(corpus, "train")]
    assert any(cause.startswith("train_00000000: member") and "claims 1099511627776 bytes, past the end" in cause
               for cause in causes), causes
    assert any(cause.startswith("-: shard is") and "the index records" in cause for cause in causes), causes


# --------------------------------------------------------------- item 8: shard checksums, verified on resume
def test_item08_a_finished_shard_corrupted_in_place_is_rewritten_on_resume_and_flagged_by_inspect(tmp_path):
    """Broken variant tried: finished_record comparing only the size (the old check): the resumed write reused
    the damaged shard (0 shards written) and its index kept pointing at garbage."""
    out = tmp_path / "shards"
    corpus = {"train": sources(12)}
    write_corpus(out, corpus, video_format="npy", samples_per_shard=4, num_workers=1, progress=False)
    index = load_index(out, "train")
    assert all(info.sha256 == file_sha256(out / info.name) and info.bytes == (out / info.name).stat().st_size
               for info in index.shards)
    damaged = out / index.shards[1].name
    original = damaged.read_bytes()
    damaged.write_bytes(original[:2000] + bytes(len(original) - 2000))  # same size, zeros from byte 2000
    assert [(b.shard, b.key) for b in check_split(out, "train") if b.key == "-"] == [(damaged.name, "-")]
    summary = write_corpus(out, corpus, video_format="npy", samples_per_shard=4, num_workers=1, progress=False)
    assert summary["shards_written"] == 1 and summary["shards_reused"] == 2
    assert damaged.read_bytes() == original and check_split(out, "train") == []


# ------------------------------------------------------------- item 9: decoded size is bounded before allocating
def tiny_1080p_clip(path: Path, frames: int = 60) -> Path:
    """~10 KB of H.264 that decodes to `frames` x 1920 x 1080 x 3 bytes (60 frames: 373 MB)."""
    import av

    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 1920, 1080, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "51"}
        black = av.VideoFrame.from_ndarray(np.zeros((1080, 1920, 3), np.uint8), format="rgb24")
        for _ in range(frames):
            for packet in stream.encode(black):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


PEAK_PROBE = """
import json, resource, sys
sys.path.insert(0, {repo!r})
import sharded_data.format as fmt
if {silent}:  # a container that does not say how long it is: only the per-frame count can stop it
    fmt.claimed_frame_count = lambda container, stream: 0
data = open({clip!r}, "rb").read()
import av, numpy  # libraries loaded before the baseline
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    frames = fmt.decode_video("mp4", data, max_decoded_bytes={limit})
    outcome = "decoded %d frames" % len(frames)
except fmt.DecodeLimitError as error:
    outcome = "refused: " + str(error)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps(dict(outcome=outcome, extra_peak_mib=peak / 1024)))
"""


@pytest.mark.parametrize("silent", [False, True], ids=["container-claims", "container-silent"])
def test_item09_a_tiny_clip_claiming_a_huge_video_is_refused_within_a_stated_memory_bound(tmp_path, silent):
    """The bound: a decode holds at most 2 x max_decoded_bytes of frames (list + stack) plus the codec's own
    buffers (< 64 MiB for 1080p H.264); here max_decoded_bytes = 32 MiB, so the peak must stay under 128 MiB,
    while the clip decodes to 373 MB (746 MB with its stacked copy).
    Broken variants tried: decode_rgb_frames without the metadata check (container-claims: refused only after
    32 MiB of frames, still passes the bound: the message says "decoded so far", which the test rejects) and
    without the per-frame count (container-silent: the whole 373 MB decoded, peak > 700 MiB)."""
    clip = tiny_1080p_clip(tmp_path / "bomb.mp4")
    assert clip.stat().st_size < 64 * 1024
    probe = PEAK_PROBE.format(repo=str(REPO), silent=silent, clip=str(clip), limit=32 * MiB)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["outcome"].startswith("refused:"), result
    assert ("decoded so far" in result["outcome"]) == silent, result["outcome"]
    assert result["extra_peak_mib"] < 128, result


def test_item09_bombs_in_every_input_path_are_refused_or_skipped_and_counted(tmp_path):
    """npy header, PNG header, video file, frame folder: each refused before allocating, as a bad video.
    Broken variants tried: np.load instead of load_npy_frames (allocates the claimed 600 GiB: MemoryError, not
    a counted skip); FrameDirectorySource without the DecompressionBombError handler (the error escapes
    --skip-bad and stops the write)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": (10**5, 1080, 1920, 3)})
    with pytest.raises(DecodeLimitError, match="npy header"):
        decode_video("frames.npy", header.getvalue() + bytes(100))

    clip = tiny_1080p_clip(tmp_path / "bomb.mp4", frames=8)
    with pytest.raises(DecodeLimitError, match="container metadata"):
        read_video_file(clip, max_decoded_bytes=16 * MiB)

    folder = tmp_path / "png-bomb"
    folder.mkdir()
    png = io.BytesIO()
    Image.new("L", (1, 1)).save(png, format="PNG")
    data = bytearray(png.getvalue())  # patch IHDR to claim 100000 x 100000 pixels (and fix its CRC)
    data[16:24] = (100_000).to_bytes(4, "big") * 2
    import zlib
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    (folder / "000000.png").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="decompression bomb|would take"):
        FrameDirectorySource("bomb", "t", path=str(folder)).load_frames()

    from sharded_data.sources import VideoFileSource
    from sharded_data.write import BadVideoError
    good = FrameDirectorySource("good", "a b", path=str(tmp_path / "good"))
    write_frames(Path(good.path), smooth_frames(3, 0))
    splits = {"train": [good, FrameDirectorySource("bomb", "c d", path=str(folder)),
                        VideoFileSource("clip", "e f", path=str(clip))]}
    with pytest.raises(BadVideoError, match="bomb"):
        write_corpus(tmp_path / "refused", splits, video_format="npy", num_workers=1, progress=False)
    summary = write_corpus(tmp_path / "skipped", splits, video_format="npy", num_workers=1, progress=False,
                           skip_bad=True, max_decoded_bytes=16 * MiB)
    assert summary["splits"]["train"] == dict(samples=1, skipped=2, shards=1, frames=3)


# -------------------------------------------------- item 12: missing shards, and evaluation covers every sample
def test_item12_a_missing_shard_stops_before_compute_and_an_eval_never_scores_a_subset(tmp_path):
    """Broken variants tried: IndexedShardReader without verify_shard_files (the missing shard's 4 samples were
    skipped as tar_read_error: 20% of the split vanished without an error), and make_eval_loader without
    require_every_sample (a dev set with one unreadable sample was scored on the rest)."""
    corpus = write(tmp_path, n=20, per_shard=4)
    edit_sample(corpus, 2, lambda members: {**members, "frames.npy": b"\x93NUMPY garbage"})
    with pytest.raises(TooManyBadSamples, match="must cover every sample"):
        list(make_eval_loader(corpus, "train", 4, 0, 1, lenient()))
    (corpus / load_index(corpus, "train").shards[3].name).unlink()
    with pytest.raises(ShardFilesError, match="1 of 5 shards are missing.*shards-train-000003.tar: missing"):
        make_eval_loader(corpus, "train", 4, 0, 1, lenient(), require_every_sample=False)

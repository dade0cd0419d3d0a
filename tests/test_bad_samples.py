"""Bad input never kills a run and never passes silently: each corruption is skipped, logged once,
counted by cause in `loader.stats`; too much of it stops the run with an error naming the directory.
An evaluation loader stops at the first unreadable sample instead (it must cover every sample), and a
missing or short shard is an error before anything is read."""
from __future__ import annotations

import io
import json
import logging
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sharded_data.bad_samples import TooManyBadSamples
from sharded_data.format import ShardFilesError, file_sha256, index_path, load_index, sample_key
from sharded_data.png_loader import PngFrameDataset, PngVideo, make_png_loader
from sharded_data.reader import IndexedShardReader, make_eval_loader, make_train_loader
from sharded_data.transforms import VideoTransform
from tests.test_reader import exact_config, rows, stored, write

N, PER_SHARD = 20, 5


def edit_sample(shard_dir: Path, sample_id: int, edit) -> None:
    """Rewrite the shard holding `sample_id` with edit(members: {ext: bytes}) applied to it; fix the index.

    `edit` returns the new members (drop a key to delete a member). Offsets and sizes of every sample
    in that shard, and the shard's size and checksum, are recomputed, so the indexed reader sees the same
    corruption as the stream (a damaged sample inside a shard that is whole).
    """
    index = load_index(shard_dir, "train")
    shard = index.shard[sample_id]
    path = shard_dir / index.shards[shard].name
    with tarfile.open(path) as tar:
        members = [(member.name, tar.extractfile(member).read()) for member in tar if member.isreg()]
    samples: dict[str, dict[str, bytes]] = {}
    for name, data in members:
        key, ext = name.split(".", 1)
        samples.setdefault(key, {})[ext] = data
    key = sample_key("train", sample_id)
    samples[key] = edit(dict(samples[key]))
    data = json.loads(index_path(shard_dir, "train").read_text())
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for key, parts in samples.items():
            start = tar.offset
            for ext, payload in parts.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
            ident = int(key.rsplit("_", 1)[1])
            data["offset"][ident], data["size"][ident] = start, tar.offset - start
    data["shards"][shard].update(bytes=path.stat().st_size, sha256=file_sha256(path))
    index_path(shard_dir, "train").write_text(json.dumps(data))


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


CORRUPTIONS = {
    "video_decode_error": lambda m: {**m, "frames.npy": b"\x93NUMPY garbage, not an array" * 3},
    "zero_frames": lambda m: {**m, "frames.npy": npy_bytes(np.zeros((0, 16, 16, 3), np.uint8))},
    "empty_video": lambda m: {**m, "frames.npy": b""},
    "missing_video": lambda m: {k: v for k, v in m.items() if k != "frames.npy"},
    "missing_text": lambda m: {k: v for k, v in m.items() if k != "txt"},
    "text_encoding_error": lambda m: {**m, "txt": "Grüße".encode("latin-1")},
    "bad_meta": lambda m: {**m, "json": b"{not json"},
    "video_too_large": lambda m: {**m, "frames.npy": npy_header((10**5, 1080, 1920, 3))},
}


def npy_header(shape: tuple[int, ...]) -> bytes:
    """A `.npy` header claiming `shape` (uint8), without the data: what a decompression bomb looks like."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "|u1", "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def lenient(**overrides):
    return exact_config(bad_fraction_limit=0.9, **overrides)


@pytest.fixture
def corpus(tmp_path) -> Path:
    return write(tmp_path, n=N, per_shard=PER_SHARD)  # 4 shards of 5


@pytest.mark.parametrize("cause", sorted(CORRUPTIONS))
def test_each_corruption_is_skipped_and_counted_by_both_readers(corpus, cause):
    edit_sample(corpus, 6, CORRUPTIONS[cause])
    eval_loader = make_eval_loader(corpus, "train", 4, 0, 1, lenient(), require_every_sample=False)
    valid_ids = []
    for batch in eval_loader:
        for sample_id, frames, valid in rows(batch):
            assert torch.equal(frames, stored(sample_id))  # bad rows are replaced by valid=False copies
            valid_ids += [sample_id] if valid else []
    assert sorted(valid_ids) == [i for i in range(N) if i != 6]
    assert eval_loader.stats == {"seen": N, "skipped": 1, "by_cause": {cause: 1}}

    train_loader = make_train_loader(corpus, "train", 2, 0, 1, 0, lenient(num_workers=2))
    batches = list(train_loader)
    assert len(batches) == len(train_loader) == N // 2  # the stream makes up for the skip in a second pass
    assert 6 not in {i for batch in batches for i in batch["sample_ids"].tolist()}
    assert train_loader.stats["by_cause"].keys() == {cause} and train_loader.stats["skipped"] >= 1
    assert train_loader.stats["seen"] >= N

    # An evaluation scores every sample or fails: the default eval loader stops at the bad one, naming the fix.
    with pytest.raises(TooManyBadSamples, match=rf"{cause}: 1.*must cover every sample.*inspect"):
        list(make_eval_loader(corpus, "train", 4, 0, 1, lenient()))


def test_garbage_mp4_member(tmp_path):
    shard_dir = write(tmp_path, n=8, per_shard=4, video_format="mp4")
    edit_sample(shard_dir, 3, lambda m: {**m, "mp4": bytes(range(256)) * 8})
    loader = make_eval_loader(shard_dir, "train", 4, 0, 1, lenient(), require_every_sample=False)
    assert sum(batch["valid"].sum().item() for batch in loader) == 7
    assert loader.stats["by_cause"] == {"video_decode_error": 1}


def test_a_shard_damaged_in_place_loses_its_tail_and_the_run_goes_on(corpus):
    index = load_index(corpus, "train")
    path = corpus / index.shards[1].name  # samples 5..9
    data = bytearray(path.read_bytes())
    start = index.offset[7] + 700  # inside sample 7's video: the next tar header is garbage from here on
    data[start:] = b"\x07" * (len(data) - start)
    path.write_bytes(bytes(data))  # same size: only a checksum (inspect --check) would notice
    train_loader = make_train_loader(corpus, "train", 2, 0, 1, 0, lenient(num_workers=2))
    ids = {i for batch in train_loader for i in batch["sample_ids"].tolist()}
    assert not ids & {7, 8, 9} and {5, 6} <= ids
    # tarfile ends a stream quietly at a garbage header: the two lost samples are counted against the index
    assert train_loader.stats["by_cause"]["tar_read_error"] >= 2

    eval_loader = make_eval_loader(corpus, "train", 5, 0, 1, lenient(), require_every_sample=False)
    valid = [i for batch in eval_loader for i, _, ok in rows(batch) if ok]
    assert sorted(valid) == [i for i in range(N) if i not in (7, 8, 9)]
    assert eval_loader.stats["by_cause"] == {"missing_text": 1, "tar_read_error": 2}  # 7 lost its txt header


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_a_missing_or_short_shard_is_an_error_before_anything_is_read(corpus, damage):
    """Not a bad sample: counting it as one let 5% of a split vanish silently (issue 16, item 12)."""
    index = load_index(corpus, "train")
    path = corpus / index.shards[1].name
    if damage == "missing":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[: index.offset[7] + 700])
    for make in (lambda: make_train_loader(corpus, "train", 2, 0, 1, 0, lenient()),
                 lambda: make_eval_loader(corpus, "train", 5, 0, 1, lenient()),
                 lambda: IndexedShardReader(corpus, "train")):
        with pytest.raises(ShardFilesError, match=rf"{index.shards[1].name}: {'missing' if damage == 'missing' else '.*bytes, the index records'}"):
            make()


def test_a_bad_sample_is_logged_once_with_shard_key_and_cause(corpus, caplog):
    edit_sample(corpus, 2, CORRUPTIONS["missing_text"])
    with caplog.at_level(logging.WARNING, logger="sharded_data"):
        for _ in range(2):  # read it twice (num_workers=0: logging happens in this process)
            list(make_eval_loader(corpus, "train", 4, 0, 1, lenient(), require_every_sample=False))
    messages = [record.getMessage() for record in caplog.records if "train_00000002" in record.getMessage()]
    assert len(messages) == 1
    assert "shards-train-000000.tar" in messages[0] and "missing_text" in messages[0]


def test_too_many_bad_samples_stop_the_run_naming_the_shard_dir(corpus):
    for sample_id in (1, 4, 11):
        edit_sample(corpus, sample_id, CORRUPTIONS["video_decode_error"])
    cfg = exact_config(bad_fraction_limit=0.05, min_samples_for_limit=10)
    with pytest.raises(TooManyBadSamples, match=str(corpus)):
        list(make_eval_loader(corpus, "train", 4, 0, 1, cfg, require_every_sample=False))
    with pytest.raises(TooManyBadSamples, match="limit 5.0%"):
        list(make_train_loader(corpus, "train", 2, 0, 1, 0, exact_config(num_workers=2, bad_fraction_limit=0.05,
                                                                         min_samples_for_limit=10)))
    # Below the minimum sample count, the same fraction is not yet a verdict.
    list(make_eval_loader(corpus, "train", 4, 0, 1, exact_config(bad_fraction_limit=0.05, min_samples_for_limit=50),
                          require_every_sample=False))


def test_unreadable_shards_stop_instead_of_looping(corpus):
    for info in load_index(corpus, "train").shards:
        (corpus / info.name).write_bytes(b"\x07" * info.bytes)  # garbage of the indexed size
    with pytest.raises(TooManyBadSamples, match="read no sample"):
        list(make_train_loader(corpus, "train", 2, 0, 1, 0, exact_config(num_workers=2, bad_fraction_limit=1.0)))


def test_indexed_reader_raises_sample_error_on_a_bad_sample(corpus):
    from sharded_data.bad_samples import SampleError

    edit_sample(corpus, 3, CORRUPTIONS["zero_frames"])
    with pytest.raises(SampleError, match="zero_frames"):
        IndexedShardReader(corpus, "train").get(3)


def test_png_loader_skips_a_garbage_png(tmp_path):
    videos = []
    for number in range(4):
        folder = tmp_path / f"video{number}"
        folder.mkdir()
        for frame in range(5):
            pixels = np.full((12, 12, 3), 10 * number + frame, np.uint8)
            Image.fromarray(pixels).save(folder / f"images{frame + 1:04d}.png")
        videos.append(PngVideo(str(folder), f"sentence {number}", number))
    (tmp_path / "video2" / "images0003.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    transform = VideoTransform(frame_size=12, max_frames=10, train=False)
    dataset = PngFrameDataset(videos, transform, data_dir=str(tmp_path))
    loader = make_png_loader(dataset, 2, exact_config(bad_fraction_limit=0.5), shuffle=False)
    batches = list(loader)
    assert [b["sample_ids"].tolist() for b in batches] == [[0, 1], [3, 3]]  # video 2 replaced by a padding copy
    assert [b["valid"].tolist() for b in batches] == [[True, True], [False, True]]
    assert batches[0]["frames"][1, 4, 0, 0, 0].item() == 14  # video 1, frame 5: read in file-name order
    assert loader.stats == {"seen": 4, "skipped": 1, "by_cause": {"image_read_error": 1}}

"""The shard readers: exact round trips, coverage and equal batch counts over ranks x workers, eval
padding, indexed == streaming, deterministic eval transforms, train-time augmentation; video files and frame
folders decode only the frames a clip shows (shards: tests/test_device_augmentation.py)."""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from sharded_data.reader import (
    IndexedShardReader,
    ReaderConfig,
    eval_sample_ids,
    make_eval_loader,
    make_indexed_loader,
    make_train_loader,
)
from sharded_data.sources import VideoSource
from sharded_data.transforms import IMAGENET_MEAN, IMAGENET_STD, VideoTransform, normalize_frames
from sharded_data.write import write_corpus

SIDE = 16


@dataclass
class ArraySource(VideoSource):
    """Random uint8 frames generated from a seed (in memory; picklable)."""

    seed: int = 0
    n_frames: int = 8
    side: int = SIDE

    def load_frames(self) -> np.ndarray:
        return np.random.default_rng(self.seed).integers(0, 256, (self.n_frames, self.side, self.side, 3), dtype=np.uint8)


def sources(n: int, n_sentences: int = 5) -> list[ArraySource]:
    return [ArraySource(f"v{i}", f"sentence {i % n_sentences}", signer=f"s{i % 2}", seed=i, n_frames=8 + i % 5)
            for i in range(n)]


def write(tmp_path: Path, n: int, per_shard: int, video_format: str = "npy", name: str = "shards") -> Path:
    out = tmp_path / name
    write_corpus(out, {"train": sources(n)}, video_format=video_format, samples_per_shard=per_shard,
                 num_workers=1, progress=False)
    return out


def exact_config(**overrides) -> ReaderConfig:
    """No augmentation, no resize, uint8 output: what comes out must be the stored pixels."""
    fields = dict(frame_size=SIDE, max_frames=64, speed_range=(1.0, 1.0), frame_drop=0.0, crop_scale=(1.0, 1.0),
                  output="uint8", num_workers=0, shuffle_buffer=10, shuffle_initial=2)
    fields.update(overrides)
    return ReaderConfig(**fields)


def rows(batch: dict):
    """(sample_id, frames [T, 3, H, W] without padding, valid) per row of a batch."""
    for row, sample_id in enumerate(batch["sample_ids"].tolist()):
        length = int(batch["frame_mask"][row].sum())
        assert batch["frame_mask"][row, :length].all() and not batch["frame_mask"][row, length:].any()
        yield sample_id, batch["frames"][row, :length], bool(batch["valid"][row])


def stored(sample_id: int) -> torch.Tensor:
    """The frames as written, in the batch layout [T, 3, H, W]."""
    return torch.from_numpy(sources(sample_id + 1)[sample_id].load_frames()).permute(0, 3, 1, 2)


@pytest.fixture(scope="module")
def npy_dir(tmp_path_factory) -> Path:
    return write(tmp_path_factory.mktemp("npy"), n=32, per_shard=4)  # 8 shards


@pytest.fixture(scope="module")
def mp4_dir(tmp_path_factory) -> Path:
    return write(tmp_path_factory.mktemp("mp4"), n=12, per_shard=4, video_format="mp4")


def test_npy_round_trip_is_exact_through_every_reader(npy_dir):
    cfg = exact_config()
    seen = set()
    for batch in make_train_loader(npy_dir, "train", 4, 0, 1, 0, cfg):
        assert batch["frames"].dtype == torch.uint8 and batch["frames"].shape[2:] == (3, SIDE, SIDE)
        for sample_id, frames, valid in rows(batch):
            assert valid and torch.equal(frames, stored(sample_id))
            seen.add(sample_id)
        assert batch["texts"] == [f"sentence {i % 5}" for i in batch["sample_ids"].tolist()]
        assert batch["keys"] == [f"train_{i:08d}" for i in batch["sample_ids"].tolist()]
        assert batch["sentence_ids"].tolist() == [i % 5 for i in batch["sample_ids"].tolist()]
    assert seen == set(range(32))
    for batch in make_eval_loader(npy_dir, "train", 5, 0, 1, cfg):
        for sample_id, frames, _ in rows(batch):
            assert torch.equal(frames, stored(sample_id))
    got = IndexedShardReader(npy_dir, "train").get(7)
    assert torch.equal(got["frames"], torch.from_numpy(sources(8)[7].load_frames()))
    assert got["text"] == "sentence 2" and got["meta"].sample_id == 7


def test_normalized_output_is_float32_imagenet_normalized(npy_dir):
    batch = next(iter(make_eval_loader(npy_dir, "train", 2, 0, 1, exact_config(output="normalized", num_workers=2))))
    assert batch["frames"].dtype == torch.float32 and batch["frames"].shape[0] == 2
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    sample_id, frames, _ = next(rows(batch))
    torch.testing.assert_close(frames, (stored(sample_id).float() / 255 - mean) / std)
    assert (batch["frames"][~batch["frame_mask"]] == 0).all()  # time padding is zeros
    # A uint8 loader plus normalize_frames (on the GPU in training) gives the same numbers.
    raw = next(iter(make_eval_loader(npy_dir, "train", 2, 0, 1, exact_config(output="uint8"))))
    torch.testing.assert_close(normalize_frames(raw["frames"])[raw["frame_mask"]], batch["frames"][batch["frame_mask"]])
    with pytest.raises(ValueError, match="output"):
        exact_config(output="float16")


@pytest.mark.parametrize("per_shard", [4, 16], ids=["split-shards", "split-samples"])
def test_train_coverage_is_disjoint_and_complete_over_2_ranks_x_2_workers(tmp_path, per_shard):
    # 8 shards >= 2 ranks x 2 workers: whole shards per worker; 2 shards: every worker keeps every 4th sample.
    shard_dir = write(tmp_path, n=32, per_shard=per_shard)
    cfg = exact_config(num_workers=2)
    per_rank = []
    for rank in range(2):
        loader = make_train_loader(shard_dir, "train", 2, rank, 2, 0, cfg)
        ids = [i for batch in loader for i in batch["sample_ids"].tolist()]
        assert len(loader) == 8 and len(ids) == 16
        per_rank.append(ids)
    assert not set(per_rank[0]) & set(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == list(range(32))


@pytest.mark.parametrize("world_size", [2, 3])
def test_every_rank_yields_the_same_number_of_full_batches(tmp_path, world_size):
    shard_dir = write(tmp_path, n=37, per_shard=5)  # 8 shards, the last one holds 2
    cfg = exact_config(num_workers=2)
    expected = 37 // (world_size * 3)
    for rank in range(world_size):
        loader = make_train_loader(shard_dir, "train", 3, rank, world_size, 0, cfg)
        sizes = [len(batch["sample_ids"]) for batch in loader]
        assert len(loader) == expected and sizes == [3] * expected


def test_train_order_depends_on_seed_and_epoch_only(npy_dir):
    cfg = exact_config(num_workers=2, speed_range=(0.7, 1.3), frame_drop=0.2, crop_scale=(0.5, 1.0))

    def run(epoch, seed=0):
        loader = make_train_loader(npy_dir, "train", 4, 0, 1, epoch, ReaderConfig(**{**cfg.__dict__, "seed": seed}))
        return [(batch["sample_ids"].tolist(), batch["frames"].sum().item()) for batch in loader]

    first = run(epoch=0)
    assert run(epoch=0) == first  # same seed and epoch: same order, same augmentation
    assert [ids for ids, _ in run(epoch=1)] != [ids for ids, _ in first]
    assert [ids for ids, _ in run(epoch=0, seed=1)] != [ids for ids, _ in first]


def test_too_few_samples_for_one_batch_per_rank_is_a_clear_error(npy_dir):
    with pytest.raises(ValueError, match="fewer than one batch per rank"):
        make_train_loader(npy_dir, "train", 8, 0, 5, 0, exact_config())


@pytest.mark.parametrize("n,world_size,batch_size", [(13, 3, 2), (32, 2, 5), (2, 4, 3)])
def test_eval_sees_every_sample_exactly_once_with_equal_batches(n, world_size, batch_size):
    plans = [eval_sample_ids(n, batch_size, rank, world_size) for rank in range(world_size)]
    assert len({tuple(len(batch) for batch in plan) for plan in plans}) == 1  # same count and sizes everywhere
    valid = Counter(sample_id for plan in plans for batch in plan for sample_id, ok in batch if ok)
    assert valid == Counter(range(n))


def test_eval_loader_over_ranks_marks_padding_invalid(tmp_path):
    shard_dir = write(tmp_path, n=7, per_shard=3)
    cfg = exact_config(num_workers=2)
    valid_ids, counts = [], set()
    for rank in range(3):
        loader = make_eval_loader(shard_dir, "train", 2, rank, 3, cfg)
        batches = list(loader)
        counts.add((len(loader), len(batches), tuple(len(batch["valid"]) for batch in batches)))
        for batch in batches:
            for sample_id, frames, valid in rows(batch):
                assert torch.equal(frames, stored(sample_id))
                if valid:
                    valid_ids.append(sample_id)
        assert loader.stats["seen"] == len([i for i in range(7) if i % 3 == rank]) and loader.stats["skipped"] == 0
    assert len(counts) == 1 and sorted(valid_ids) == list(range(7))


def test_eval_transforms_are_deterministic(npy_dir):
    cfg = ReaderConfig(frame_size=12, max_frames=5, eval_crop=0.75, num_workers=2)
    first, second = (list(make_eval_loader(npy_dir, "train", 4, 0, 1, cfg)) for _ in range(2))
    assert len(first) == 8
    for a, b in zip(first, second):
        assert torch.equal(a["frames"], b["frames"]) and a["frames"].shape[1:] == (5, 3, 12, 12)
    # Evenly spaced frames at eval: a 12-frame video keeps frames 0, 3, 6, 8, 11 (center crop, resized).
    transform = VideoTransform(frame_size=SIDE, max_frames=5, train=False)
    video = torch.from_numpy(sources(5)[4].load_frames())
    assert torch.equal(transform(video), video[[0, 3, 6, 8, 11]].permute(0, 3, 1, 2))


def test_train_augmentation_changes_length_and_respects_the_cap():
    video = torch.from_numpy(ArraySource("v", "t", n_frames=40, side=20).load_frames())
    transform = VideoTransform(frame_size=8, max_frames=30, train=True, speed_range=(0.5, 2.0), frame_drop=0.3)
    rng = random.Random(0)
    lengths = {transform(video, rng).shape[0] for _ in range(20)}
    assert max(lengths) <= 30 and len(lengths) > 3
    out = transform(video, rng)
    assert out.shape[1:] == (3, 8, 8) and out.dtype == torch.uint8
    with pytest.raises(ValueError, match="seeded"):
        transform(video)


@pytest.mark.parametrize("fixture", ["npy_dir", "mp4_dir"])
def test_indexed_access_returns_the_same_sample_as_streaming(request, fixture):
    shard_dir = request.getfixturevalue(fixture)
    reader = IndexedShardReader(shard_dir, "train")
    checked = 0
    for batch in make_train_loader(shard_dir, "train", 2, 0, 1, 0, exact_config(max_frames=100)):
        for sample_id, frames, _ in rows(batch):
            assert torch.equal(frames, reader.get(sample_id)["frames"].permute(0, 3, 1, 2))
            checked += 1
    assert checked == len(reader)


def test_indexed_loader_follows_the_batch_sampler(npy_dir):
    plan = [[5, 1, 30], [2], [31, 0, 7]]  # what a curriculum sampler would hand this rank
    loader = make_indexed_loader(npy_dir, "train", plan, 3, exact_config(num_workers=2), train=False)
    batches = list(loader)
    assert len(loader) == 3 and [b["sample_ids"].tolist() for b in batches] == [[5, 1, 30], [2, 2, 2], [31, 0, 7]]
    assert batches[1]["valid"].tolist() == [True, False, False]  # short lists padded to the batch size
    for sample_id, frames, _ in rows(batches[0]):
        assert torch.equal(frames, stored(sample_id))
    assert loader.stats == {"seen": 7, "skipped": 0, "by_cause": {}}


# ------------------------------------------------------------------------- frames chosen before decoding


def test_a_video_file_decodes_only_the_chosen_frames_and_falls_back_when_its_container_miscounts(tmp_path, monkeypatch):
    """`read_video_file` with a plan returns exactly the full decode's frames at those indices. A container that
    claims another frame count (here: made to claim 5 more) is caught after decoding, decoded again in full, the
    plan redrawn from the true count, and counted; a container that claims nothing is decoded in full.

    Broken variants tried: trusting the claim (no recount: the plan drawn for 35 frames picks other frames, and a
    frame past the end is missing: caught), the fallback not counted (caught)."""
    from sharded_data import format as fmt

    frames = ArraySource("v", "t", seed=3, n_frames=30, side=12).load_frames()
    path = tmp_path / "clip.mp4"
    path.write_bytes(fmt.encode_video(frames, "mp4")[1])
    whole = fmt.read_video_file(path)
    evenly = VideoTransform(frame_size=12, max_frames=7, train=False).frame_indices
    plan = lambda n: evenly(n, None)  # noqa: E731
    np.testing.assert_array_equal(fmt.read_video_file(path, frame_indices=plan), whole[plan(30)])
    assert fmt.frame_count_fallbacks == 0

    true_count = fmt.claimed_frame_count
    monkeypatch.setattr(fmt, "claimed_frame_count", lambda container, stream: true_count(container, stream) + 5)
    np.testing.assert_array_equal(fmt.read_video_file(path, frame_indices=plan), whole[plan(30)])
    assert fmt.frame_count_fallbacks == 1
    monkeypatch.setattr(fmt, "claimed_frame_count", lambda container, stream: 0)
    np.testing.assert_array_equal(fmt.read_video_file(path, frame_indices=plan), whole[plan(30)])
    assert fmt.frame_count_fallbacks == 1
    monkeypatch.setattr(fmt, "frame_count_fallbacks", 0)


def test_frame_folders_open_only_the_chosen_images(tmp_path):
    """The PNG loader draws the plan from the folder's listing and opens only those images: an unreadable image
    the plan skips costs nothing, and the batch equals the transform of the whole folder.

    Broken variant tried: `load_frames` ignoring `positions` (the garbage image is opened: caught)."""
    from PIL import Image

    from sharded_data.png_loader import PngFrameDataset, PngVideo, make_png_loader
    from sharded_data.sources import FrameDirectorySource

    folder = tmp_path / "video0"
    folder.mkdir()
    frames = ArraySource("v", "t", seed=5, n_frames=10, side=SIDE).load_frames()
    for number, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"images{number + 1:04d}.png")
    transform = VideoTransform(frame_size=SIDE, max_frames=4, train=False)  # frames 0, 3, 6, 9
    expected = transform(torch.from_numpy(frames))
    (folder / "images0002.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    source = FrameDirectorySource(name="v", text="", path=str(folder))
    np.testing.assert_array_equal(source.load_frames([0, 3, 6, 9]), frames[[0, 3, 6, 9]])
    with pytest.raises(OSError, match="images0002.png"):
        source.load_frames()
    dataset = PngFrameDataset([PngVideo(str(folder), "a sentence", 0)], transform, data_dir=str(tmp_path))
    batch = next(iter(make_png_loader(dataset, 1, exact_config(max_frames=4), shuffle=False)))
    assert torch.equal(batch["frames"][0], expected) and batch["valid"].tolist() == [True]


def test_loader_workers_keep_freed_memory_for_reuse():
    """Loader workers start with `keep_freed_memory`: a freed video-sized buffer stays in the process for the next
    one (resident memory does not drop), where glibc's default returns it to the kernel, which must then page-fault
    and zero a fresh one for the next sample.

    Broken variant tried: `keep_freed_memory` not setting M_MMAP_THRESHOLD (the buffer is returned: caught)."""
    import subprocess
    import sys

    from sharded_data.loader import dataloader_kwargs, keep_freed_memory

    assert dataloader_kwargs(exact_config(num_workers=2))["worker_init_fn"] is keep_freed_memory
    script = (
        "import os, sys, numpy as np\n"
        "if sys.argv[1] == 'tuned':\n"
        "    from sharded_data.loader import keep_freed_memory; keep_freed_memory()\n"
        "def resident(): return int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE')\n"
        "before = resident()\n"
        "buffer = np.empty(64 << 20, np.uint8); buffer.fill(1); del buffer\n"
        "print((resident() - before) >> 20)\n"
    )
    if not Path("/proc/self/statm").exists():
        pytest.skip("no /proc/self/statm to read resident memory from")
    kept = {}
    for mode in ("default", "tuned"):
        done = subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, check=True,
                              env={**__import__("os").environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
        kept[mode] = int(done.stdout.strip())
    assert kept["default"] < 16 and kept["tuned"] >= 60, f"MiB still resident after freeing 64 MiB: {kept}"

"""The augmentation split between the worker (the plan: frame indices, crop box) and the device (the pixels):
stored batches rendered on the device give the frames the worker renders, clip by clip; both are within the
stated tolerance of the CPU augmentation they replace; frames are chosen before decoding without changing which;
the per-sample seed contract holds whichever device renders.

Tolerance against the CPU augmentation before the split (float resize, rounded): the plan (frame indices, crop
box) is identical, and so are the pixels wherever no resize is needed. A resize runs on the CPU with torch's
uint8 kernel (fixed point, 8-10x cheaper there): at most 1 of 255 levels from the float computation, on about
15-19% of the pixels (mean absolute difference < 0.25 level; the codec's own error is ~2.7 levels). On a GPU
the resize is the float computation itself (`resize_in_float`, bit-identical to the reference on a CPU; on a GPU
its float arithmetic can move a pixel across a rounding boundary: again at most 1 level). The CPU path of the
loader (worker) and the device function run on the CPU are bit-identical to each other.
"""
from __future__ import annotations

import random
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from recipe.device import batch_frames_to_device
from sharded_data.bad_samples import SkipStats
from sharded_data.decode import decode_raw_sample
from sharded_data.format import encode_video
from sharded_data.loader import derive_seed
from sharded_data.reader import IndexedShardReader, ReaderConfig, make_eval_loader, make_indexed_loader, make_train_loader
from sharded_data.stream import DecodeAndTransform
from sharded_data.transforms import (
    STORED_FRAMES,
    STORED_SHAPES,
    VideoSample,
    VideoTransform,
    collate_videos,
    normalize_frames,
    render_stored_batch,
    resize_in_float,
)
from tests.test_reader import ArraySource, write


def cpu_augmentation_before_the_split(transform: VideoTransform, frames: torch.Tensor, rng) -> torch.Tensor:
    """The worker-side transform this project used until the crop + resize moved to the device (verbatim, as the
    reference): gather by frame index, crop, HWC -> CHW, bilinear resize (antialiased when shrinking), round."""
    frames = frames[transform.frame_indices(frames.shape[0], rng)]
    top, left, height, width = transform.crop_box(frames.shape[1], frames.shape[2], rng)
    frames = frames[:, top : top + height, left : left + width].permute(0, 3, 1, 2)
    size = transform.frame_size
    if frames.shape[-2:] == (size, size):
        return frames.contiguous()
    shrinking = frames.shape[-2] > size or frames.shape[-1] > size
    frames = F.interpolate(frames.float(), size=(size, size), mode="bilinear", antialias=shrinking)
    return frames.round_().clamp_(0, 255).to(torch.uint8)


def video(n_frames: int, height: int, width: int, seed: int) -> torch.Tensor:
    """Smooth content plus noise: a resize of pure noise would hide nothing, of flat colour everything."""
    generator = np.random.default_rng(seed)
    ramp = np.add.outer(np.arange(height), np.arange(width))[None, :, :, None] * 255 // (height + width)
    noise = generator.integers(0, 60, (n_frames, height, width, 3))
    return torch.from_numpy(((ramp + noise + np.arange(n_frames)[:, None, None, None]) % 256).astype(np.uint8))


# (stored height, width) -> frame size: shrinking both sides (CSL-Daily 512 -> 224), one side (PHOENIX 210x260 ->
# 224 at train), growing, already the size, odd sides.
GEOMETRIES = [((40, 40), 16), ((21, 26), 22), ((12, 12), 20), ((16, 16), 16), ((33, 17), 15)]


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=[f"{h}x{w}-to-{s}" for (h, w), s in GEOMETRIES])
def test_rendering_is_within_one_level_of_the_cpu_augmentation_it_replaced(train, geometry):
    """Same plan; the worker's rendering, the device function on the CPU and the float resize a GPU runs all agree
    with the reference within the module's tolerance (the float one exactly).

    Broken variants tried: no rounding in `resize_in_float` (differs by < 1 level: caught), the CPU kernel without
    antialias (shrinking clips differ by more than a level: caught), `render_stored_batch` reading every clip at
    the start of the packed buffer (caught)."""
    (height, width), size = geometry
    transform = VideoTransform(size, max_frames=12, train=train, speed_range=(0.6, 1.5), frame_drop=0.2,
                               crop_scale=(0.5, 1.0), eval_crop=0.8)
    clips, expected = [], []
    differing, compared = 0, 0
    for seed in range(6):
        frames = video(9 + 3 * seed, height, width, seed)
        expected.append(cpu_augmentation_before_the_split(transform, frames, random.Random(seed)))
        rendered = transform(frames, random.Random(seed))  # the CPU path
        assert rendered.shape == expected[-1].shape and rendered.dtype == torch.uint8
        difference = (rendered.int() - expected[-1].int()).abs()
        assert int(difference.max()) <= 1
        differing, compared = differing + int(difference.sum()), compared + difference.numel()
        clip = transform.clip(frames, random.Random(seed))
        clips.append(clip)
        # What a GPU computes: the reference's own arithmetic.
        top, left, crop_h, crop_w = clip.crop_box
        if (crop_h, crop_w) != (size, size):
            cropped = frames[:, top : top + crop_h, left : left + crop_w].permute(0, 3, 1, 2)
            in_float = resize_in_float(cropped, size, antialias=crop_h > size or crop_w > size)
            assert torch.equal(in_float[clip.frame_index], expected[-1].float())
    assert differing / compared < 0.25
    samples = [VideoSample(clip, "t", i, i, str(i)) for i, clip in enumerate(clips)]
    stored = collate_videos(samples, stored=True)
    assert STORED_FRAMES in stored and "frames" not in stored  # a consumer that forgets to render fails loudly
    on_device = render_stored_batch(stored, "cpu", normalize=False)
    rendered = collate_videos(samples, normalize=False)
    mask = stored["frame_mask"]
    assert torch.equal(mask, rendered["frame_mask"])
    assert torch.equal(on_device[mask], rendered["frames"][mask].float())
    # Normalised on the device = the loader's own normalisation of the same pixels (time padding aside).
    normalized = collate_videos(samples, normalize=True)
    assert torch.equal(render_stored_batch(stored, "cpu")[mask], normalized["frames"][mask])
    assert torch.equal(batch_frames_to_device(stored, "cpu"), normalize_frames(rendered["frames"]))


def config(output: str, **overrides) -> ReaderConfig:
    fields = dict(frame_size=12, max_frames=9, speed_range=(0.6, 1.4), frame_drop=0.2, crop_scale=(0.6, 1.0),
                  eval_crop=0.9, output=output, num_workers=0, shuffle_buffer=8, shuffle_initial=2, seed=3)
    return ReaderConfig(**{**fields, **overrides})


@pytest.fixture(scope="module", params=["npy", "mp4"])
def corpus(request, tmp_path_factory):
    """16 px stored frames (8-12 frames each) read at 12 px: every clip is resized."""
    return write(tmp_path_factory.mktemp(request.param), n=12, per_shard=3, video_format=request.param)


def test_every_loader_hands_the_device_what_the_cpu_augmentation_gave(corpus):
    """Stored batches from the three readers, rendered by the training step's function, equal the workers'
    normalised batches frame for frame and padding flag for flag, and both are the augmentation before the split
    applied to the whole decoded video with the same generator (per sample (seed, epoch, sample id) for the
    indexed readers, one per worker in stream order for the stream): the same plan, pixels within a level.

    Broken variants tried: the stream drawing one number before the frame indices (caught by the reference),
    `collate_stored` copying a subset's frames in reverse order (caught by stored vs normalised)."""
    plan = [[5, 1, 11], [2, 7, 0], [9, 3, 4]]
    epoch = 2
    loaders = {
        "eval": (partial(make_eval_loader, corpus, "train", 4, 0, 1), False),
        "indexed train": (lambda cfg: make_indexed_loader(corpus, "train", plan, 3, cfg, train=True, epoch=epoch), True),
        "stream train": (partial(make_train_loader, corpus, "train", 3, 0, 1, epoch), True),
    }
    reader = IndexedShardReader(corpus, "train")
    for name, (make, train) in loaders.items():
        stored = list(make(config("stored")))
        worker = list(make(config("normalized")))
        assert len(stored) == len(worker) > 0, name
        transform = VideoTransform.from_config(config("stored"), train=train)
        stream_rng = random.Random(derive_seed(config("stored").seed, epoch, 0, 0, -1))  # rank 0, worker 0
        for mine, theirs in zip(stored, worker):
            assert mine["sample_ids"].tolist() == theirs["sample_ids"].tolist(), name
            assert torch.equal(mine["frame_mask"], theirs["frame_mask"]), name
            frames = batch_frames_to_device(mine, "cpu")
            assert frames.shape == theirs["frames"].shape and frames.dtype == torch.float32
            mask = mine["frame_mask"]
            assert torch.equal(frames[mask], theirs["frames"][mask]), name
            pixels = collate_videos_pixels(mine)
            for row, sample_id in enumerate(mine["sample_ids"].tolist()):
                rng = stream_rng if name == "stream train" else random.Random(derive_seed(3, epoch, sample_id))
                expected = cpu_augmentation_before_the_split(transform, reader.get(sample_id)["frames"], rng)
                assert int(mask[row].sum()) == len(expected), (name, sample_id)  # the same frames ...
                difference = (pixels[row, : len(expected)] - expected.float()).abs()
                assert float(difference.max()) <= 1, (name, sample_id)  # ... within a level


def collate_videos_pixels(stored_batch: dict) -> torch.Tensor:
    """The pixel values (0-255, float) a stored batch renders to."""
    return render_stored_batch(stored_batch, "cpu", normalize=False)


def test_a_stored_batch_holds_only_what_the_clips_show(corpus):
    """Only the frames a clip shows and only its crop cross to the device: each clip's part of the packed buffer
    is (distinct frames shown) x (its crop), nothing else (no padding).

    Broken variant tried: `collate_stored` copying every frame a clip holds (an npy clip is a view of the whole
    video) rather than those it shows (caught)."""
    batch = next(iter(make_indexed_loader(corpus, "train", [[0, 1, 2]], 3, config("stored"), train=True)))
    total = 0
    for row, (count, height, width) in enumerate(batch[STORED_SHAPES].tolist()):
        length = int(batch["frame_mask"][row].sum())
        assert count == batch["frame_index"][row, :length].unique().numel()  # no frame stored that is not shown
        assert int(batch["frame_index"][row, :length].max()) + 1 == count and height <= 16 and width <= 16
        total += count * height * width * 3
    assert batch[STORED_FRAMES].dtype == torch.uint8 and batch[STORED_FRAMES].shape == (total,)


@pytest.mark.parametrize("video_format", ["npy", "mp4"])
def test_frames_chosen_before_decoding_are_the_frames_a_full_decode_would_give(video_format):
    """`decode_raw_sample` with a plan decodes only the distinct frames it shows, and the clip equals the full
    decode gathered by the same indices (repeats and drops included). A json frame count that disagrees with the
    member is still a bad sample (the plan was drawn from it).

    Broken variant tried: keeping frame positions off by one in `decode_selected_rgb_frames` (caught)."""
    frames = ArraySource("v", "t", seed=4, n_frames=30, side=10).load_frames()
    _, data = encode_video(frames, video_format)
    extension = "frames.npy" if video_format == "npy" else "mp4"
    meta = b'{"sample_id": 0, "sentence_id": 0, "signer": "s", "n_frames": 30, "fps": 25.0, "source": "x", ' \
           b'"split": "train", "name": "v"}'
    raw = {"__key__": "train_00000000", extension: data, "txt": b"a sentence", "json": meta}
    whole = decode_raw_sample(raw)
    assert whole.frames.shape[0] == 30 and torch.equal(whole.frame_index, torch.arange(30))
    index = torch.tensor([0, 0, 3, 4, 4, 4, 17, 29])
    chosen = decode_raw_sample(raw, frame_indices=lambda n: index if n == 30 else None)
    assert chosen.frames.shape[0] == 5  # the distinct frames only (0, 3, 4, 17, 29)
    assert torch.equal(chosen.frames[chosen.frame_index], whole.frames[index])
    lying = {**raw, "json": meta.replace(b'"n_frames": 30', b'"n_frames": 40')}
    with pytest.raises(Exception, match="bad_meta.*json says 40 frames.*has 30"):
        decode_raw_sample(lying, frame_indices=lambda n: torch.tensor([0, n - 1]))


def test_a_bad_sample_leaves_the_stream_augmentation_of_the_others_as_it_was(tmp_path):
    """The stream's worker generator draws a clip's frame indices before decoding; a sample that then fails to
    decode gives the draw back, so the good samples get the augmentation they got when the plan was drawn after
    a successful decode (bad samples consumed nothing then either).

    Broken variant tried: no `setstate` after a failed decode (the sample after the bad one changes: caught)."""
    shards = write(tmp_path, n=3, per_shard=3)
    reader = IndexedShardReader(shards, "train")
    good = [reader.read_raw(0), reader.read_raw(2)]
    bad = {**reader.read_raw(1), "frames.npy": b"\x93NUMPY garbage, not an array" * 3}
    transform = VideoTransform(12, 9, train=True, speed_range=(0.6, 1.4), frame_drop=0.3, crop_scale=(0.6, 1.0))

    def clips(raws):
        stage = DecodeAndTransform(transform, SkipStats(), random.Random(7), reader.index, 2**30)
        return [(sample.sample_id, sample.frames.render()) for sample in stage(raws)]

    without_bad, with_bad = clips(good), clips([good[0], bad, good[1]])
    assert [sample_id for sample_id, _ in with_bad] == [0, 2]
    for (_, expected), (_, got) in zip(without_bad, with_bad):
        assert torch.equal(expected, got)


def test_the_same_seed_gives_the_same_stored_batches_in_another_process(tmp_path):
    """The plan is drawn in the worker from the per-sample seed: two processes (different PYTHONHASHSEED) hand
    the device the same bytes and the same plan.

    Broken variant tried: the indexed reader seeding with Python's `hash` of the sample id (caught)."""
    import subprocess
    import sys

    shards = write(tmp_path, n=6, per_shard=3)
    script = (
        "import hashlib, sys, torch\n"
        "from sharded_data.reader import ReaderConfig, make_indexed_loader\n"
        "cfg = ReaderConfig(frame_size=12, max_frames=9, frame_drop=0.2, crop_scale=(0.6, 1.0), output='stored', "
        "num_workers=2, seed=5)\n"
        "digest = hashlib.sha256()\n"
        "for batch in make_indexed_loader(sys.argv[1], 'train', [[0, 1, 2], [3, 4, 5]], 3, cfg, train=True, epoch=1):\n"
        "    for key in ('stored_frames', 'stored_shapes', 'frame_index', 'frame_mask'):\n"
        "        digest.update(batch[key].numpy().tobytes())\n"
        "print(digest.hexdigest())\n"
    )
    digests = set()
    for hash_seed in ("1", "2"):
        env = {**__import__("os").environ, "PYTHONHASHSEED": hash_seed, "OMP_NUM_THREADS": "1"}
        done = subprocess.run([sys.executable, "-c", script, str(shards)], env=env, capture_output=True, text=True,
                              check=True)
        digests.add(done.stdout.strip())
    assert len(digests) == 1


def test_the_recipe_renders_stored_batches_wherever_it_reads_frames(corpus):
    """What GPU runs read (stored batches) reaches the model as what CPU runs read (uint8 batches, rendered in the
    worker): the training step's `video_inputs` and the evaluation's `translate_split` both render them.

    Broken variant tried: `translate_split` moving batch["frames"] as before (a stored batch has none: KeyError)."""
    from recipe.build import video_inputs
    from recipe.evaluate import translate_split

    engine = type("Engine", (), {"device": torch.device("cpu"), "bfloat16_enabled": lambda self: True,
                                 "fp16_enabled": lambda self: False})()
    plan = [[3, 8, 1]]
    stored = next(iter(make_indexed_loader(corpus, "train", plan, 3, config("stored"), train=True)))
    rendered = next(iter(make_indexed_loader(corpus, "train", plan, 3, config("uint8"), train=True)))
    frames, mask = video_inputs(stored, engine)
    assert frames.dtype == torch.bfloat16 and torch.equal(mask, rendered["frame_mask"])
    assert torch.equal(frames, normalize_frames(rendered["frames"]).bfloat16())

    class Spy:
        training = False

        def __init__(self):
            self.seen = []

        def eval(self):
            return self

        def train(self, mode=True):
            return self

        def generate(self, frames, frame_mask, **kwargs):
            self.seen.append(frames)
            return torch.zeros((frames.shape[0], 1), dtype=torch.long)

    class Tokenizer:
        def batch_decode(self, ids, skip_special_tokens=True):
            return ["" for _ in ids]

    seen = {}
    for output in ("stored", "uint8"):
        spy = Spy()
        translate_split(spy, Tokenizer(), str(corpus), "train", 4, config(output))
        seen[output] = spy.seen
    assert len(seen["stored"]) == len(seen["uint8"]) == 3
    for mine, theirs in zip(seen["stored"], seen["uint8"]):
        assert torch.equal(mine, theirs)

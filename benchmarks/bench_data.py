"""Read and write throughput of the shards against the per-frame PNG loader, over the same frames.

The same videos are stored three ways: per-frame PNG folders (the PHOENIX-2014T release layout, read
image by image with PIL as the field's reference code does: sharded_data/png_loader.py), and shards
with `frames.npy` or H.264 `mp4` members (sharded_data/write.py). Each is read by its loader with the
same transform (no augmentation, no resize) and the same number of DataLoader workers, on the same
cores, twice: with output="uint8" (the loader's own work; a GPU run normalizes on the device) and with
output="normalized" (float32 ImageNet-normalized batches, the contract's default). Loaders are timed
in turn, round after round, so that machine load hits them alike; the table gives the median
steady-state frames per second and the ratio to the PNG loader at the same frame size and output.
Write throughput is write_corpus from the PNG folders (so it includes reading the PNGs).

Content: real sign videos (shared/data/media: an AUTSL clip and a webcam signer) looped, cropped at
different places and resized, so that codec and PNG costs are those of camera footage, not of flat
synthetic colours. Without shared/data, the synthetic signer renderer is used instead.

Run (CPU; about 95 s of CPU time, 1.5 min on an idle 2-core machine):
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_data.py
Options: --sizes 64 224 --videos 24 --frames 48 --workers 2 --rounds 3 --batch-size 4 --work-dir DIR.
Prints a markdown table (paste into benchmarks/results/data.md).

`--gpu-feed` answers another question: how many CPU cores keep one GPU fed. It measures what one core
delivers (CPU seconds of the whole loader in one process, one thread: read, decode, plan, render or not,
collate) for npy and mp4 shards read at 224 px, in evaluation mode and with the training augmentation (the
stream, and the indexed reader the recipe trains with), for each loader output: "uint8" (rendered in the
loader), "stored" (the loader's share when the GPU crops, resizes and normalises) and "stored" rendered on the
CPU by the device function (its cost where it runs on a CPU); and the same at the CPU demo's geometry (32 px).
It also times the decode cost and fidelity of x264 settings, counts the training FLOPs per frame of `base` and
`large` (benchmarks/model_flops.py) and divides the frames/s one GPU consumes at a given MFU of its bf16 peak by
the frames/s per core. `--baseline DIR` times an earlier version's loaders (a copy of its tree, e.g.
`git archive REV | tar -x -C DIR`) beside this one's in the same run, alternating round by round in child
processes (this machine is shared and noisy: the ratios are the result):
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_data.py --gpu-feed --frames 117 --baseline DIR
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
# Run as a script from anywhere; BENCH_DATA_SOURCE: another checkout's sharded_data (--baseline's child processes).
sys.path.insert(0, os.environ.get("BENCH_DATA_SOURCE", str(REPO)))

from benchmarks.model_flops import PHOENIX_MEAN_FRAMES  # noqa: E402
from sharded_data.format import read_video_file  # noqa: E402
from sharded_data.png_loader import PngFrameDataset, PngVideo, make_png_loader  # noqa: E402
from sharded_data.reader import ReaderConfig, make_eval_loader, make_train_loader  # noqa: E402
from sharded_data.sources import FrameDirectorySource  # noqa: E402
from sharded_data.transforms import VideoTransform  # noqa: E402
from sharded_data.write import write_corpus  # noqa: E402

MEDIA = REPO.parent / "shared" / "data" / "media"
CLIPS = ("autsl_signer0_sample1000_color.mp4", "poseformat_test_video.mp4")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 224], help="frame sides to test")
    parser.add_argument("--videos", type=int, default=24)
    parser.add_argument("--frames", type=int, default=48, help="frames per video")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for every loader (and the writer)")
    parser.add_argument("--rounds", type=int, default=3, help="timed epochs per loader (median reported)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--work-dir", default=None, help="where PNGs and shards go (default: a temporary folder)")
    parser.add_argument("--media", type=Path, default=MEDIA, help="folder with the real sign videos (shared/data/media)")
    parser.add_argument("--gpu-feed", action="store_true", help="cores per GPU instead (see the module docstring)")
    parser.add_argument("--gpu-peak-tflops", type=float, default=790.0,
                        help="the GPU's dense bf16 matmul peak (H200: ~790 measured, ENVIRONMENT.md)")
    parser.add_argument("--mfu", type=float, default=0.4, help="model-FLOPs utilisation the GPU is assumed to reach")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="--gpu-feed: a checkout of an earlier version (e.g. `git worktree add DIR REV`) "
                             "whose loaders are timed beside this one's, round after round")
    parser.add_argument("--stored-size", type=int, nargs=2, default=[224, 224], metavar=("H", "W"),
                        help="--gpu-feed: the frame size the shards store (read at 224 px; PHOENIX: 210 260)")
    parser.add_argument("--skip-codecs", action="store_true", help="--gpu-feed: leave out the x264 settings table")
    parser.add_argument("--codecs-only", action="store_true", help="--gpu-feed: only the x264 settings table")
    parser.add_argument("--loader-cost", help=argparse.SUPPRESS)  # internal: one child process of --gpu-feed
    return parser.parse_args(argv)


# --------------------------------------------------------------------------------------------- content


def base_clips(media: Path = MEDIA) -> tuple[list[np.ndarray], str]:
    """Frames of real sign videos if shared/data is here, else synthetic signers."""
    if all((media / clip).is_file() for clip in CLIPS):
        return [read_video_file(media / clip) for clip in CLIPS], f"real sign videos ({', '.join(CLIPS)})"
    from sharded_data.signs import make_signer, render_sentence

    words = "the weather is fine today".split()
    clips = [render_sentence(words, make_signer(i, seed=0), (256, 256), frames_per_word=10, transition_frames=4, seed=i)
             for i in range(2)]
    return clips, "synthetic signers (shared/data/media not found)"


def make_video(clips: list[np.ndarray], number: int, n_frames: int, height: int, width: int | None = None) -> np.ndarray:
    """Video `number`: a clip looped to n_frames, a crop of the output's aspect ratio at a place depending on
    `number`, resized to height x width (a square of `height` by default)."""
    width = width or height
    clip = clips[number % len(clips)]
    frames = clip[(np.arange(n_frames) + 5 * number) % len(clip)]
    source_h, source_w = frames.shape[1:3]
    scale = 0.8 * min(source_h / height, source_w / width)
    crop_h, crop_w = int(height * scale), int(width * scale)
    rng = np.random.default_rng(number)
    top, left = rng.integers(0, source_h - crop_h + 1), rng.integers(0, source_w - crop_w + 1)
    frames = frames[:, top : top + crop_h, left : left + crop_w]
    return np.stack([np.asarray(Image.fromarray(frame).resize((width, height), Image.Resampling.BILINEAR))
                     for frame in frames])


def write_png_folders(root: Path, videos: list[np.ndarray]) -> list[str]:
    """PHOENIX layout: ROOT/train/NAME/images0001.png ... (PIL defaults, as in the release)."""
    folders = []
    for number, frames in enumerate(videos):
        folder = root / "train" / f"video{number:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        for index, frame in enumerate(frames):
            Image.fromarray(frame).save(folder / f"images{index + 1:04d}.png")
        folders.append(str(folder))
    return folders


def disk_bytes(path: Path) -> int:
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())


# ------------------------------------------------------------------------------------------- measuring


def reader_config(side: int, n_frames: int, workers: int, output: str) -> ReaderConfig:
    """Identity augmentation and no resize: every loader does the same work after decoding."""
    return ReaderConfig(frame_size=side, max_frames=n_frames, speed_range=(1.0, 1.0), frame_drop=0.0,
                        crop_scale=(1.0, 1.0), output=output, num_workers=workers, shuffle_buffer=64,
                        shuffle_initial=8)


def timed_epoch(make_loader) -> tuple[float, int, float]:
    """One full epoch: (steady-state seconds, frames after the first batch, seconds to the first batch).

    Steady state starts when the first batch arrives, so DataLoader start-up (forking workers, filling
    the shuffle buffer), which a long epoch amortizes, does not dominate these short epochs.
    """
    start = time.perf_counter()
    first_batch_at, frames = None, 0
    for batch in make_loader():
        if first_batch_at is None:
            first_batch_at = time.perf_counter()
        else:
            frames += int(batch["frame_mask"].sum())
    return time.perf_counter() - first_batch_at, frames, first_batch_at - start


# ------------------------------------------------------------------------------------- feeding a GPU

def x264_variants() -> dict[str, dict[str, str]]:
    """Decode cost and fidelity of the writer's settings and the alternatives tried. The writer's own come from
    sharded_data.format, imported here: a --baseline checkout's loaders import this module and may predate them."""
    from sharded_data.format import H264_OPTIONS

    return {
        "veryfast crf 18 (before 2026-11-30)": {"crf": "18", "preset": "veryfast", "bf": "0"},
        "veryfast crf 18 cabac=0 (the writer's before mbtree=0)": {"crf": "18", "preset": "veryfast", "bf": "0",
                                                                   "x264-params": "cabac=0"},
        # mbtree=0: the macroblock tree read uninitialised memory (tests/test_video_codec_determinism.py)
        "veryfast crf 18 cabac=0 mbtree=0 (the writer's)": H264_OPTIONS,
        "veryfast crf 18 tune=fastdecode (also no deblocking)": {"crf": "18", "preset": "veryfast", "bf": "0",
                                                                 "tune": "fastdecode"},
        "ultrafast crf 18": {"crf": "18", "preset": "ultrafast", "bf": "0"},
        "veryfast crf 23 tune=fastdecode (lossier)": {"crf": "23", "preset": "veryfast", "bf": "0",
                                                      "tune": "fastdecode"},
    }


def encode_with(frames: np.ndarray, options: dict[str, str]) -> bytes:
    import io
    from fractions import Fraction

    import av

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(25))
        stream.width, stream.height, stream.pix_fmt, stream.options = frames.shape[2], frames.shape[1], "yuv420p", options
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def cpu_seconds(run) -> float:
    start = time.process_time()
    run()
    return time.process_time() - start


# What one loader process costs per frame, measured in a child process so that the loaders of two versions of
# sharded_data (this checkout and --baseline) are timed in the same run, round after round.
LOADER_MODES = ("evaluation", "training, stream", "training, indexed")
LOADER_VARIANTS = {
    # name: (ReaderConfig.output, render the stored batch on this CPU inside the timed loop)
    "uint8": ("uint8", False),  # rendered in the loader (before: the CPU transform; after: the device's functions)
    "stored": ("stored", False),  # the loader's share of a GPU run: the device crops, resizes and normalises
    "stored, rendered on the CPU": ("stored", True),  # + render_stored_batch on the CPU, in the loader's process
}


def loader_cost(spec: dict) -> dict[str, float]:
    """Frames per CPU second of each (shards, mode, variant) in `spec`: one process, num_workers=0, one thread.

    Runs with whichever sharded_data is first on sys.path (this checkout, or --baseline's), set up as that
    version's DataLoader workers are (the allocator setting of `loader.keep_freed_memory`, where it exists)."""
    torch.set_num_threads(1)
    try:
        from sharded_data.loader import keep_freed_memory
    except ImportError:  # an earlier version: its workers ran with glibc's defaults
        pass
    else:
        keep_freed_memory()
    results = {}
    for name, shards in spec["shards"].items():
        frame_size, max_frames = spec["frame_size"][name], spec["max_frames"][name]
        for mode in LOADER_MODES:
            for variant in spec["variants"]:
                output, render = LOADER_VARIANTS[variant]
                cfg = ReaderConfig(frame_size=frame_size, max_frames=max_frames, output=output, num_workers=0,
                                   shuffle_buffer=16, shuffle_initial=4)  # the default augmentation at training
                make = loader_maker(shards, mode, cfg, spec["batch_size"])

                def epoch() -> int:
                    frames = 0
                    for batch in make():
                        if render:
                            from sharded_data.transforms import render_stored_batch

                            render_stored_batch(batch, "cpu", normalize=False)  # as the uint8 output: pixels
                        frames += int(batch["frame_mask"].sum())
                    return frames

                if spec.get("warm", True):
                    epoch()  # page cache, lazy imports
                start = time.process_time()
                frames = epoch()
                results[f"{name}|{mode}|{variant}"] = frames / (time.process_time() - start)
    return results


def loader_maker(shards: str, mode: str, cfg: ReaderConfig, batch_size: int):
    if mode == "evaluation":
        return partial(make_eval_loader, shards, "train", batch_size, 0, 1, cfg)
    if mode == "training, stream":
        return partial(make_train_loader, shards, "train", batch_size, 0, 1, 0, cfg)
    from sharded_data.format import load_index
    from sharded_data.reader import make_indexed_loader

    ids = load_index(shards, "train").sample_id  # the recipe's training path: batches of ids, per-sample seeds
    plan = [ids[start : start + batch_size] for start in range(0, len(ids) - batch_size + 1, batch_size)]
    return partial(make_indexed_loader, shards, "train", plan, batch_size, cfg, True, 0)


def measure_versions(spec: dict, versions: dict[str, Path], rounds: int) -> dict[tuple, float]:
    """{(version, shards, mode, variant): median frames per core-second}; versions alternate round by round."""
    rates: dict[tuple, list[float]] = {}
    for _ in range(rounds):
        for version, source in versions.items():
            variants = list(LOADER_VARIANTS) if version == "after" else ["uint8"]
            child = {**spec, "variants": variants}
            env = {**os.environ, "OMP_NUM_THREADS": "1", "BENCH_DATA_SOURCE": str(source)}
            done = subprocess.run([sys.executable, __file__, "--loader-cost", json.dumps(child)], env=env,
                                  capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"{version} loaders ({source}) failed:\n{done.stderr[-3000:]}")
            for key, rate in json.loads(done.stdout.strip().splitlines()[-1]).items():
                rates.setdefault((version, *key.split("|")), []).append(rate)
    return {key: statistics.median(values) for key, values in rates.items()}


def print_codec_table(videos: list[np.ndarray], rounds: int) -> None:
    from sharded_data.format import decode_mp4_bytes

    print("## Decode cost of x264 settings (decode_mp4_bytes: H.264 + conversion to RGB; one core)\n")
    print("| x264 settings | frames per CPU second | KiB per video | mean abs error (0-255) |")
    print("|---|---|---|---|")
    frames = sum(len(video) for video in videos)
    for name, options in x264_variants().items():
        encoded = [encode_with(video, options) for video in videos]
        rates = [frames / cpu_seconds(lambda: [decode_mp4_bytes(data) for data in encoded]) for _ in range(rounds)]
        error = statistics.mean(float(np.abs(decode_mp4_bytes(data).astype(np.float32) - video).mean())
                                for data, video in zip(encoded, videos))
        print(f"| {name} | {statistics.median(rates):,.0f} | {sum(map(len, encoded)) / len(encoded) / 1024:.0f} "
              f"| {error:.2f} |", flush=True)


def gpu_feed(args: argparse.Namespace, work: Path) -> None:
    from benchmarks.model_flops import flops_per_frame

    height, width = args.stored_size
    side = 224
    clips, content = base_clips(args.media)
    videos = [make_video(clips, number, args.frames, height, width) for number in range(args.videos)]
    print(f"content: {content}, {args.videos} videos x {args.frames} frames stored at {height}x{width} px, "
          f"read at {side} px\n")

    if not args.skip_codecs:
        print_codec_table(videos, args.rounds)
    if args.codecs_only:
        return

    root = work / "gpu_feed"
    shutil.rmtree(root, ignore_errors=True)
    # The CPU demo's geometry too (synthetic-corpus size: 32 px stored and read, 64 frames at most): the device
    # functions run on the CPU there, and must not make it slower.
    demo_side, demo_frames = 32, 64
    corpora = {"": (videos, side, args.frames), "demo 32 px, ": (
        [make_video(clips, number, demo_frames, demo_side, demo_side) for number in range(args.videos)],
        demo_side, demo_frames)}
    spec = {"shards": {}, "frame_size": {}, "max_frames": {}, "batch_size": args.batch_size}
    for prefix, (frames, frame_size, max_frames) in corpora.items():
        folders = write_png_folders(root / f"png{frame_size}", frames)
        sources = [FrameDirectorySource(f"video{n:04d}", f"sentence {n % 8}", signer=f"s{n % 3}", path=folder)
                   for n, folder in enumerate(folders)]
        for video_format in ("npy", "mp4"):
            shards = root / f"{video_format}{frame_size}"
            write_corpus(shards, {"train": sources}, video_format=video_format, samples_per_shard=4,
                         num_workers=args.workers, progress=False)
            name = f"{prefix}{video_format}"
            spec["shards"][name], spec["frame_size"][name], spec["max_frames"][name] = str(shards), frame_size, max_frames

    versions = {"after": REPO}
    if args.baseline:
        versions = {"before": args.baseline.resolve(), **versions}
    rates = measure_versions(spec, versions, args.rounds)

    gpu_rate = {}
    for preset in ("base", "large"):
        flops = flops_per_frame(preset, frames=PHOENIX_MEAN_FRAMES)
        gpu_rate[preset] = args.mfu * args.gpu_peak_tflops * 1e12 / flops["per_frame"]
        print(f"\n{preset}: {flops['per_frame'] / 1e9:.2f} GFLOP per training frame (counted, {PHOENIX_MEAN_FRAMES}-frame "
              f"video at 224 px, frame CNN {100 * flops['cnn_share']:.0f}%): one GPU at {100 * args.mfu:.0f}% of "
              f"{args.gpu_peak_tflops:.0f} TFLOP/s consumes {gpu_rate[preset]:,.0f} frames/s")

    def cores(rate: float, preset: str = "large") -> int:
        return math.ceil(gpu_rate[preset] / rate) + 1

    print("\n## Cores per GPU (loader frames per CPU second, one process, one thread, median of rounds; "
          "cores = GPU frames/s / that, + 1 for the training process)\n")
    before = "before" in versions
    columns = (["before: uint8 (CPU augmentation)"] if before else []) + [
        "after: uint8 (device functions on the CPU, in the loader)", "after: stored (the GPU renders)",
        "after: stored, rendered on the CPU"]
    print("| shards | loader | " + " | ".join(columns) + " | cores per GPU, base | cores per GPU, large |")
    print("|---|---|" + "---|" * len(columns) + "---|---|")
    for name in spec["shards"]:
        for mode in LOADER_MODES:
            values = ([rates["before", name, mode, "uint8"]] if before else []) + [
                rates["after", name, mode, variant] for variant in LOADER_VARIANTS]
            ratios = [f"{value:,.0f}" + (f" ({value / values[0]:.2f}x)" if before and i else "")
                      for i, value in enumerate(values)]
            stored = rates["after", name, mode, "stored"]
            base_cores = (f"{cores(values[0], 'base')} -> " if before else "") + str(cores(stored, "base"))
            large_cores = (f"{cores(values[0])} -> " if before else "") + str(cores(stored))
            gpu_rows = not name.startswith("demo")
            print(f"| {name} | {mode} | " + " | ".join(ratios) + f" | {base_cores if gpu_rows else '-'} | "
                  f"{large_cores if gpu_rows else '-'} |")


def loader_cost_child(spec_json: str) -> None:
    print(json.dumps(loader_cost(json.loads(spec_json))))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    if args.loader_cost:
        loader_cost_child(args.loader_cost)
        return
    if args.gpu_feed:
        work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench_data_"))
        print(f"# data benchmark, --gpu-feed: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
              f"torch {torch.__version__}; load average at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        gpu_feed(args, work)
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
        return
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench_data_"))
    clips, content = base_clips(args.media)
    total_frames = args.videos * args.frames
    print(f"# data benchmark: {args.videos} videos x {args.frames} frames, {args.workers} workers, "
          f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, torch {torch.__version__}")
    print(f"content: {content}; load average at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())}\n")

    write_rows, read_rows = [], []
    for side in args.sizes:
        root = work / f"side{side}"
        shutil.rmtree(root, ignore_errors=True)
        videos = [make_video(clips, number, args.frames, side) for number in range(args.videos)]
        folders = write_png_folders(root / "png", videos)
        sources = [FrameDirectorySource(f"video{n:04d}", f"sentence {n % 8}", signer=f"s{n % 3}", path=folder)
                   for n, folder in enumerate(folders)]
        shard_dirs = {}
        for video_format in ("npy", "mp4"):
            shard_dirs[video_format] = root / video_format
            summary = write_corpus(shard_dirs[video_format], {"train": sources}, video_format=video_format,
                                   samples_per_shard=4, num_workers=args.workers, progress=False)
            write_rows.append((side, video_format, total_frames / summary["seconds"], disk_bytes(shard_dirs[video_format])))

        sizes_on_disk = {"PNG": disk_bytes(root / "png"), "npy": disk_bytes(shard_dirs["npy"]),
                         "mp4": disk_bytes(shard_dirs["mp4"])}
        png_videos = [PngVideo(folder, f"sentence {n % 8}", n % 8) for n, folder in enumerate(folders)]
        loaders = {}
        for output in ("uint8", "normalized"):
            cfg = reader_config(side, args.frames, args.workers, output)
            png_dataset = PngFrameDataset(png_videos, VideoTransform.from_config(cfg, train=False),
                                          data_dir=str(root / "png"))
            loaders[output, "PNG folders (PIL per frame)"] = partial(make_png_loader, png_dataset, args.batch_size, cfg, True)
            for video_format in ("npy", "mp4"):
                loaders[output, f"shards {video_format}, stream"] = partial(
                    make_train_loader, shard_dirs[video_format], "train", args.batch_size, 0, 1, 0, cfg)
                if output == "uint8":  # the indexed reader does the same work after decoding as the stream
                    loaders[output, f"shards {video_format}, indexed"] = partial(
                        make_eval_loader, shard_dirs[video_format], "train", args.batch_size, 0, 1, cfg)
        timed_epoch(loaders["uint8", "shards npy, stream"])  # page cache and lazy imports warm for all alike
        rates: dict[tuple, list[float]] = {name: [] for name in loaders}
        startup: dict[tuple, list[float]] = {name: [] for name in loaders}
        expected = total_frames - args.batch_size * args.frames
        for _ in range(args.rounds):
            for name, make_loader in loaders.items():
                seconds, frames, first = timed_epoch(make_loader)
                if frames != expected:
                    raise RuntimeError(f"{name}: read {frames} frames after the first batch, expected {expected}")
                rates[name].append(frames / seconds)
                startup[name].append(first)
        for (output, name), values in rates.items():
            png_rate = statistics.median(rates[output, "PNG folders (PIL per frame)"])
            storage = next(kind for kind in sizes_on_disk if kind in name)
            read_rows.append((side, output, name, statistics.median(values), min(values), max(values),
                              statistics.median(values) / png_rate, statistics.median(startup[output, name]),
                              sizes_on_disk[storage]))

    print("## Read throughput (steady-state frames/s: median of rounds, min-max; ratio to the PNG loader at the "
          "same size; seconds to the first batch)\n")
    print("| frame side | output | loader | frames/s | min-max | x PNG | first batch | on disk |")
    print("|---|---|---|---|---|---|---|---|")
    for side, output, name, median, low, high, ratio, first, size in read_rows:
        print(f"| {side} | {output} | {name} | {median:,.0f} | {low:,.0f}-{high:,.0f} | {ratio:.1f}x | {first:.2f} s "
              f"| {size / 2**20:.1f} MiB |")
    print("\n## Write throughput (write_corpus from the PNG folders; frames/s incl. reading the PNGs)\n")
    print("| frame side | format | frames/s | on disk |")
    print("|---|---|---|---|")
    for side, video_format, rate, size in write_rows:
        print(f"| {side} | {video_format} | {rate:,.0f} | {size / 2**20:.1f} MiB |")
    if args.work_dir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

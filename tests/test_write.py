"""The shard writer: round trips, random access by offset, parallel = serial, resume, refusals, bad videos,
job-array tasks + finalize = one process (byte for byte), and that plain `tar`, `webdataset` and Hugging Face
`datasets` read what it writes."""
from __future__ import annotations

import io
import json
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from sharded_data.format import corpus_path, decode_video, encode_video, index_path, load_index, sample_key
from sharded_data.inspect import check_split
from sharded_data.sources import VideoFileSource, VideoSource
from sharded_data.write import (BadVideoError, IncompleteWriteError, SettingsMismatchError, main, parse_args,
                                write_corpus)


@dataclass
class Gradient(VideoSource):
    """Smooth moving colour ramps (what H.264 keeps well); `log` records each load, `fail_flag` simulates a crash."""

    seed: int = 0
    n_frames: int = 8
    side: int = 32
    log: str = ""
    fail_flag: str = ""

    def load_frames(self) -> np.ndarray:
        if self.log:
            with open(self.log, "a") as handle:
                handle.write(self.name + "\n")
        if self.fail_flag and Path(self.fail_flag).exists():
            raise RuntimeError(f"simulated crash while loading {self.name}")
        t = np.arange(self.n_frames)[:, None, None]
        y = np.arange(self.side)[None, :, None]
        x = np.arange(self.side)[None, None, :]
        base = 40 + (x * 2 + y + t * 2 + self.seed * 7) % 160
        return np.stack([base, 255 - base, (base + y) % 256], axis=-1).astype(np.uint8)


def corpus(n_train=10, n_dev=3, **fields) -> dict[str, list[VideoSource]]:
    # Five distinct train sentences; dev reuses two of them with other case/spacing (same sentence id expected).
    train = [Gradient(f"train/v{i}", f"Sentence number {i % 5}", signer=f"s{i % 3}", seed=i, n_frames=6 + i % 4, **fields)
             for i in range(n_train)]
    dev = [Gradient(f"dev/v{i}", ["sentence  NUMBER 1", "a dev only sentence", "Sentence number 3 "][i % 3], seed=100 + i,
                    **fields) for i in range(n_dev)]
    return {"train": train, "dev": dev}


def read_sample(shard_dir: Path, split: str, sample_id: int) -> dict[str, bytes]:
    """Random access exactly as a reader would do it: seek to the index offset, parse `size` bytes of tar."""
    index = load_index(shard_dir, split)
    path = shard_dir / index.shards[index.shard[sample_id]].name
    with path.open("rb") as handle:
        handle.seek(index.offset[sample_id])
        chunk = handle.read(index.size[sample_id])
    with tarfile.open(fileobj=io.BytesIO(chunk + b"\0" * 1024), mode="r:") as tar:
        return {member.name: tar.extractfile(member).read() for member in tar}


def test_npy_round_trip_is_exact_and_index_allows_random_access(tmp_path):
    sources = corpus()
    summary = write_corpus(tmp_path, sources, video_format="npy", samples_per_shard=4, num_workers=1, progress=False)
    assert summary["splits"]["train"] == dict(samples=10, skipped=0, shards=3, frames=sum(6 + i % 4 for i in range(10)))
    assert summary["shards_written"] == 4 and summary["shards_reused"] == 0
    train, dev = load_index(tmp_path, "train"), load_index(tmp_path, "dev")
    assert [shard.num_samples for shard in train.shards] == [4, 4, 2]
    # Same normalized text -> same sentence id, across splits; new text -> new id.
    assert train.sentence_id == [0, 1, 2, 3, 4] * 2
    assert dev.sentence_id == [1, 5, 3]
    for split, index in (("train", train), ("dev", dev)):
        for sample_id in (0, index.num_samples - 1):
            key = sample_key(split, sample_id)
            members = read_sample(tmp_path, split, sample_id)
            assert sorted(members) == [f"{key}.frames.npy", f"{key}.json", f"{key}.txt"]
            frames = decode_video("frames.npy", members[f"{key}.frames.npy"])
            np.testing.assert_array_equal(frames, sources[split][sample_id].load_frames())
            meta = json.loads(members[f"{key}.json"])
            assert meta == dict(sample_id=sample_id, sentence_id=index.sentence_id[sample_id],
                                signer=sources[split][sample_id].signer, n_frames=len(frames), fps=25.0,
                                source="manifest", split=split, name=sources[split][sample_id].name)
            assert members[f"{key}.txt"].decode() == sources[split][sample_id].text
    info = json.loads(corpus_path(tmp_path).read_text())
    assert info["counts"] == {"train": 10, "dev": 3} and info["frame_size"] == [32, 32] and info["fps"] == 25.0
    assert info["video_format"] == "npy" and info["num_sentences"] == 6


def test_mp4_round_trip_within_codec_tolerance_and_resize(tmp_path):
    sources = {"train": [Gradient(f"v{i}", "hello world", seed=i, n_frames=12, side=48) for i in range(3)]}
    write_corpus(tmp_path, sources, video_format="mp4", resize=(24, 40), num_workers=1, progress=False)
    from sharded_data.write import resize_frames

    for sample_id, src in enumerate(sources["train"]):
        key = sample_key("train", sample_id)
        decoded = decode_video("mp4", read_sample(tmp_path, "train", sample_id)[f"{key}.mp4"])
        expected = resize_frames(src.load_frames(), (24, 40))
        assert decoded.shape == expected.shape == (12, 24, 40, 3)
        assert np.abs(decoded.astype(float) - expected).mean() < 3
    assert json.loads(corpus_path(tmp_path).read_text())["frame_size"] == [24, 40]


def test_parallel_workers_write_the_same_shards_as_one_process(tmp_path):
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    write_corpus(serial, corpus(), video_format="npy", samples_per_shard=3, num_workers=1, progress=False)
    summary = write_corpus(parallel, corpus(), video_format="npy", samples_per_shard=3, num_workers=2, progress=False)
    assert summary["shards_written"] == 5
    for split in ("train", "dev"):
        a, b = load_index(serial, split), load_index(parallel, split)
        assert a.to_dict() == b.to_dict()
        for info in a.shards:
            with tarfile.open(serial / info.name) as ta, tarfile.open(parallel / info.name) as tb:
                assert [(m.name, ta.extractfile(m).read()) for m in ta] == [(m.name, tb.extractfile(m).read()) for m in tb]


def test_interrupted_write_resumes_without_redoing_finished_shards(tmp_path):
    out, log, flag = tmp_path / "out", tmp_path / "loads.txt", tmp_path / "crash"
    sources = {"train": corpus(n_train=10, log=str(log), fail_flag=str(flag))["train"]}
    # Crash while loading the first sample of the third shard (samples 6..8).
    sources["train"][6] = Gradient("train/v6", "Sentence number 1", seed=6, log=str(log), fail_flag=str(flag) + "-6")
    Path(str(flag) + "-6").touch()
    with pytest.raises(RuntimeError, match="simulated crash"):
        write_corpus(out, sources, video_format="npy", samples_per_shard=3, num_workers=1, progress=False)
    assert sorted(p.name for p in out.glob("shards-*.tar")) == ["shards-train-000000.tar", "shards-train-000001.tar"]
    assert not index_path(out, "train").exists() and not corpus_path(out).exists()
    assert not list(out.glob(".*tmp*"))  # the partial tar of the third shard was removed

    Path(str(flag) + "-6").unlink()
    log.write_text("")
    summary = write_corpus(out, sources, video_format="npy", samples_per_shard=3, num_workers=2, progress=False)
    assert summary["shards_written"] == 2 and summary["shards_reused"] == 2
    assert sorted(log.read_text().split()) == sorted(f"train/v{i}" for i in range(6, 10))  # only unfinished shards
    assert check_split(out, "train") == []

    fresh = tmp_path / "fresh"
    write_corpus(fresh, sources, video_format="npy", samples_per_shard=3, num_workers=1, progress=False)
    assert load_index(fresh, "train").to_dict() == load_index(out, "train").to_dict()

    log.write_text("")  # a complete folder: nothing is loaded again
    assert write_corpus(out, sources, video_format="npy", samples_per_shard=3, num_workers=1, progress=False)["shards_reused"] == 4
    assert log.read_text() == ""


@dataclass
class KillingGradient(Gradient):
    """Kills its own process (no cleanup, no exception handler runs) when `fail_flag` exists."""

    def load_frames(self) -> np.ndarray:
        if self.fail_flag and Path(self.fail_flag).exists():
            os.kill(os.getpid(), signal.SIGKILL)
        return super().load_frames()


def test_killed_write_resumes(tmp_path):
    out, flag = tmp_path / "out", tmp_path / "kill"
    sources = {"train": [KillingGradient(f"v{i}", f"text {i}", seed=i, fail_flag=str(flag) if i == 5 else "")
                         for i in range(8)]}
    flag.touch()
    # Import this module in the child under the name pytest gave it (tests.test_write or test_write).
    script = ("import importlib, sys; sys.path[:0] = sys.argv[1:3]; t = importlib.import_module(sys.argv[3]); "
              "t.write_corpus(sys.argv[4], {'train': [t.KillingGradient(f'v{i}', f'text {i}', seed=i, "
              "fail_flag=sys.argv[5] if i == 5 else '') for i in range(8)]}, video_format='npy', "
              "samples_per_shard=2, num_workers=1, progress=False)")
    here = Path(__file__).resolve().parent
    killed = subprocess.run([sys.executable, "-c", script, str(here), str(here.parent), KillingGradient.__module__,
                             str(out), str(flag)])
    assert killed.returncode == -signal.SIGKILL
    assert sorted(p.name for p in out.glob("shards-*.tar")) == ["shards-train-000000.tar", "shards-train-000001.tar"]
    assert len(list(out.glob(".shards-train-000002.tar.tmp-*"))) == 1  # the partial shard, left by the kill
    flag.unlink()
    summary = write_corpus(out, sources, video_format="npy", samples_per_shard=2, num_workers=1, progress=False)
    assert (summary["shards_written"], summary["shards_reused"]) == (2, 2)
    assert not list(out.glob(".*tmp*")) and check_split(out, "train") == []


def test_rerun_with_other_settings_is_refused(tmp_path):
    write_corpus(tmp_path, corpus(), video_format="npy", samples_per_shard=4, num_workers=1, progress=False)
    with pytest.raises(SettingsMismatchError, match=r"differ: samples_per_shard.*new --out folder"):
        write_corpus(tmp_path, corpus(), video_format="npy", samples_per_shard=5, num_workers=1, progress=False)
    changed = corpus()
    changed["train"][3].text = "another text"
    with pytest.raises(SettingsMismatchError, match="differ: sources"):
        write_corpus(tmp_path, changed, video_format="npy", samples_per_shard=4, num_workers=1, progress=False)
    assert load_index(tmp_path, "train").num_samples == 10  # the refused runs touched nothing


@pytest.mark.parametrize("num_workers", [1, 2])
def test_undecodable_video_names_the_file_and_leaves_no_index(tmp_path, num_workers):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50)
    sources = corpus()
    sources["dev"].append(VideoFileSource("dev/broken", "some text", path=str(broken)))
    out = tmp_path / "out"
    with pytest.raises(BadVideoError, match=r"broken\.mp4.*--skip-bad"):
        write_corpus(out, sources, video_format="npy", samples_per_shard=4, num_workers=num_workers, progress=False)
    assert not list(out.glob("index-*.json")) and not corpus_path(out).exists()


def test_skip_bad_skips_counts_and_keeps_ids_contiguous(tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    sources = corpus(n_train=9)
    for position in (1, 4):  # gaps in the first two shards: every later id shifts
        sources["train"][position] = VideoFileSource(f"train/bad{position}", "t", path=str(broken))
    out = tmp_path / "out"
    summary = write_corpus(out, sources, video_format="npy", samples_per_shard=3, num_workers=2, progress=False,
                           skip_bad=True)
    assert summary["splits"]["train"] == dict(samples=7, skipped=2, shards=3, frames=summary["splits"]["train"]["frames"])
    index = load_index(out, "train")
    kept = [src for i, src in enumerate(sources["train"]) if i not in (1, 4)]
    assert index.text == [src.text for src in kept]
    assert check_split(out, "train") == []  # keys, json sample ids and offsets all follow the new ids
    for sample_id, src in enumerate(kept):
        members = read_sample(out, "train", sample_id)
        key = sample_key("train", sample_id)
        np.testing.assert_array_equal(decode_video("frames.npy", members[f"{key}.frames.npy"]), src.load_frames())
    info = json.loads(corpus_path(out).read_text())
    assert info["skipped"]["train"] == 2 and {s["name"] for s in info["skipped_samples"]} == {"train/bad1", "train/bad4"}
    assert all("broken.mp4" in s["cause"] for s in info["skipped_samples"])
    again = write_corpus(out, sources, video_format="npy", samples_per_shard=3, num_workers=1, progress=False, skip_bad=True)
    assert again["shards_written"] == 0 and load_index(out, "train").to_dict() == index.to_dict()


@pytest.mark.parametrize("video_format", ["mp4", "npy"])
def test_plain_tar_webdataset_and_hf_datasets_read_the_shards(tmp_path, monkeypatch, video_format):
    out = tmp_path / "out"
    sources = corpus(n_train=7)
    write_corpus(out, sources, video_format=video_format, samples_per_shard=3, num_workers=1, progress=False)
    index = load_index(out, "train")
    video = "mp4" if video_format == "mp4" else "frames.npy"
    tar = shutil.which("tar")
    if tar:
        listed = subprocess.run([tar, "-tf", str(out / index.shards[0].name)], capture_output=True, text=True, check=True)
        assert listed.stdout.split() == [f"train_{i:08d}.{ext}" for i in range(3) for ext in (video, "txt", "json")]

    import webdataset as wds

    samples = list(wds.WebDataset(index.shard_paths(out), shardshuffle=False, empty_check=False))
    assert [s["__key__"] for s in samples] == [sample_key("train", i) for i in range(7)]
    assert [s["txt"].decode() for s in samples] == index.text
    assert decode_video(video, samples[4][video]).shape[0] == index.n_frames[4]

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from datasets import Video, load_dataset

    dataset = load_dataset("webdataset", data_files={"train": index.shard_paths(out)}, split="train",
                           cache_dir=str(tmp_path / "hf-cache"))
    assert len(dataset) == 7
    assert dataset["txt"] == index.text
    assert [row["sentence_id"] for row in dataset["json"]] == index.sentence_id
    if video_format == "mp4":
        # datasets decodes mp4 through torchcodec (not a dependency here): ask for the raw bytes instead.
        dataset = dataset.cast_column("mp4", Video(decode=False))
        assert decode_video("mp4", dataset[2]["mp4"]["bytes"]).shape[0] == index.n_frames[2]
    else:
        np.testing.assert_array_equal(np.asarray(dataset[2]["frames.npy"], dtype=np.uint8),
                                      sources["train"][2].load_frames())


def write_clip(clip: Path) -> None:
    """An ordinary H.264 file at 30 fps, as a user would bring."""
    import av

    clip.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(clip), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for frame in Gradient("a", "x", n_frames=5).load_frames():
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def test_cli_writes_from_a_manifest_and_reports_errors(tmp_path, capsys):
    write_clip(tmp_path / "clips" / "a.mp4")
    manifest = tmp_path / "manifest.tsv"
    manifest.write_text("split\tid\tvideo\ttext\tsigner\ntrain\ta\tclips/a.mp4\tguten abend\tS1\n"
                        "test\tb\tclips/a.mp4\tGuten  Abend\tS2\n")
    out = tmp_path / "out"
    assert main(["--manifest", str(manifest), "--out", str(out), "--workers", "1", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["splits"]["test"]["samples"] == 1
    assert load_index(out, "test").sentence_id == load_index(out, "train").sentence_id == [0]
    assert json.loads(corpus_path(out).read_text())["fps"] == 30.0

    manifest.write_text("split\tid\tvideo\ttext\ntrain\ta\tclips/missing.mp4\tguten abend\n")
    assert main(["--manifest", str(manifest), "--out", str(tmp_path / "out2"), "--no-progress"]) == 1
    error = capsys.readouterr().err
    assert f"{manifest}:2" in error and "missing.mp4" in error and "relative to" in error
    assert not (tmp_path / "out2").exists()


# --------------------------------------------------------------------- job array: N tasks, then finalize

ARRAY_SETTINGS = dict(video_format="npy", samples_per_shard=2, num_workers=1, progress=False, skip_bad=True)


def array_corpus(folder: Path) -> dict[str, list[VideoSource]]:
    """8 shards of 2 (train 0-5, dev 6-7 in plan order) and an undecodable video in train shard 2: with
    skip_bad, finalizing renumbers train shards 3-5, as one process does."""
    broken = folder / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    sources = corpus(n_train=11)
    sources["train"][4] = VideoFileSource("train/bad4", "t", path=str(broken))
    return sources


def run_task(out: Path, folder: Path, task_index: int, num_tasks: int = 3, barrier=None, **settings) -> dict:
    if barrier is not None:
        barrier.wait()  # every task claims the empty folder at the same moment
    return write_corpus(out, array_corpus(folder), task_index=task_index, num_tasks=num_tasks,
                        **{**ARRAY_SETTINGS, **settings})


def files(folder: Path) -> dict[str, bytes]:
    """Every file a write leaves (sidecars and settings included), with its bytes; the array's record aside."""
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*"))
            if path.is_file() and path.name != "tasks.json"}


def run_at_once(*calls: tuple) -> list[int]:
    """Run `run_task(*args)` for each call in its own process, all released together; their exit codes."""
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(len(calls))
    processes = [context.Process(target=run_task, args=args[:4], kwargs=dict(barrier=barrier, **args[4]))
                 for args in calls]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    return [process.exitcode for process in processes]


@pytest.mark.parametrize("at_once", [False, True], ids=["one-after-another", "all-at-once"])
def test_array_tasks_then_finalize_write_the_bytes_of_one_process(tmp_path, at_once):
    single, array = tmp_path / "single", tmp_path / "array"
    expected = write_corpus(single, array_corpus(tmp_path), **ARRAY_SETTINGS)
    if at_once:
        assert run_at_once(*[(array, tmp_path, index, 3, {}) for index in range(3)]) == [0, 0, 0]
    else:
        # Temporary files of writers killed mid-write: a task discards its own shards' (train 0), never those of
        # another task (train 1 belongs to task 1), which may be writing them right now.
        (array / ".progress").mkdir(parents=True)
        own, others = array / ".shards-train-000000.tar.tmp-4242", array / ".shards-train-000001.tar.tmp-4242"
        others_sidecar = array / ".progress" / ".shards-train-000001.json.tmp-4242"
        for path in (own, others, others_sidecar):
            path.write_bytes(b"partial")
        summaries = [run_task(array, tmp_path, 0)]
        assert not own.exists() and others.exists() and others_sidecar.exists()
        summaries += [run_task(array, tmp_path, index) for index in (1, 2)]
        assert not others.exists() and not others_sidecar.exists()
        assert [s["shards"] for s in summaries] == [3, 3, 2] and {s["shards_planned"] for s in summaries} == {8}
        assert sum(s["shards_written"] for s in summaries) == 8
    written = sorted(path.name for path in array.glob("shards-*.tar"))
    assert len(written) == 8 and not list(array.glob("index-*.json")) and not corpus_path(array).exists()

    summary = write_corpus(array, array_corpus(tmp_path), finalize=True, **ARRAY_SETTINGS)
    assert (summary["shards_written"], summary["shards_reused"]) == (0, 8)
    assert summary["splits"] == expected["splits"] and summary["splits"]["train"]["skipped"] == 1
    assert files(array) == files(single)
    assert check_split(array, "train") == [] and check_split(array, "dev") == []


def test_finalize_names_the_array_task_of_every_missing_shard(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(IncompleteWriteError, match="nothing was written here"):
        write_corpus(out, array_corpus(tmp_path), finalize=True, **ARRAY_SETTINGS)
    for index in (0, 2):  # task 1 failed
        run_task(out, tmp_path, index)
    with pytest.raises(IncompleteWriteError) as error:
        write_corpus(out, array_corpus(tmp_path), finalize=True, **ARRAY_SETTINGS)
    message = str(error.value)
    assert "3 of 8 planned shards are not finished" in message
    assert "task 1 of 3: shards-train-000001.tar, shards-train-000004.tar, shards-dev-000001.tar" in message
    assert "task 0" not in message and "task 2" not in message
    assert "NUM_TASKS=3 sbatch --array=1 slurm/shard.sh" in message
    assert not list(out.glob("index-*.json")) and not corpus_path(out).exists()

    run_task(out, tmp_path, 1)  # the re-run task
    write_corpus(out, array_corpus(tmp_path), finalize=True, **ARRAY_SETTINGS)
    assert load_index(out, "train").num_samples == 10


def test_array_task_with_other_settings_is_refused(tmp_path):
    out = tmp_path / "out"
    run_task(out, tmp_path, 0, 2)
    with pytest.raises(SettingsMismatchError, match=r"differ: samples_per_shard.*same flags"):
        run_task(out, tmp_path, 1, 2, samples_per_shard=3)
    with pytest.raises(SettingsMismatchError, match="differ: video_format"):
        write_corpus(out, array_corpus(tmp_path), finalize=True, **{**ARRAY_SETTINGS, "video_format": "mp4"})
    # The refused task wrote nothing: only task 0's shards (plan positions 0, 2, 4, 6) are there.
    assert sorted(p.name for p in out.glob("shards-*.tar")) == \
        ["shards-dev-000000.tar", *(f"shards-train-{n:06d}.tar" for n in (0, 2, 4))]

    # Starting at the same moment on an empty folder, one of two disagreeing tasks is refused.
    fresh = tmp_path / "fresh"
    codes = run_at_once((fresh, tmp_path, 0, 2, {}), (fresh, tmp_path, 1, 2, dict(samples_per_shard=3)))
    assert sorted(codes) == [0, 1], codes


@pytest.mark.parametrize("arguments, message", [
    (dict(task_index=3, num_tasks=3), r"0\.\.num_tasks-1 = 0\.\.2, got 3"),
    (dict(task_index=-1, num_tasks=3), r"got -1"),
    (dict(task_index=0), "go together"),
    (dict(num_tasks=2), "go together"),
    (dict(task_index=0, num_tasks=2, finalize=True), "once after the tasks"),
])
def test_bad_task_arguments_are_rejected(tmp_path, arguments, message):
    with pytest.raises(ValueError, match=message):
        write_corpus(tmp_path / "out", corpus(), **{**ARRAY_SETTINGS, **arguments})
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags, message", [
    (["--task-index", "3", "--num-tasks", "3"], r"--task-index must be in 0\.\.2 .*got 3"),
    (["--task-index", "0"], "go together"),
    (["--num-tasks", "4"], "go together"),
    (["--finalize", "--task-index", "0", "--num-tasks", "2"], "once after the array tasks"),
])
def test_cli_rejects_bad_task_flags(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--manifest", "corpus.tsv", "--out", "shards", *flags])
    assert exit_info.value.code == 2 and re.search(message, capsys.readouterr().err)


def test_cli_array_tasks_then_finalize(tmp_path, capsys):
    write_clip(tmp_path / "clips" / "a.mp4")
    manifest = tmp_path / "manifest.tsv"
    manifest.write_text("split\tid\tvideo\ttext\n" + "".join(f"train\tv{i}\tclips/a.mp4\ttext {i % 2}\n" for i in range(5)))
    single, array = tmp_path / "single", tmp_path / "array"
    common = ["--manifest", str(manifest), "--video-format", "npy", "--samples-per-shard", "1", "--workers", "1",
              "--no-progress"]
    assert main([*common, "--out", str(single)]) == 0
    capsys.readouterr()
    assert main([*common, "--out", str(array), "--task-index", "0", "--num-tasks", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["shards"] == 3  # plan positions 0, 2, 4
    assert main([*common, "--out", str(array), "--finalize"]) == 1
    error = capsys.readouterr().err
    assert "task 1 of 2: shards-train-000001.tar, shards-train-000003.tar" in error
    assert main([*common, "--out", str(array), "--task-index", "1", "--num-tasks", "2"]) == 0
    assert main([*common, "--out", str(array), "--finalize"]) == 0
    assert files(array) == files(single)


def test_mp4_encoder_is_single_threaded():
    """At 224 px x264 would choose 2 frame threads and sliced threads on its own; the writer runs one encoder per
    worker process and asks for one thread (the encoder's settings, which x264 writes into the stream itself,
    must say so). Broken variant tried: the writer's x264-params without threads=1 (threads=2 here)."""
    frames = (np.random.default_rng(0).random((6, 224, 224, 3)) * 255).astype(np.uint8)
    _, data = encode_video(frames, "mp4", fps=25.0)
    settings = data[data.index(b"options:"):].split(b"\x00", 1)[0].split()
    assert b"threads=1" in settings and b"lookahead_threads=1" in settings

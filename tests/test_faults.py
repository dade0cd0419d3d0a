"""Fault injection, one test (or a few) per item of issue 16: nothing trained is lost, no input can exhaust a
machine, a resumed run is the run it claims to be.

Each test injects the fault the issue found (a damaged file, a hostile name, a kill at a bad moment, a changed
flag) and checks the recipe's answer: a clear refusal naming the file and the fix, a skip that is counted, or a
fallback that loses nothing. Each docstring names the broken variant of the code the test was seen to fail on.
Tests are named test_itemNN_... after the issue's items (1 convert --out, 2 ds_config, 3 per-sample json,
4 corpus names, 5 shard names, 6 inspect on a lying tar, 7 torn marker, 8 shard checksums, 9 decode bound,
10 resume config, 11 best.json, 12 missing shards, 13 preemption, 14 trust), plus issue 18 item 6 (ranks
decide together). The decompression-bomb bound: test_item09_a_tiny_clip_claiming_a_huge_video_... .

Most recipe tests drive the real training loop (`run_training`) and CheckpointManager with `StubEngine`, the
few engine methods they call around a real torch model: the loop's order of saves, evaluations and signals is
what is under test, at a fraction of a DeepSpeed start's cost (DeepSpeed itself: test_checkpointing.py).
"""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from recipe.checkpointing import COMPLETE_MARKER, CheckpointManager, load_rng_file, read_marker, step_tag
from recipe.config import TrainConfig
from recipe.dist import DistEnv
from recipe.preemption import REQUEUE_EXIT_CODE
from recipe.run_dir import RESUMABLE_KEYS, RunDir, write_json_atomic
from recipe.training import ConfigChangedError, check_data, check_resumed_config, run_training
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
from tests.test_reader import exact_config, rows, sources, write
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


# =================================================================================== the recipe's side


class StubEngine:
    """The part of a DeepSpeed engine that the training loop and CheckpointManager use, around a real model and
    optimizer (no DeepSpeed: these tests are about the loop's control flow and files, at a fraction of the cost)."""

    def __init__(self, seed: int = 0):
        torch.manual_seed(seed)
        self.module = nn.Linear(4, 1)
        self.optimizer = torch.optim.SGD(self.module.parameters(), lr=0.1)
        self._config = type("Config", (), {"load_universal_checkpoint": False})()
        self.saves: list[str] = []

    def __call__(self, x):
        return self.module(x)

    def backward(self, loss):
        loss.backward()

    def is_gradient_accumulation_boundary(self):
        return True

    def step(self):
        self.optimizer.step()
        self.optimizer.zero_grad()

    def get_lr(self):
        return [0.1]

    def zero_optimization_stage(self):
        return 0

    def save_checkpoint(self, directory, tag, client_state, save_latest):
        (Path(directory) / tag).mkdir(parents=True, exist_ok=True)
        torch.save({"module": self.module.state_dict(), "client": client_state},
                   Path(directory) / tag / "mp_rank_00_model_states.pt")
        self.saves.append(tag)

    def load_checkpoint(self, directory, tag, **kwargs):
        saved = torch.load(Path(directory) / tag / "mp_rank_00_model_states.pt", weights_only=True)
        self.module.load_state_dict(saved["module"])
        return str(Path(directory) / tag), saved["client"]


class StubTask:
    """A TrainingTask of 4 micro-batches per epoch; `evaluate` runs `on_evaluate(step, final)` first."""

    def __init__(self, run: RunDir, on_evaluate=None, new_best_at=()):
        self.run, self.on_evaluate, self.new_best_at = run, on_evaluate, set(new_best_at)
        self.evaluations: list[tuple[int, bool]] = []
        self.best_recorded: list[tuple[int, bool]] = []  # (step, its checkpoint complete at that moment)
        self.best_step = None

    def micro_batches_per_epoch(self):
        return 4

    def epoch_batches(self, epoch, skip):
        generator = torch.Generator().manual_seed(epoch)
        batches = [torch.randn(2, 4, generator=generator) for _ in range(4)]
        return [{"x": x} for x in batches[skip:]]

    def compute_loss(self, engine, batch, progress):
        return engine(batch["x"]).pow(2).mean(), {}

    def after_optimizer_step(self, engine):
        return {}

    def on_epoch_end(self, engine, epoch):
        pass

    def evaluate(self, engine, step, final):
        self.evaluations.append((step, final))
        if self.on_evaluate is not None:
            self.on_evaluate(step, final)
        if step in self.new_best_at:
            self.best_step = step
            return {"dev_score": 1.0, "new_best": True}
        return {"dev_score": 0.0}

    def pinned_tags(self):
        return [step_tag(self.best_step)] if self.best_step is not None else []

    def record_best(self, step):
        complete = read_marker(self.run.checkpoints / step_tag(step)) is not None
        self.best_recorded.append((step, complete))
        write_json_atomic(self.run.root / "best.json", {"step": step, "dev_bleu4": 1.0})


def stub_config(tmp_path: Path, **fields) -> TrainConfig:
    values = dict(data=str(tmp_path / "data"), out=str(tmp_path / "run"), max_steps=6, save_every=0, eval_every=0,
                  keep_last=2, log_every=1, num_workers=0)
    values.update(fields)
    return TrainConfig(**values)


def train_stub(config: TrainConfig, task=None, engine=None):
    run = RunDir(Path(config.out))
    task = task or StubTask(run)
    return run_training(config, DistEnv(), run, engine or StubEngine(), task), task


# ------------------------------------------------------------------------------ item 1: convert_to_hf --out
def test_item01_convert_to_hf_refuses_to_replace_a_directory_it_did_not_write(tmp_path, capsys):
    """Broken variant tried: convert() without check_output (the old `shutil.rmtree(out_dir)`): `--out RUN`
    went on to the conversion and the precious file in a non-empty --out was deleted."""
    from recipe import convert_to_hf

    run = tmp_path / "runs" / "ft"
    (run / "checkpoints" / "step-000004").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    precious = tmp_path / "notes"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    for out in (run, run.parent, precious):
        with pytest.raises(SystemExit) as exit_info:
            convert_to_hf.main([str(run), "--out", str(out)])
        assert exit_info.value.code == 1
        message = capsys.readouterr().err
        assert "refusing to replace it" in message or "contains it" in message or "is the run directory" in message
    assert (precious / "thesis.tex").read_text() == "years of work" and (run / "checkpoints").is_dir()
    with pytest.raises(convert_to_hf.RefusedOutputError, match=r"rm -r .*notes"):
        convert_to_hf.check_output(precious, RunDir(run))
    # what it may replace: nothing there, an empty folder, or a previous export of this tool
    export = tmp_path / "export"
    export.mkdir()
    convert_to_hf.check_output(export, RunDir(run))
    (export / "model.safetensors").write_bytes(b"old")
    write_json_atomic(export / convert_to_hf.EXPORT_MARKER, {"run": str(run), "tag": "step-000002"})
    convert_to_hf.check_output(export, RunDir(run))
    convert_to_hf.check_output(tmp_path / "new", RunDir(run))


# ------------------------------------------------------------------------------ item 2: ds_config gaps
@pytest.mark.parametrize("edit, message", [
    (lambda c: c.update(scheduler={"type": "WarmupDecayLR", "params": {"total_num_steps": 5}}),
     r"scheduler\.params\.total_num_steps is 5 in the file but the recipe asks for 100"),
    (lambda c: c.pop("scheduler"), r"no scheduler section, so --warmup-steps .* would be silently dropped"),
    (lambda c: c.update(bf16=True), r'"bf16" is true, but it must be an object such as \{"enabled": true\}'),
    (lambda c: c.update(zero_optimization=2), r'"zero_optimization" is 2, but it must be an object'),
    (lambda c: c.update(optimizer="AdamW"), r'"optimizer" is "AdamW", but it must be an object'),
], ids=["decay-total-steps", "no-scheduler", "bf16-true", "zero-int", "optimizer-string"])
def test_item02_deepspeed_config_gaps_are_refused_naming_key_and_fix(tmp_path, edit, message):
    """Broken variants tried: resolve_ds_config without _check_shapes (AttributeError: 'bool' object has no
    attribute 'get'), and with the old scheduler block (WarmupDecayLR's 5 steps and a missing scheduler
    accepted)."""
    from recipe.ds_config import DeepSpeedConfigError, load_ds_config, resolve_ds_config

    config = load_ds_config(REPO / "ds_configs" / "zero2.json")
    edit(config)
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(config))
    with pytest.raises(DeepSpeedConfigError, match=message) as error:
        resolve_ds_config(path, micro_batch_size=4, grad_accum=1, world_size=1, lr=1e-4, weight_decay=0.0,
                          gradient_clipping=1.0, warmup_steps=10, total_steps=100, device_type="cpu")
    assert str(path) in str(error.value)


# ------------------------------------------------------------------------------ item 7: torn complete.json
@pytest.mark.parametrize("torn", [b"", b'{"tag": "step-0000', b"null", b'{"tag": "step-000006"}'])
def test_item07_an_empty_or_torn_marker_falls_back_to_the_previous_complete_checkpoint(tmp_path, torn):
    """Broken variant tried: read_marker with a bare json.loads (JSONDecodeError stops every resume)."""
    checkpoints = tmp_path / "checkpoints"
    for step in (2, 4):
        engine = StubEngine(seed=step)
        CheckpointManager(checkpoints, keep_last=0).save(engine, step, {"note": step})
    (checkpoints / step_tag(6)).mkdir()
    (checkpoints / step_tag(6) / COMPLETE_MARKER).write_bytes(torn)
    (checkpoints / "latest").write_text(step_tag(6))
    manager = CheckpointManager(checkpoints)
    assert manager.latest_tag() == step_tag(4) and step_tag(6) in manager.partial_tags()
    engine = StubEngine(seed=99)
    state = manager.resume(engine)
    assert state["step"] == 4 and state["note"] == 4
    assert torch.equal(engine.module.weight, StubEngine(seed=4).module.weight)


# ------------------------------------------------------------------- item 10: a resumed run is the same run
def test_item10_resuming_with_settings_that_change_the_run_is_refused(tmp_path):
    """Broken variant tried: check_resumed_config returning at once (the old behaviour: config.json silently
    overwritten with --data, --micro-batch-size ... of another run)."""
    from recipe.config import to_dict

    config = stub_config(tmp_path)
    run = RunDir(Path(config.out))
    ds_config = {"zero_optimization": {"stage": 2}, "train_batch_size": 8,
                 "scheduler": {"type": "WarmupCosineLR", "params": {"total_num_steps": 6, "warmup_num_steps": 2}}}
    run.describe(to_dict(config), ds_config, 1)
    check_resumed_config(replace(config, micro_batch_size=99), run, ds_config)  # no checkpoint yet: a fresh start
    train_stub(config)  # leaves checkpoints

    check_resumed_config(config, run, ds_config)
    may_change = dict(max_steps=12, eval_every=3, save_every=2, keep_last=5, num_workers=4, log_every=7,
                      out=str(tmp_path / "moved"))
    assert set(may_change) == set(RESUMABLE_KEYS)
    longer = {**ds_config, "train_batch_size": 16,
              "scheduler": {"type": "WarmupCosineLR", "params": {"total_num_steps": 12, "warmup_num_steps": 2}}}
    check_resumed_config(replace(config, **may_change), run, longer)
    for key, value in (("data", "/elsewhere"), ("micro_batch_size", 16), ("tokenizer", "tok"), ("lr", 0.5),
                       ("grad_accum", 2), ("seed", 1), ("preset", "base")):
        with pytest.raises(ConfigChangedError, match=rf"--{key.replace('_', '-')} \({key}: .* -> .*\)"):
            check_resumed_config(replace(config, **{key: value}), run, ds_config)
    with pytest.raises(ConfigChangedError, match=r"ds_config zero_optimization\.stage: 2 -> 3") as error:
        check_resumed_config(config, run, {**ds_config, "zero_optimization": {"stage": 3}})
    assert "may change on resume: --max-steps, --eval-every" in str(error.value)


def test_item10_pretrain_refuses_a_changed_relaunch_before_touching_config_json(reference_run, shards, tmp_path):
    """The check is wired before the run directory is described. Broken variant tried: preflight called after
    run.describe (config.json already rewritten with the new batch size when the refusal comes)."""
    from recipe import pretrain
    from tests.conftest import copy_run, reference_args, run_main

    run = copy_run(reference_run, tmp_path / "run")
    stored = (run / "config.json").read_text()
    argv = reference_args(shards, run)
    original = argv[argv.index("--micro-batch-size") + 1]
    argv[argv.index("--micro-batch-size") + 1] = "4"
    with pytest.raises(SystemExit, match=rf"--micro-batch-size \(micro_batch_size: {original} -> 4\)"):
        run_main(pretrain.main, argv)
    assert (run / "config.json").read_text() == stored


# ---------------------------------------------------------- item 11: best.json only names a checkpoint that exists
def test_item11_best_json_is_written_after_its_checkpoint_and_export_falls_back_without_it(tmp_path, caplog):
    """Broken variant tried: run_training calling task.record_best before save() (best.json named a tag that
    did not exist yet: a kill in between left it dangling)."""
    from recipe.convert_to_hf import default_tag

    config = stub_config(tmp_path, eval_every=2, save_every=0, keep_last=1)
    run = RunDir(Path(config.out))
    _, task = train_stub(config, StubTask(run, new_best_at={2}))
    assert task.best_recorded == [(2, True)]
    assert CheckpointManager(run.checkpoints).complete_tags() == [step_tag(2), step_tag(6)]  # pinned, kept
    assert default_tag(run) == step_tag(2)
    shutil.rmtree(run.checkpoints / step_tag(2))  # as if killed between best.json and its checkpoint
    assert default_tag(run) == ""  # the newest checkpoint, with a warning
    assert "not a complete checkpoint" in caplog.text


# ------------------------------------------------------------ item 12: the data is complete before any compute
def test_item12_training_refuses_a_data_directory_with_a_missing_shard_in_any_split(tmp_path):
    """Broken variant tried: check_data looking at the train split only (a missing dev shard surfaced at the
    first evaluation, after training)."""
    corpus = tmp_path / "data"
    write_corpus(corpus, {"train": sources(8), "dev": sources(6)}, video_format="npy", samples_per_shard=2,
                 num_workers=1, progress=False)
    check_data(corpus)
    (corpus / load_index(corpus, "dev").shards[1].name).unlink()
    with pytest.raises(SystemExit, match=r"(?s)nothing was computed.*split 'dev'.*shards-dev-000001\.tar: missing"):
        check_data(corpus)


# --------------------------------------------------------------------------------- item 13: preemption
def test_item13_a_signal_during_the_final_evaluation_exits_at_once_and_the_requeued_job_redoes_it(tmp_path):
    """Broken variants tried: run_training evaluating before the final save (the signal then found no
    checkpoint of the trained state), and without `stopper.checkpointed()` (the evaluation ran on to its end
    before the signal was looked at)."""
    config = stub_config(tmp_path)
    run = RunDir(Path(config.out))
    finished_evaluations = []

    def long_evaluation(step, final):
        if final:
            os.kill(os.getpid(), signal.SIGUSR1)  # e.g. SLURM's --signal=USR1@120 during a long beam search
            for _ in range(100):
                time.sleep(0.01)
            finished_evaluations.append(step)

    with pytest.raises(SystemExit) as exit_info:
        train_stub(config, StubTask(run, on_evaluate=long_evaluation))
    assert exit_info.value.code == REQUEUE_EXIT_CODE and finished_evaluations == []
    assert CheckpointManager(run.checkpoints).latest_tag() == step_tag(6)  # the trained state is on disk
    result, task = train_stub(config)  # the requeued job: resumes at the last step, only evaluates
    assert result.state.step == 6 and task.evaluations == [(6, True)] and result.final_metrics["dev_score"] == 0.0


def test_item13_a_signal_during_a_periodic_save_stops_before_the_evaluation(tmp_path):
    """Broken variant tried: the old order (evaluate, then save, then look at the flag): the evaluation ran
    although the job was being preempted."""
    config = stub_config(tmp_path, save_every=2, eval_every=2)
    run = RunDir(Path(config.out))
    engine = StubEngine()
    save = engine.save_checkpoint

    def save_then_signal(*args, **kwargs):
        save(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)  # arrives while the checkpoint is being written

    engine.save_checkpoint = save_then_signal
    task = StubTask(run)
    with pytest.raises(SystemExit) as exit_info:
        train_stub(config, task, engine)
    assert exit_info.value.code == REQUEUE_EXIT_CODE and task.evaluations == []
    assert CheckpointManager(run.checkpoints).latest_tag() == step_tag(2)


SIGTERM_PROBE = """
import os, signal, sys, time
sys.path.insert(0, {repo!r})
from recipe.preemption import PreemptionHandler
stopper = PreemptionHandler(term_grace_s={grace})
for _ in range({count}):
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.2)
time.sleep(60)  # a worker that never reaches a step boundary again (its peer is gone)
"""


@pytest.mark.parametrize("count, expected", [(1, 143), (2, -signal.SIGTERM)], ids=["grace-over", "second-sigterm"])
def test_item13_sigterm_is_never_swallowed(count, expected):
    """The launcher's teardown SIGTERM ends the process: after the grace period (exit status 143), or at once
    on a second SIGTERM. Broken variant tried: the old handler (a flag only): the process slept its 60 s."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", SIGTERM_PROBE.format(repo=str(REPO), grace=2, count=count)],
                          capture_output=True, text=True, timeout=45)
    assert done.returncode == expected, done.stderr
    assert time.monotonic() - started < 40
    if count == 1:
        assert "still running 2 s after SIGTERM" in done.stderr


CRASH_POINTS = ("engine-saved", "torn-marker", "marker-written", "mid-prune")


def crash_child(out: str, point: str) -> None:
    """Train the stub run; SIGKILL this process at `point` of its second save (run in a subprocess)."""
    import recipe.checkpointing as checkpointing

    saves = []

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    engine = StubEngine()
    if point == "engine-saved":
        save = engine.save_checkpoint

        def save_and_die(*args, **kwargs):
            save(*args, **kwargs)
            saves.append(1)
            if len(saves) == 2:
                die()
        engine.save_checkpoint = save_and_die
    elif point == "torn-marker":
        def torn_write(path, obj):
            saves.append(1)
            if len(saves) == 2:  # a file system that did not keep the write atomic
                Path(path).write_text(json.dumps(obj)[:15])
                die()
            write_json_atomic(path, obj)
        checkpointing.write_json_atomic = torn_write
    elif point == "marker-written":
        write_text = checkpointing.write_text_atomic

        def latest_then_die(path, text):
            saves.append(1)
            if len(saves) == 2:
                die()
            write_text(path, text)
        checkpointing.write_text_atomic = latest_then_die
    elif point == "mid-prune":
        def rmtree_halfway(path, ignore_errors=False):  # the worst order: the marker would go last
            files = sorted(f for f in Path(path).rglob("*") if f.name != COMPLETE_MARKER) if Path(path).exists() else []
            if files:
                files[0].unlink()
                die()
        checkpointing.shutil.rmtree = rmtree_halfway
    config = TrainConfig(data="unused", out=out, max_steps=12, save_every=1, keep_last=1, log_every=1)
    train_stub(config, engine=engine)


@pytest.mark.slow
def test_item13_a_kill_at_any_point_of_a_save_leaves_a_loadable_checkpoint(tmp_path):
    """SIGKILL at four points of a save (after the engine wrote its files; a torn marker; marker written but not
    `latest`; half-way through pruning the previous tag): each time the next process resumes from the newest
    complete checkpoint and the run ends with the weights of an uninterrupted one. Broken variants tried:
    read_marker without the torn-marker fallback (the torn-marker resume died with JSONDecodeError), and
    _prune deleting the tag before its marker (mid-prune: the half-deleted tag still counted as complete and
    the resume failed to load it)."""
    out = tmp_path / "crashed"
    resumed_from = []
    for point in CRASH_POINTS:
        done = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(REPO)!r}); "
                               f"from tests.test_faults import crash_child; crash_child({str(out)!r}, {point!r})"],
                              capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert done.returncode == -signal.SIGKILL, (point, done.stderr[-3000:])
        latest = CheckpointManager(out / "checkpoints").latest_tag()
        assert latest is not None, point
        resumed_from.append(latest)
        for tag in CheckpointManager(out / "checkpoints").complete_tags():
            assert (out / "checkpoints" / tag / "mp_rank_00_model_states.pt").is_file(), (point, tag)
            assert (out / "checkpoints" / tag / "rng-rank00000.pt").is_file(), (point, tag)
    assert [int(tag[-6:]) for tag in resumed_from] == sorted(int(tag[-6:]) for tag in resumed_from)
    config = TrainConfig(data="unused", out=str(out), max_steps=12, save_every=1, keep_last=1, log_every=1)
    finished, _ = train_stub(config)
    reference, _ = train_stub(replace(config, out=str(tmp_path / "uninterrupted")))
    assert finished.state.step == reference.state.step == 12
    # weights after resuming four times = weights of the uninterrupted run
    crashed_engine, clean_engine = StubEngine(), StubEngine()
    CheckpointManager(out / "checkpoints").resume(crashed_engine)
    CheckpointManager(tmp_path / "uninterrupted" / "checkpoints").resume(clean_engine)
    assert torch.equal(crashed_engine.module.weight, clean_engine.module.weight)


# ----------------------------------------------------------------------------- item 14: trust boundaries
class _Touch:
    """Unpickling this runs code (creates a file): what a hostile .pt could do."""

    def __init__(self, flag: str):
        self.flag = flag

    def __reduce__(self):
        return (Path.touch, (Path(self.flag),))


def test_item14_run_files_are_unpickled_safely_and_models_load_from_local_directories_only(tmp_path):
    """Broken variants tried: load_rng_file with weights_only=False (the hostile file ran its code: the flag
    file appeared), and load_local_model without its local check and local_files_only (a Hub-like id went
    to the network instead of failing at once with a message)."""
    from recipe.translate import load_local_model

    flag = tmp_path / "FLAG"
    torch.save({"python": _Touch(str(flag))}, tmp_path / "rng-rank00000.pt")
    with pytest.raises(Exception, match="Weights only load failed|Unsupported global"):
        load_rng_file(tmp_path / "rng-rank00000.pt")
    assert not flag.exists()
    from recipe.seeding import capture_rng_state
    torch.save(capture_rng_state(), tmp_path / "good.pt")  # a real RNG file (NumPy state included) loads
    assert load_rng_file(tmp_path / "good.pt")["numpy"][0] == "MT19937"

    for missing in ("facebook/mbart-large-50", str(tmp_path / "no-such-export")):
        with pytest.raises(FileNotFoundError, match="local directories only"):
            load_local_model(missing)


# ----------------------------------------- issue 18 item 6: file-system decisions are rank 0's, broadcast
def _split_view_worker(rank: int, world_size: int, checkpoints: str, port: int) -> dict:
    """Rank 1 reads a stale file system (as NFS attribute caching can show it): it believes step 4 is already
    saved, and that step 2 is the newest checkpoint."""
    from datetime import timedelta

    import torch.distributed as dist

    import recipe.checkpointing as checkpointing

    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=timedelta(seconds=60))
    engine = StubEngine()
    if rank == 1:  # DeepSpeed's model file is rank 0's; every rank makes the tag directory
        engine.save_checkpoint = lambda directory, tag, **kwargs: (Path(directory) / tag).mkdir(parents=True, exist_ok=True)
    manager = CheckpointManager(Path(checkpoints), keep_last=0)
    manager.save(engine, 2, {})
    real_read_marker = checkpointing.read_marker
    if rank == 1:
        checkpointing.read_marker = lambda tag_dir: ({"step": 4, "world_size": 2} if Path(tag_dir).name == step_tag(4)
                                                     else real_read_marker(tag_dir))
    manager.save(engine, 4, {})  # rank 1 alone would skip it, and rank 0 would wait for it in a barrier
    checkpointing.read_marker = real_read_marker
    if rank == 1:
        manager.latest_tag = lambda: step_tag(2)
    engine.load_checkpoint = lambda directory, tag, **kwargs: (str(Path(directory) / tag), {"recipe_client_state": {
        "step": int(tag[-6:]), "world_size": 2}})
    state = manager.resume(engine)
    dist.destroy_process_group()
    return {"resumed": state["step"], "rng_files": sorted(p.name for p in (Path(checkpoints) / step_tag(4)).glob("rng-*"))}


def _bad_sample_worker(rank: int, world_size: int, corpus: str) -> str:
    """Rank 0's first batch holds both bad samples: alone it is over the limit, the job as a whole is too."""
    loader = make_eval_loader(corpus, "train", 4, rank, world_size,
                              exact_config(bad_fraction_limit=0.2, min_samples_for_limit=1), require_every_sample=False)
    batches = 0
    try:
        for _ in loader:
            batches += 1
    except TooManyBadSamples as error:
        return f"stopped after {batches} batches: {str(error)[:40]}"
    return f"finished {batches} batches"


@pytest.mark.slow
def test_issue18_ranks_take_file_system_and_bad_sample_decisions_together(tmp_path):
    """Broken variants tried: CheckpointManager.save reading the marker on every rank (rank 1 skipped the save,
    rank 0 timed out in the barrier), resume() taking each rank's own latest_tag (rank 1 loaded step 2, rank 0
    step 4), and VideoLoader without RankAgreement (rank 0 stopped at its first batch, rank 1 finished)."""
    from recipe.dist import free_port
    from tests.distributed import run_on_ranks

    results = run_on_ranks(_split_view_worker, world_size=2, init_process_group=False,
                           args=(str(tmp_path / "checkpoints"), free_port()))
    assert [r["resumed"] for r in results] == [4, 4]
    assert results[0]["rng_files"] == ["rng-rank00000.pt", "rng-rank00001.pt"]  # rank 1 did save step 4

    corpus = write(tmp_path, n=16, per_shard=4)
    for sample_id in (0, 2):  # rank 0 reads the even ids
        edit_sample(corpus, sample_id, lambda members: {**members, "frames.npy": b"\x93NUMPY garbage"})
    outcomes = run_on_ranks(_bad_sample_worker, world_size=2, args=(str(corpus),))
    assert outcomes[0] == outcomes[1] and outcomes[0].startswith("stopped after 0 batches"), outcomes

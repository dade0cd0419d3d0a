"""`python -m sharded_data.inspect`: the summary of a written corpus, `--check` finding corrupt samples, and
`--pairs` printing the pair statistics of any shard folder."""
from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass, replace

import numpy as np
import pytest

from sharded_data.format import index_path, load_index
from sharded_data.inspect import check_split, main, summarize_split
from sharded_data.sources import VideoSource
from sharded_data.write import write_corpus


@dataclass
class Ramp(VideoSource):
    n_frames: int = 5

    def load_frames(self) -> np.ndarray:
        t, y, x = np.meshgrid(np.arange(self.n_frames), np.arange(16), np.arange(16), indexing="ij")
        return np.stack([(40 + 4 * x + 3 * t) % 256, 80 + 4 * y, 100 + 0 * x], axis=-1).astype(np.uint8)


@pytest.fixture
def shards(tmp_path):
    sources = {"train": [Ramp(f"v{i}", f"text {i % 4}", signer=f"s{i % 2}", n_frames=5 + i, fps=25.0) for i in range(8)],
               "dev": [Ramp("d0", "text 1", signer="s9")]}
    write_corpus(tmp_path, sources, video_format="mp4", samples_per_shard=3, num_workers=1, progress=False)
    return tmp_path


def test_summary_counts_durations_signers_sentences(shards, capsys):
    summary = summarize_split(shards, "train", num_examples=2)
    assert summary["samples"] == 8 and summary["shards"] == 3
    assert summary["frames"] == sum(range(5, 13)) and summary["frames_max"] == 12
    assert summary["seconds_max"] == pytest.approx(12 / 25) and summary["signers"] == {"s0": 4, "s1": 4}
    assert summary["distinct_sentences"] == 4
    assert [e["key"] for e in summary["examples"]] == ["train_00000000", "train_00000001"]
    assert main([str(shards), "--check"]) == 0
    out = capsys.readouterr().out
    assert "[train] 8 samples in 3 shards" in out and "[dev] 1 samples" in out and "check: OK" in out


def corrupt_member(path, suffix: str, position: int = 0) -> str:
    """Overwrite the middle of the `position`-th member ending in `suffix`, in place; returns its key."""
    with tarfile.open(path) as tar:
        member = [m for m in tar.getmembers() if m.name.endswith(suffix)][position]
    with open(path, "r+b") as handle:
        handle.seek(member.offset_data + 16)
        handle.write(b"\xff" * max(1, member.size - 32))
    return member.name.split(".")[0]


def test_check_lists_a_corrupt_video_and_exits_1(shards, capsys):
    index = load_index(shards, "train")
    key = corrupt_member(shards / index.shards[1].name, ".mp4", position=1)
    bad = check_split(shards, "train")
    assert [(b.shard, b.key) for b in bad] == [(index.shards[1].name, "-"), (index.shards[1].name, key)]
    assert "SHA-256 differs" in bad[0].cause  # the shard as a whole: its checksum (issue 16, item 8)
    assert "does not decode" in bad[1].cause or "n_frames" in bad[1].cause
    assert main([str(shards), "--check", "--split", "train"]) == 1
    assert f"{index.shards[1].name}  {key}" in capsys.readouterr().out


def test_check_finds_truncated_shards_and_index_mismatches(shards):
    index = load_index(shards, "train")
    last = shards / index.shards[2].name
    last.write_bytes(last.read_bytes()[: index.offset[7] + 700])  # cut inside the last sample's video
    data = json.loads(index_path(shards, "train").read_text())
    data["text"][1] = "not what the shard says"
    data["offset"][4] += 512
    index_path(shards, "train").write_text(json.dumps(data))
    found = {(b.shard, b.key): b.cause for b in check_split(shards, "train")}
    assert "text" in found[(index.shards[0].name, "train_00000001")]
    assert "offset" in found[(index.shards[1].name, "train_00000004")]
    assert any("unreadable tar" in cause or "not found" in cause for (shard, _), cause in found.items() if shard == last.name)
    assert (last.name, "train_00000007") in found  # the cut sample is reported, whatever the cause
    assert "the index records" in found[(last.name, "-")]  # and the shard's size
    assert (index.shards[0].name, "train_00000000") not in found  # intact samples are not


def test_inspect_a_folder_without_index(tmp_path, capsys):
    assert main([str(tmp_path)]) == 1
    assert "no index" in capsys.readouterr().err


def test_pairs_on_shards_without_glosses_says_na(shards, capsys):
    """`--pairs` works on any shard folder: a corpus without gloss annotations gets n/a in the gloss rows."""
    assert main([str(shards), "--pairs"]) == 0
    out = capsys.readouterr().out
    assert "| statistic | train |" in out
    assert "| gloss overlap of a random pair, mean | n/a |" in out
    assert "| one sign apart, share of pairs | n/a |" in out
    assert "| signers | 2, largest 50% |" in out
    assert "| samples / distinct sentences | 8 / 4 |" in out
    assert "| exact twins (same text), share of pairs | 14.29% |" in out  # 4 texts x 2 samples: 4 of 28 pairs


def test_pairs_on_a_synthetic_corpus_uses_its_ground_truth(tmp_path, capsys):
    from sharded_data.synth import PRESETS, write_synthetic_corpus

    config = replace(PRESETS["dense-neighbours"], train=40, dev=8, test=8, frame_size=(16, 16))
    write_synthetic_corpus(tmp_path, config, video_format="npy", num_workers=1)
    assert main([str(tmp_path), "--pairs", "--split", "train", "--split", "dev"]) == 0
    out = capsys.readouterr().out
    assert "| statistic | train | dev |" in out
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ")[1:] for line in out.splitlines() if line.startswith("| ")}
    assert "n/a" not in rows["gloss overlap of a random pair, mean"][0]
    assert rows["random batches of 16 holding a hidden twin"][1].strip(" |") == "n/a"  # dev has 8 < 16 samples
    assert main([str(tmp_path), "--pairs", "--split", "nope"]) == 1

"""Corpus layouts -> sources -> shards: manifests (TSV/JSONL, real clips in two codecs, frame folders), the official
PHOENIX-2014T layout rebuilt from two real frames, CSL-Daily from synthetic frames, and the layout errors."""
from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sharded_data.format import corpus_path, load_index
from sharded_data.inspect import check_split
from sharded_data.sources import (
    FrameDirectorySource,
    LayoutError,
    VideoFileSource,
    convert_csl_pickle,
    csl_daily_sources,
    phoenix_sources,
    read_manifest,
)
from sharded_data.write import main, write_corpus

SHARED_MEDIA = Path(__file__).resolve().parents[2] / "shared" / "data" / "media"
PHOENIX_NAME = "25October_2010_Monday_tagesschau-17"


def need_media() -> Path:
    if not SHARED_MEDIA.is_dir():
        pytest.skip(f"{SHARED_MEDIA} absent: the real clips and PHOENIX frames live in the project's shared data")
    return SHARED_MEDIA


def write_frames(folder: Path, frames: np.ndarray, suffix: str = ".png") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for position, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{position:06d}{suffix}", quality=95)


def smooth_frames(n: int, seed: int, side: int = 24) -> np.ndarray:
    t, y, x = np.meshgrid(np.arange(n), np.arange(side), np.arange(side), indexing="ij")
    base = (60 + 3 * x + 2 * y + 5 * t + 11 * seed) % 200
    return np.stack([base, base // 2 + 50, 220 - base], axis=-1).astype(np.uint8)


def test_manifest_with_real_clips_in_two_codecs(tmp_path):
    media = need_media()
    autsl, webcam = media / "autsl_signer0_sample1000_color.mp4", media / "poseformat_test_video.mp4"
    manifest = tmp_path / "manifest.tsv"
    # Absolute paths for the clips; a relative frame folder next to the manifest.
    write_frames(tmp_path / "frames" / "c", smooth_frames(4, 0))
    manifest.write_text("split\tid\tvideo\ttext\tsigner\tsentence_id\n"
                        f"train\tautsl\t{autsl}\tmerhaba\tsigner0\t\n"
                        f"train\twebcam\t{webcam}\thello\t\t7\n"
                        f"dev\tframes\tframes/c\tmerhaba\tx\t\n")
    splits = read_manifest(manifest)
    assert [type(s) for s in splits["train"]] == [VideoFileSource, VideoFileSource]
    assert isinstance(splits["dev"][0], FrameDirectorySource) and splits["dev"][0].pattern == "*.png"
    assert splits["train"][0].fps == pytest.approx(30.0) and splits["train"][1].fps == pytest.approx(29.97, abs=0.1)
    assert splits["train"][1].signer == "unknown" and splits["train"][1].sentence_id == 7

    out = tmp_path / "out"
    write_corpus(out, splits, video_format="npy", num_workers=1, progress=False)
    train = load_index(out, "train")
    assert train.n_frames == [43, 58]
    # Sentence ids: the explicit 7 is kept; "merhaba" gets a new id shared by train and dev.
    assert train.sentence_id[1] == 7 and load_index(out, "dev").sentence_id == [train.sentence_id[0]]
    with open(out / train.shards[0].name, "rb") as handle:
        handle.seek(train.offset[0])
        handle.seek(512, 1)  # the npy member comes first: skip its tar header
        frames = np.load(handle)
    assert frames.shape == (43, 512, 512, 3)
    np.testing.assert_array_equal(frames, splits["train"][0].load_frames())
    assert check_split(out, "train") == [] and check_split(out, "dev") == []
    assert json.loads(corpus_path(out).read_text())["fps"] is None  # 30, 29.97 and 25 fps mixed


@pytest.mark.parametrize("clip", ["autsl_signer0_sample1000_color.mp4", "poseformat_test_video.mp4"])
def test_fast_rgb_conversion_is_bit_identical_to_pyav_per_frame(clip):
    """decode_rgb_frames reuses one swscale context per video; the pixels must be those of the plain per-frame call."""
    import av

    from sharded_data.format import decode_rgb_frames, read_video_file

    path = need_media() / clip
    with av.open(str(path)) as container:
        plain = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])])
    with av.open(str(path)) as container:
        fast = np.stack(decode_rgb_frames(container, container.streams.video[0]))
    np.testing.assert_array_equal(fast, plain)
    np.testing.assert_array_equal(read_video_file(path), plain)


def test_jsonl_manifest_and_mp4_resize_of_a_real_clip(tmp_path):
    media = need_media()
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"split": "test", "id": "w", "video": str(media / "poseformat_test_video.mp4"),
                                    "text": "hallo", "signer": "s", "fps": 30}) + "\n")
    out = tmp_path / "out"
    write_corpus(out, read_manifest(manifest), video_format="mp4", resize=(64, 48), num_workers=1, progress=False)
    assert check_split(out, "test") == []
    info = json.loads(corpus_path(out).read_text())
    assert info["frame_size"] == [64, 48] and info["fps"] == 30.0 and info["resize"] == [64, 48]


@pytest.mark.parametrize("content, message", [
    ("split\tid\ttext\ntrain\ta\thello\n", r":1: header lacks column\(s\) video"),
    ("split\tid\tvideo\ttext\ntrain\ta\tclip.mp4\t\n", r":2: missing text"),
    ("split\tid\tvideo\ttext\ntrain\ta\tnothere.mp4\thello\n", r":2: .*nothere\.mp4: no such video file.*fix the path"),
    ("split\tid\tvideo\ttext\tsentence_id\ntrain\ta\tclip.mp4\thello\tseven\n", r":2: sentence_id 'seven' is not a int"),
    ("split\tid\tvideo\ttext\ntrain\ta\tempty\thello\n", r":2: .*empty: folder holds no frame image"),
    ("split\tid\tvideo\ttext\ntrain\ta\tclip.mp4\thello\n", r":2: .*clip\.mp4: cannot open video"),
])
def test_manifest_errors_name_the_file_and_line(tmp_path, content, message):
    (tmp_path / "clip.mp4").write_bytes(b"not a video")
    (tmp_path / "empty").mkdir()
    manifest = tmp_path / "manifest.tsv"
    manifest.write_text(content)
    with pytest.raises(LayoutError, match=message) as error:
        read_manifest(manifest)
    assert str(manifest) in str(error.value)


def test_jsonl_manifest_errors(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"split": "train", "id": "a", "video": "x.mp4"}\n')
    with pytest.raises(LayoutError, match=r"m\.jsonl:1: missing text"):
        read_manifest(manifest)
    manifest.write_text("\n{not json\n")
    with pytest.raises(LayoutError, match=r"m\.jsonl:2: invalid JSON"):
        read_manifest(manifest)


def build_phoenix(root: Path, media: Path, split: str = "test") -> None:
    """The official PHOENIX-2014T release layout, from the two real frames and the real corpus CSV."""
    frames = root / "features" / "fullFrame-210x260px" / split / PHOENIX_NAME
    frames.mkdir(parents=True)
    for number in (1, 2):
        shutil.copy(media / f"phoenix14t_test_{PHOENIX_NAME}_images000{number}.png", frames / f"images000{number}.png")
    annotations = root / "annotations" / "manual"
    annotations.mkdir(parents=True)
    shutil.copy(media / "phoenix14t_dummy_test.corpus.csv", annotations / f"PHOENIX-2014-T.{split}.corpus.csv")


def test_phoenix_layout_from_real_frames(tmp_path):
    media = need_media()
    root = tmp_path / "PHOENIX-2014-T"
    build_phoenix(root, media)
    out = tmp_path / "out"
    assert main(["--phoenix", str(root), "--out", str(out), "--video-format", "npy", "--workers", "1", "--no-progress"]) == 0
    index = load_index(out, "test")
    assert index.num_samples == 1 and index.n_frames == [2] and index.signer == ["Signer01"]
    assert index.text[0].startswith("regen und schnee lassen an den alpen")  # the translation column, not the glosses
    with open(out / index.shards[0].name, "rb") as handle:
        handle.seek(index.offset[0] + 512)
        frames = np.load(handle)
    first = np.asarray(Image.open(media / f"phoenix14t_test_{PHOENIX_NAME}_images0001.png").convert("RGB"))
    assert frames.shape == (2, 260, 210, 3)
    np.testing.assert_array_equal(frames[0], first)
    info = json.loads(corpus_path(out).read_text())
    assert info["source"] == "phoenix14t" and info["counts"] == {"test": 1} and info["fps"] == 25.0
    meta_name = phoenix_sources(root)["test"][0].name
    assert meta_name == f"test/{PHOENIX_NAME}"


def test_phoenix_layout_errors(tmp_path):
    media = need_media()
    with pytest.raises(LayoutError, match="no PHOENIX-2014T corpus file"):
        phoenix_sources(tmp_path)
    root = tmp_path / "root"
    build_phoenix(root, media)
    shutil.rmtree(root / "features")
    with pytest.raises(LayoutError, match=r"PHOENIX-2014-T\.test\.corpus\.csv:2: frame folder .* is missing"):
        phoenix_sources(root)


def test_phoenix_older_layout_from_the_video_column(tmp_path):
    media = need_media()
    root = tmp_path / "root"
    build_phoenix(root, media)
    folder = root / "features" / "fullFrame-210x260px" / "test" / PHOENIX_NAME
    (folder / "1").mkdir()
    for png in folder.glob("*.png"):
        png.rename(folder / "1" / png.name)
    source = phoenix_sources(root)["test"][0]
    assert Path(source.path) == folder / "1" and source.load_frames().shape == (2, 260, 210, 3)


def build_csl_daily(root: Path) -> dict[str, tuple[str, str]]:
    """CSL-Daily layout: jpg frame folders, the split file, and the plain label file."""
    names = {f"S00000{i}_P000{i % 2}_T00": split for i, split in enumerate(["train", "train", "train", "dev", "test"])}
    texts = ["今天天气很好", "我想喝水", "今天天气很好", "我想喝水", "明天见"]
    labels = {}
    for position, name in enumerate(names):
        write_frames(root / "sentence" / "frames_512x512" / name, smooth_frames(3 + position, position), ".jpg")
        labels[name] = (texts[position], f"signer{position % 2}")
    (root / "sentence_label").mkdir(parents=True, exist_ok=True)
    (root / "sentence_label" / "split_1.txt").write_text(
        "Name|split\n" + "".join(f"{name}|{split}\n" for name, split in names.items()))
    return labels


def test_csl_daily_layout(tmp_path):
    root = tmp_path / "CSL-Daily"
    labels = build_csl_daily(root)
    (root / "sentence_label" / "labels.csv").write_text(
        "name|text|signer\n" + "".join(f"{name}|{text}|{signer}\n" for name, (text, signer) in labels.items()))
    out = tmp_path / "out"
    assert main(["--csl-daily", str(root), "--out", str(out), "--video-format", "npy", "--workers", "1",
                 "--no-progress"]) == 0
    train, dev, test = (load_index(out, split) for split in ("train", "dev", "test"))
    assert train.text == ["今天天气很好", "我想喝水", "今天天气很好"] and train.n_frames == [3, 4, 5]
    assert train.sentence_id == [0, 1, 0] and dev.sentence_id == [1] and test.sentence_id == [2]
    assert train.signer == ["signer0", "signer1", "signer0"]
    info = json.loads(corpus_path(out).read_text())
    assert info["source"] == "csl-daily" and info["fps"] == 30.0 and info["frame_size"] == [24, 24]
    assert check_split(out, "train") == []


def test_csl_daily_pickle_labels_only_when_trusted(tmp_path, capsys):
    root = tmp_path / "CSL-Daily"
    labels = build_csl_daily(root)
    shipped = {"info": [{"name": name, "label_word": list(text), "signer": signer, "length": 3}
                        for name, (text, signer) in labels.items()]}
    (root / "sentence_label" / "csl2020ct_v2.pkl").write_bytes(pickle.dumps(shipped))
    with pytest.raises(LayoutError, match=r"unpickling runs code.*--trust-pickle"):
        csl_daily_sources(root)
    trusted = csl_daily_sources(root, trust_pickle=True)
    assert [s.text for s in trusted["train"]] == ["今天天气很好", "我想喝水", "今天天气很好"]
    assert main(["--csl-daily", str(root), "--out", str(tmp_path / "o"), "--convert-labels"]) == 1
    assert "--trust-pickle" in capsys.readouterr().err
    assert main(["--csl-daily", str(root), "--out", str(tmp_path / "o"), "--convert-labels", "--trust-pickle"]) == 0
    from_file = csl_daily_sources(root)  # the plain label file now exists and is preferred
    assert [(s.name, s.text, s.signer) for s in from_file["dev"]] == [(s.name, s.text, s.signer) for s in trusted["dev"]]
    assert convert_csl_pickle(root / "sentence_label" / "csl2020ct_v2.pkl", tmp_path / "l.csv") == 5


def test_csl_daily_missing_label_names_the_split_line(tmp_path):
    root = tmp_path / "CSL-Daily"
    labels = build_csl_daily(root)
    first = next(iter(labels))
    (root / "sentence_label" / "labels.csv").write_text(
        "name|text|signer\n" + "".join(f"{n}|{t}|{s}\n" for n, (t, s) in labels.items() if n != first))
    with pytest.raises(LayoutError, match=rf"split_1\.txt:2: {first} has no label in .*labels\.csv"):
        csl_daily_sources(root)


def test_frame_directory_with_mixed_sizes_is_a_bad_video(tmp_path):
    folder = tmp_path / "f"
    write_frames(folder, smooth_frames(2, 0))
    Image.fromarray(smooth_frames(1, 0, side=16)[0]).save(folder / "000009.png")
    with pytest.raises(ValueError, match=r"000009\.png: frame size"):
        FrameDirectorySource("x", "t", path=str(folder)).load_frames()
    frames = smooth_frames(3, 1)
    write_frames(tmp_path / "ok", frames)
    np.testing.assert_array_equal(FrameDirectorySource("y", "t", path=str(tmp_path / "ok")).load_frames(), frames)

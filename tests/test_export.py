"""End-to-end tests of export and inference: `recipe.convert_to_hf` and `recipe.translate`.

The exported Hugging Face directory of a two-rank ZeRO-2 or ZeRO-3 run must compute exactly what the
trained weights compute (logits with eager attention, beam-search ids), independently re-read here
with DeepSpeed's own zero_to_fp32; a damaged checkpoint is refused with its path; the translate command
runs on a real sign video and on a folder of frame images.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import FRAME_SIZE, MAX_FRAMES, copy_run

pytestmark = pytest.mark.usefixtures("one_thread")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MEDIA = SHARED_DATA / "media"
FINAL_TAG = "step-000012"


@pytest.fixture(scope="module")
def exported(zero_runs, tmp_path_factory) -> dict[int, Path]:
    from recipe import convert_to_hf

    root = tmp_path_factory.mktemp("hf")
    return {stage: convert_to_hf.main([str(zero_runs[stage]), "--out", str(root / f"zero{stage}")]) for stage in (2, 3)}


def _trained_model(run: Path):
    """The run's network with the checkpoint's fp32 weights, read without any recipe code in between."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from recipe.modeling import SignTranslationConfig, SignTranslationModel

    state = get_fp32_state_dict_from_zero_checkpoint(str(run / "checkpoints"), tag=FINAL_TAG)
    model = SignTranslationModel(SignTranslationConfig.from_pretrained(run / "model_config"))
    model.load_state_dict({key.removeprefix("model."): value for key, value in state.items()}, strict=True)
    model.set_attn_implementation("eager")
    return model.eval()


def _test_batch(shards: Path, tokenizer):
    from recipe.text import tokenize_targets
    from sharded_data.reader import ReaderConfig, make_eval_loader

    reader = ReaderConfig(frame_size=FRAME_SIZE, max_frames=MAX_FRAMES, num_workers=0)
    batch = next(iter(make_eval_loader(str(shards), "test", 4, 0, 1, reader)))
    return batch, tokenize_targets(tokenizer, batch["texts"], 32)


@pytest.mark.slow
def test_export_of_zero2_and_zero3_runs_computes_what_was_trained(exported, zero_runs, shards):
    from recipe.modeling import SignTranslationModel
    from recipe.tokenizer import load_tokenizer

    weights = {}
    for stage, hf_dir in exported.items():
        for name in ("config.json", "model.safetensors", "generation_config.json", "README.md",
                     "tokenizer_config.json"):
            assert (hf_dir / name).is_file(), f"ZeRO-{stage} export lacks {name}"
        assert FINAL_TAG in (hf_dir / "README.md").read_text()
        exported_model = SignTranslationModel.from_pretrained(hf_dir, attn_implementation="eager").eval()
        trained = _trained_model(zero_runs[stage])
        tokenizer = load_tokenizer(hf_dir)
        batch, text = _test_batch(shards, tokenizer)
        with torch.no_grad():
            inputs = dict(frames=batch["frames"], frame_mask=batch["frame_mask"], labels=text.labels)
            assert torch.equal(exported_model(**inputs).logits, trained(**inputs).logits), f"ZeRO-{stage} logits"
            generate = dict(frames=batch["frames"], frame_mask=batch["frame_mask"], num_beams=3, max_new_tokens=10)
            assert torch.equal(exported_model.generate(**generate), trained.generate(**generate)), f"ZeRO-{stage} ids"
        weights[stage] = exported_model.state_dict()
    # The two stages trained the same run, so they export the same network up to float rounding: ZeRO-3
    # reduce-scatters the gradients (another summation order), and Adam's normalisation can amplify a last-bit
    # difference in a near-zero gradient over 12 steps (1e-5 was seen to fail once), so the bound is loose;
    # a wrong export differs by the size of the weights themselves.
    assert weights[2].keys() == weights[3].keys()
    for key in weights[2]:
        torch.testing.assert_close(weights[2][key], weights[3][key], rtol=1e-3, atol=1e-4, msg=key)


@pytest.mark.parametrize("damage", ["no_completion_marker", "tag_without_marker", "missing_file", "truncated_file"])
def test_broken_checkpoint_is_refused(damage, reference_run, tmp_path):
    from recipe import convert_to_hf

    run = copy_run(reference_run, tmp_path / "run")
    tag_dir = run / "checkpoints" / "step-000008"
    argv = [str(run), "--out", str(tmp_path / "hf")]
    if damage == "no_completion_marker":
        for marker in (run / "checkpoints").glob("step-*/complete.json"):
            marker.unlink()
        expected, message = FileNotFoundError, "no complete checkpoint"
    elif damage == "tag_without_marker":
        (tag_dir / "complete.json").unlink()
        argv += ["--tag", "step-000008"]
        expected, message = FileNotFoundError, "not a complete checkpoint"
    elif damage == "missing_file":
        next(tag_dir.glob("*optim_states.pt")).unlink()
        expected, message = RuntimeError, "missing or damaged"
    else:
        states = tag_dir / "mp_rank_00_model_states.pt"
        states.write_bytes(states.read_bytes()[: states.stat().st_size // 2])
        expected, message = RuntimeError, "missing or damaged"
    with pytest.raises(expected) as error:
        convert_to_hf.main(argv)
    assert message in str(error.value)
    assert str(run / "checkpoints") in str(error.value)
    assert not (tmp_path / "hf").exists()


def _frame_folder(folder: Path, frames: np.ndarray) -> Path:
    from PIL import Image

    folder.mkdir(parents=True)
    for i, frame in enumerate(frames, start=1):
        Image.fromarray(frame).save(folder / f"images{i:04d}.png")
    return folder


def test_translate_a_real_video_and_frame_folders(exported_reference, tmp_path):
    from recipe import translate
    from sharded_data.format import read_video_file

    clip = MEDIA / "autsl_signer0_sample1000_color.mp4"
    if not clip.is_file():
        pytest.skip(f"{clip} is absent (shared data not mounted)")
    frames = _frame_folder(tmp_path / "frames", read_video_file(clip)[:8])
    phoenix = tmp_path / "phoenix"
    phoenix.mkdir()
    for png in sorted(MEDIA.glob("phoenix14t_*_images*.png")):
        shutil.copy(png, phoenix / png.name.split("_")[-1])  # images0001.png, ...: the PHOENIX folder layout
    out = tmp_path / "translations.tsv"
    webcam = MEDIA / "poseformat_test_video.mp4"  # another codec and frame size
    optional = [p for p in (phoenix, webcam) if p.is_file() or (p.is_dir() and any(p.iterdir()))]
    inputs = [str(clip), str(frames)] + [str(p) for p in optional]
    # --max-frames as in training: the tiny network has room for the visual tokens of 16 frames only.
    results = translate.main(["--model", str(exported_reference), *inputs, "--num-beams", "2",
                              "--max-new-tokens", "8", "--max-frames", str(MAX_FRAMES), "--out", str(out)])
    assert [path for path, _ in results] == inputs
    assert all(isinstance(text, str) for _, text in results)
    lines = out.read_text(encoding="utf-8").splitlines()
    assert [line.split("\t")[0] for line in lines] == inputs


def test_translate_reads_a_manifest(exported_reference, shards, tmp_path):
    from recipe import translate
    from sharded_data.format import load_index
    from sharded_data.reader import IndexedShardReader

    clips = tmp_path / "clips"
    reader, index = IndexedShardReader(str(shards), "test"), load_index(str(shards), "test")
    names = []
    for sample_id in index.sample_id[:3]:
        names.append(f"clip{sample_id}")
        _frame_folder(clips / names[-1], np.asarray(reader.get(sample_id)["frames"]))
    manifest = clips / "inputs.txt"
    manifest.write_text("\n".join(names) + "\n\n")  # paths relative to the manifest; blank lines ignored
    out = tmp_path / "out.tsv"
    results = translate.main(["--model", str(exported_reference), "--manifest", str(manifest), "--num-beams", "2",
                              "--max-new-tokens", "8", "--max-frames", str(MAX_FRAMES), "--batch-size", "2",
                              "--out", str(out)])
    assert [path for path, _ in results] == [str(clips / name) for name in names]
    assert len(out.read_text(encoding="utf-8").splitlines()) == 3


def test_evaluate_command_scores_an_exported_model(exported_reference, shards, tmp_path):
    import sacrebleu

    from recipe import evaluate
    from sharded_data.format import load_index

    scores = evaluate.main(["--model", str(exported_reference), "--data", str(shards), "--split", "dev", "--out",
                            str(tmp_path / "report"), "--num-beams", "2", "--max-new-tokens", "8", "--max-frames",
                            str(MAX_FRAMES), "--num-workers", "0"])
    lines = (tmp_path / "report" / "dev.hyp.tsv").read_text(encoding="utf-8").splitlines()[1:]
    hypotheses = [line.split("\t")[1] for line in lines]
    references = list(load_index(str(shards), "dev").text)
    assert len(hypotheses) == len(references) == scores["num_sentences"]
    assert scores["bleu4"] == pytest.approx(sacrebleu.corpus_bleu(hypotheses, [references]).score)
    assert (tmp_path / "report" / "dev.md").is_file()


def test_translate_names_a_missing_input(exported_reference, tmp_path):
    from recipe import translate

    with pytest.raises(FileNotFoundError, match="no-such-clip.mp4"):
        translate.main(["--model", str(exported_reference), str(tmp_path / "no-such-clip.mp4")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="without frame images"):
        translate.main(["--model", str(exported_reference), str(tmp_path / "empty")])


@pytest.fixture(scope="module")
def exported_reference(reference_run, tmp_path_factory) -> Path:
    """The one-process reference run exported (fast: no two-rank run needed)."""
    from recipe import convert_to_hf

    return convert_to_hf.main([str(reference_run), "--out", str(tmp_path_factory.mktemp("hf") / "reference")])

"""DeepSpeed checkpoint of a run -> a Hugging Face model directory that `from_pretrained` loads.

    python -m recipe.convert_to_hf RUN --out HF_DIR [--tag step-000120]

Steps: ZeRO-1/2/3 checkpoint -> fp32 state dict (DeepSpeed's zero_to_fp32) -> the run's model (its
`model_config/`) loaded strictly through one explicit key map -> LoRA merged (visual transformer and decoder) ->
`save_pretrained` (config, safetensors, generation config) + the run's tokenizer + a model card with the
metrics and the training command. The tag defaults to the dev-best checkpoint of a finetuning run
(`best.json`), else (or when that tag is not a complete checkpoint) the newest. The converted directory is
loaded back and its logits compared with the in-memory model before the command reports success.

`--out` is written as a whole (a temporary directory renamed into place) and only ever replaces a previous
export of this tool (marked by EXPORT_MARKER): any other existing, non-empty directory is refused, so a
mistyped `--out runs/ft` cannot delete a run and its checkpoints.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from recipe.build import last_checkpoint_state_dict
from recipe.checkpointing import read_marker, step_tag
from recipe.modeling import SignTranslationConfig, SignTranslationModel
from recipe.run_dir import RunDir, write_json_atomic, write_text_atomic
from recipe.tokenizer import load_tokenizer

logger = logging.getLogger(__name__)

EXPORT_MARKER = "scl_slt_export.json"  # {run, tag}: what makes a directory this tool's to replace
MODEL_CARD_TITLE = "# Sign language translation model (SCL-SLT recipe)"


class RefusedOutputError(FileExistsError):
    """--out names an existing directory that is not a previous export of this tool."""

# Stage-1 runs wrap the translation model as `PretrainingModule.model`; stage-2 runs train it bare.
KEY_PREFIXES = ("model.", "")


def map_keys(state: dict[str, torch.Tensor], model_keys: set[str], where: str) -> dict[str, torch.Tensor]:
    """Checkpoint keys -> model keys by stripping the one prefix under which every model key is found."""
    for prefix in KEY_PREFIXES:
        mapped = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
        if set(mapped) == model_keys and len(mapped) == len(state):
            return mapped
    best = {key[len("model."):] if key.startswith("model.") else key for key in state}
    missing, unexpected = sorted(model_keys - best), sorted(best - model_keys)
    raise KeyError(f"{where}: the checkpoint does not match the run's model_config: missing {missing[:5]} "
                   f"({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)}); is it a partial or foreign "
                   "checkpoint?")


def default_tag(run: RunDir) -> str:
    """The dev-best tag of best.json if it is a complete checkpoint; "" (the newest) otherwise."""
    best = run.root / "best.json"
    if not best.exists():
        return ""
    try:
        tag = step_tag(int(json.loads(best.read_text())["step"]))
    except (ValueError, KeyError, TypeError) as error:
        logger.warning("%s is unreadable (%s): exporting the newest checkpoint instead", best, error)
        return ""
    if read_marker(run.checkpoints / tag) is None:
        logger.warning("%s names %s, which is not a complete checkpoint (the run stopped between the two?): "
                       "exporting the newest checkpoint instead", best, tag)
        return ""
    return tag


def load_run_model(run_dir: str | Path, tag: str = "") -> tuple[SignTranslationModel, str]:
    run = RunDir(Path(run_dir))
    config_dir = run.root / "model_config"
    if not (config_dir / "config.json").exists():
        raise FileNotFoundError(f"{config_dir}/config.json is missing: {run.root} is not a recipe run directory")
    model = SignTranslationModel(SignTranslationConfig.from_pretrained(config_dir, local_files_only=True))
    state, tag = last_checkpoint_state_dict(run.root, tag or default_tag(run))
    model.load_state_dict(map_keys(state, set(model.state_dict()), f"{run.root} ({tag})"), strict=True)
    return model, tag


def model_card(run: RunDir, tag: str) -> str:
    lines = [MODEL_CARD_TITLE, "",
             f"Converted from `{run.root}` checkpoint `{tag}`.", ""]
    for split in ("dev", "test"):
        report = run.root / "reports" / f"{split}.md"
        if report.exists():
            lines += [f"## {split}", "", report.read_text().strip(), ""]
    if run.command.exists():
        lines += ["## Training command", "", "```", run.command.read_text().strip(), "```", ""]
    lines += ["## Use", "", "```", "python -m recipe.translate --model THIS_DIR video.mp4", "```", ""]
    return "\n".join(lines)


def is_previous_export(directory: Path) -> bool:
    """A directory this tool wrote: its marker, or (exports made before the marker existed) its model card."""
    if (directory / EXPORT_MARKER).is_file():
        return True
    card = directory / "README.md"
    return card.is_file() and card.read_text(errors="replace").startswith(MODEL_CARD_TITLE) and \
        (directory / "config.json").is_file() and not (directory / "checkpoints").exists()


def check_output(out_dir: Path, run: RunDir) -> None:
    """Refuse an --out that is not empty and not a previous export (RefusedOutputError, saying what to do)."""
    if out_dir.resolve() in (run.root.resolve(), *run.root.resolve().parents):
        raise RefusedOutputError(f"--out {out_dir} is the run directory {run.root} or contains it; "
                                 f"choose another --out (e.g. {run.root / 'hf'})")
    if out_dir.exists() and not out_dir.is_dir():
        raise RefusedOutputError(f"--out {out_dir} exists and is not a directory; choose another --out")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not is_previous_export(out_dir):
        held = sorted(path.name for path in out_dir.iterdir())
        raise RefusedOutputError(
            f"--out {out_dir} is not empty ({', '.join(held[:5])}{' ...' if len(held) > 5 else ''}) and is not a "
            f"previous export of recipe.convert_to_hf (no {EXPORT_MARKER}); refusing to replace it. Choose a new "
            f"--out, or, to overwrite it, delete it yourself first (rm -r {out_dir})")


def convert(run_dir: str | Path, out_dir: str | Path, tag: str = "") -> Path:
    run, out_dir = RunDir(Path(run_dir)), Path(out_dir)
    check_output(out_dir, run)  # before the (long) conversion, and again before replacing anything
    model, tag = load_run_model(run.root, tag)
    model.merge_lora()
    leftover = [key for key in model.state_dict() if "lora_" in key or "base_layer" in key]
    if leftover:
        raise RuntimeError(f"LoRA weights remain after merging ({leftover[:3]}); refusing to export an unmerged model")
    model.eval()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        load_tokenizer(run.tokenizer).save_pretrained(tmp)
        write_text_atomic(tmp / "README.md", model_card(run, tag))
        write_json_atomic(tmp / EXPORT_MARKER, {"run": str(run.root), "tag": tag})
        check_round_trip(model, tmp)
        check_output(out_dir, run)
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        if out_dir.exists():
            out_dir.rename(old)  # a previous export (or an empty directory), kept until the new one is in place
        tmp.rename(out_dir)  # the directory appears complete or not at all
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


@torch.no_grad()
def check_round_trip(model: SignTranslationModel, directory: Path) -> None:
    """The saved model must give the in-memory model's logits (eager attention, fixed input)."""
    loaded = SignTranslationModel.from_pretrained(directory, attn_implementation="eager", local_files_only=True).eval()
    model.set_attn_implementation("eager")
    generator = torch.Generator().manual_seed(0)
    size = model.config.frame_size
    frames = torch.randn(2, 12, 3, size, size, generator=generator)
    frame_mask = torch.ones(2, 12, dtype=torch.bool)
    frame_mask[1, 8:] = False
    labels = torch.randint(4, model.config.vocab_size, (2, 7), generator=generator)
    expected = model(frames=frames, frame_mask=frame_mask, labels=labels).logits
    actual = loaded(frames=frames, frame_mask=frame_mask, labels=labels).logits
    if not torch.allclose(expected, actual, atol=1e-5, rtol=1e-5):
        raise RuntimeError(f"{directory}: reloaded logits differ by {(expected - actual).abs().max():.3g}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", help="run directory (pretraining or finetuning)")
    parser.add_argument("--out", required=True, help="Hugging Face directory to write (new, empty, or a previous "
                                                      "export of this tool; anything else is refused)")
    parser.add_argument("--tag", default="", help="checkpoint tag (default: dev-best, else newest)")
    return parser


def main(argv: list[str] | None = None) -> Path:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        out = convert(args.run, args.out, args.tag)
    except RefusedOutputError as error:
        parser.exit(1, f"error: {error}\n")
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()

"""Translate sign videos with an exported model (a directory from `recipe.convert_to_hf`).

    python -m recipe.translate --model HF_DIR clip.mp4 frames_dir/ ...          # one line per input
    python -m recipe.translate --model HF_DIR --manifest inputs.txt --out out.tsv  # many: one path per line

An input is a video file (anything PyAV decodes: mp4, avi, mkv, ...) or a folder of frame images
(PHOENIX-2014T style). Frames go through the same deterministic evaluation transform as in training.
An input that cannot be read (missing, undecodable, or decoding to more than the decode limit: a tiny file
claiming a huge video is refused before its frames are allocated) stops the command with an error naming
its path (FileNotFoundError or ValueError).

The model loads from a local directory only (`local_files_only`: a mistyped path is an error, never a
download), from safetensors, with no code from the model directory.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from recipe.modeling import SignTranslationModel
from recipe.tokenizer import load_tokenizer
from sharded_data.format import read_video_file
from sharded_data.sources import FrameDirectorySource, frame_pattern
from sharded_data.transforms import VideoSample, VideoTransform, collate_videos


def load_video(path: str | Path) -> np.ndarray:
    """uint8 T x H x W x 3 from a video file or a frame directory (within the decode limit); errors name the
    path: OSError or ValueError (DecodeLimitError for a video that would decode too large)."""
    path = Path(path)
    if path.is_dir():
        pattern = frame_pattern(path)
        if pattern is None:
            raise FileNotFoundError(f"{path}: a folder without frame images (png/jpg)")
        return FrameDirectorySource(name=str(path), text="", path=str(path), pattern=pattern).load_frames()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such video file or frame folder")
    try:
        return read_video_file(path)
    except (OSError, ValueError):
        raise
    except Exception as error:  # PyAV's own error classes on a file that is not a video
        raise ValueError(f"{path}: cannot decode video ({type(error).__name__}: {error})") from error


def load_local_model(model_dir: str | Path) -> SignTranslationModel:
    """The exported model of a local directory (never the Hub: a mistyped path must not turn into a download)."""
    if not (Path(model_dir) / "config.json").is_file():
        raise FileNotFoundError(f"--model {model_dir}: no config.json there; give the directory that "
                                f"recipe.convert_to_hf wrote (models load from local directories only)")
    return SignTranslationModel.from_pretrained(model_dir, local_files_only=True, use_safetensors=True)


class Translator:
    def __init__(self, model_dir: str | Path, num_beams: int = 5, max_new_tokens: int = 60, max_frames: int = 0,
                 device: str | None = None) -> None:
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = load_local_model(model_dir).to(self.device).eval()
        self.tokenizer = load_tokenizer(model_dir)
        self.transform = VideoTransform(self.model.config.frame_size, max_frames or self.model.max_frames, train=False)
        self.num_beams, self.max_new_tokens = num_beams, max_new_tokens

    @torch.no_grad()
    def __call__(self, videos: list[np.ndarray]) -> list[str]:
        samples = [VideoSample(self.transform(torch.from_numpy(v)), "", i, i, str(i)) for i, v in enumerate(videos)]
        batch = collate_videos(samples)
        generated = self.model.generate(frames=batch["frames"].to(self.device),
                                        frame_mask=batch["frame_mask"].to(self.device),
                                        num_beams=self.num_beams, max_new_tokens=self.max_new_tokens)
        return [text.strip() for text in self.tokenizer.batch_decode(generated, skip_special_tokens=True)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("inputs", nargs="*", help="video files or frame folders")
    parser.add_argument("--model", required=True, help="Hugging Face directory from recipe.convert_to_hf")
    parser.add_argument("--manifest", help="text file with one input path per line (relative to the file)")
    parser.add_argument("--out", help="write 'input<TAB>translation' lines here instead of stdout")
    parser.add_argument("--num-beams", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=60)
    parser.add_argument("--max-frames", type=int, default=0,
                        help="frames kept per video; default: the most the model's visual positions allow")
    parser.add_argument("--batch-size", type=int, default=8)
    return parser


def main(argv: list[str] | None = None) -> list[tuple[str, str]]:
    parser = build_parser()
    args = parser.parse_args(argv)
    inputs = list(args.inputs)
    if args.manifest:
        base = Path(args.manifest).parent
        for number, line in enumerate(Path(args.manifest).read_text().splitlines(), start=1):
            if line.strip():
                inputs.append(str(base / line.strip()))
    if not inputs:
        parser.error("give video files / frame folders, or --manifest FILE")
    translator = Translator(args.model, args.num_beams, args.max_new_tokens, args.max_frames)
    results = []
    for start in range(0, len(inputs), args.batch_size):
        chunk = inputs[start : start + args.batch_size]
        results += list(zip(chunk, translator([load_video(path) for path in chunk])))
    lines = [f"{path}\t{text}" for path, text in results]
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    else:
        print("\n".join(lines))
    sys.stdout.flush()
    return results


if __name__ == "__main__":
    main()

"""Step 3 of a write: once every shard is finished, the per-split indexes and corpus.json (written last, so a
folder with an index is a complete write). Each shard's size and SHA-256 go into its index entry."""
from __future__ import annotations

from pathlib import Path

from sharded_data.format import ShardIndex, ShardInfo, corpus_path, index_path, shard_name, write_json_atomic
from sharded_data.shard_writer import BadVideoError
from sharded_data.write_plan import WriteSettings
from sharded_data.write_progress import ShardRecord


def write_indexes(out_dir: Path, settings: WriteSettings, records: dict[str, list[ShardRecord]],
                  corpus_info: dict) -> dict:
    summary_splits, skipped_samples = {}, []
    fps_values, sizes, sentence_ids, total_bytes = set(), set(), set(), 0
    indexes = {}
    for split, split_records in records.items():
        index = ShardIndex(split=split, video_format=settings.video_format, shards=[])
        for record in split_records:
            skipped_samples += [dict(split=split, **entry) for entry in record.skipped]
            total_bytes += record.tar_bytes
            if not record.samples:  # every sample of this shard was skipped: leave the empty tar out
                continue
            index.shards.append(ShardInfo(shard_name(split, record.number), len(record.samples), record.tar_bytes,
                                          record.sha256))
            for sample in record.samples:
                index.sample_id.append(sample.sample_id)
                index.shard.append(len(index.shards) - 1)
                index.offset.append(sample.offset)
                index.size.append(sample.size)
                index.sentence_id.append(sample.sentence_id)
                index.n_frames.append(sample.n_frames)
                index.signer.append(sample.signer)
                index.text.append(sample.text)
                fps_values.add(sample.fps)
                sizes.add((sample.height, sample.width))
                sentence_ids.add(sample.sentence_id)
        if index.num_samples == 0:
            raise BadVideoError(f"split {split!r}: every sample failed to load (see the warnings above); nothing to index")
        if index.sample_id != list(range(index.num_samples)):
            raise RuntimeError(f"{out_dir}: split {split} sample ids are not 0..N-1 after writing; delete it and re-run")
        indexes[split] = index
        summary_splits[split] = dict(samples=index.num_samples, skipped=sum(len(r.skipped) for r in split_records),
                                     shards=len(index.shards), frames=sum(index.n_frames))
    for split, index in indexes.items():
        index.save(index_path(out_dir, split))
    corpus = dict(
        source=settings.source,
        video_format=settings.video_format,
        fps=fps_values.pop() if len(fps_values) == 1 else None,  # None: differs between videos (see each json)
        frame_size=list(sizes.pop()) if len(sizes) == 1 else None,  # [H, W]; None: differs between videos
        resize=settings.resize,
        splits=list(records),
        counts={split: info["samples"] for split, info in summary_splits.items()},
        skipped={split: info["skipped"] for split, info in summary_splits.items()},
        num_sentences=len(sentence_ids),
        writer=dict(module="sharded_data.write", samples_per_shard=settings.samples_per_shard,
                    skip_bad=settings.skip_bad),
        generator=corpus_info,
        skipped_samples=skipped_samples,
    )
    write_json_atomic(corpus_path(out_dir), corpus)
    return dict(out_dir=str(out_dir), splits=summary_splits, bytes=total_bytes)

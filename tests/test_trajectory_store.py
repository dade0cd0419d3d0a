"""Reference checkpoints: round trip, atomic naming, validation across checkpoints, O(N) storage."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from recipe.trajectory_store import (is_reference_epoch, load_trajectory, reference_checkpoint_path, reference_epochs,
                                     require_reference_checkpoints, save_reference_checkpoint)


def _embeddings(n: int, e: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, e, generator=g) * 3, torch.randn(n, e, generator=g) * 3


def test_round_trip_orders_epochs_sorts_ids_and_normalises(tmp_path):
    """(Broken variant tried: the text rows left in file order, not sorted by sample id: the by-value check of the
    text embeddings fails, the former norm-only check did not.)"""
    ids = torch.tensor([5, 2, 9, 0])
    sentences = torch.tensor([50, 20, 90, 0])
    saved = {}
    for epoch in (10, 0, 5):  # written out of order on purpose
        video, text = _embeddings(4, 8, epoch)
        path = save_reference_checkpoint(tmp_path, epoch, ids, sentences, video, text)
        assert path == reference_checkpoint_path(tmp_path, epoch) == tmp_path / "trajectories" / f"ref-{epoch:04d}.safetensors"
        saved[epoch] = (video, text)
    assert sorted(p.name for p in (tmp_path / "trajectories").iterdir()) == [
        "ref-0000.safetensors", "ref-0005.safetensors", "ref-0010.safetensors"
    ]  # no temporary file left behind

    traj = load_trajectory(tmp_path)
    assert traj.epochs == [0, 5, 10]
    assert traj.sample_ids.tolist() == [0, 2, 5, 9]
    assert traj.sentence_ids.tolist() == [0, 20, 50, 90]
    assert traj.video.shape == traj.text.shape == (3, 4, 8) and traj.video.dtype == torch.float16
    assert not traj.has_tokens
    order = torch.argsort(ids)
    for t, epoch in enumerate((0, 5, 10)):
        video, text = saved[epoch]
        # by value (fp16 storage: ~5e-4 per component of a unit vector), each row at its sorted sample id
        torch.testing.assert_close(traj.video[t].float(), torch.nn.functional.normalize(video[order], dim=-1),
                                   atol=1e-3, rtol=0)
        torch.testing.assert_close(traj.text[t].float(), torch.nn.functional.normalize(text[order], dim=-1),
                                   atol=1e-3, rtol=0)
    assert traj.positions(torch.tensor([9, 0])).tolist() == [3, 0]
    with pytest.raises(KeyError, match=r"\[7\]"):
        traj.positions([7])


def test_tokens_and_cls_vectors_round_trip_by_value_and_are_read_lazily(tmp_path):
    """Token embeddings are normalised in float32 and stored fp16, rows follow the sample ids; without
    load_tokens they are read one checkpoint at a time; CLS vectors default to token 0."""
    ids = torch.tensor([3, 1, 2])
    g = torch.Generator().manual_seed(0)
    tokens = {side: torch.randn(3, length, 8, generator=g) * 5 for side, length in (("video", 4), ("text", 2))}
    masks = {"video": torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool),
             "text": torch.tensor([[1, 1], [1, 0], [1, 1]], dtype=torch.bool)}
    video, text = _embeddings(3, 8, 1)
    save_reference_checkpoint(tmp_path, 1, ids, ids * 10, video, text, tokens["video"], masks["video"],
                              tokens["text"], masks["text"])
    order = torch.argsort(ids)
    eager, lazy = load_trajectory(tmp_path), load_trajectory(tmp_path, load_tokens=False)
    assert lazy.video_tokens is None and lazy.has_tokens and lazy.has_cls
    got = lazy.checkpoint_tokens(0)
    for index, (side, key) in enumerate((("video", "tokens"), ("video", "mask"), ("text", "tokens"), ("text", "mask"))):
        expected = masks[side] if key == "mask" else torch.nn.functional.normalize(tokens[side], dim=-1)
        torch.testing.assert_close(got[index].float(), expected[order].float(), atol=1e-3, rtol=0)
        torch.testing.assert_close(eager.checkpoint_tokens(0)[index], got[index])
    video_cls, text_cls = lazy.cls_vectors()
    torch.testing.assert_close(video_cls[0], got[0][:, 0]) and torch.testing.assert_close(text_cls[0], got[2][:, 0])
    assert torch.equal(eager.cls_vectors()[0], video_cls)
    bare = tmp_path / "bare"
    save_reference_checkpoint(bare, 1, ids, ids, video, text)
    with pytest.raises(ValueError, match="no token embeddings"):
        load_trajectory(bare).checkpoint_tokens(0)


def test_reference_checkpoints_after_the_first_epoch_then_every_k():
    assert reference_epochs(5, 4) == [1, 5, 10, 15]
    assert reference_epochs(2, 3) == [1, 2, 4] and reference_epochs(1, 3) == [1, 2, 3]
    assert [e for e in range(12) if is_reference_epoch(e, 5)] == [1, 5, 10]
    assert not any(is_reference_epoch(e, 0) for e in range(12))  # recording off


def test_a_reference_with_fewer_than_three_checkpoints_is_refused(tmp_path):
    video, text = _embeddings(3, 4, 0)
    for epoch in (1, 2):
        save_reference_checkpoint(tmp_path, epoch, [0, 1, 2], [0, 1, 2], video, text)
    with pytest.raises(ValueError, match=r"2 reference checkpoint\(s\) \(after epochs \[1, 2\]\); Pair Selection "
                                         r"needs at least 3.*--record-trajectory-every.*10 epochs at k = 5"):
        require_reference_checkpoints(load_trajectory(tmp_path))
    save_reference_checkpoint(tmp_path, 3, [0, 1, 2], [0, 1, 2], video, text)
    require_reference_checkpoints(load_trajectory(tmp_path))


def test_token_embeddings_are_padded_to_the_longest_checkpoint(tmp_path):
    ids, sentences = torch.arange(3), torch.arange(3)
    for epoch, (lv, lt) in ((0, (4, 2)), (1, (6, 3))):
        video, text = _embeddings(3, 8, epoch)
        save_reference_checkpoint(
            tmp_path, epoch, ids, sentences, video, text,
            video_tokens=torch.ones(3, lv, 8), video_mask=torch.ones(3, lv, dtype=torch.bool),
            text_tokens=torch.ones(3, lt, 8), text_mask=torch.ones(3, lt, dtype=torch.bool),
        )
    traj = load_trajectory(tmp_path)
    assert traj.video_tokens.shape == (2, 3, 6, 8) and traj.text_tokens.shape == (2, 3, 3, 8)
    assert traj.video_mask[0].sum(dim=1).tolist() == [4, 4, 4] and traj.video_mask[1].sum(dim=1).tolist() == [6, 6, 6]
    assert (traj.video_tokens[0, :, 4:] == 0).all()
    assert load_trajectory(tmp_path, load_tokens=False).video_tokens is None


def test_bad_input_gets_clear_errors(tmp_path):
    video, text = _embeddings(3, 4, 0)
    with pytest.raises(ValueError, match="duplicates"):
        save_reference_checkpoint(tmp_path, 0, [1, 1, 2], [0, 1, 2], video, text)
    with pytest.raises(ValueError, match="token embeddings need all"):
        save_reference_checkpoint(tmp_path, 0, [0, 1, 2], [0, 1, 2], video, text, video_tokens=torch.ones(3, 2, 4))
    with pytest.raises(ValueError, match=r"\[N=3, E\]"):
        save_reference_checkpoint(tmp_path, 0, [0, 1, 2], [0, 1, 2], video, text[:2])
    with pytest.raises(FileNotFoundError, match="record-trajectory-every"):
        load_trajectory(tmp_path)

    save_reference_checkpoint(tmp_path, 0, [0, 1, 2], [0, 1, 2], video, text)
    save_reference_checkpoint(tmp_path, 5, [0, 1, 3], [0, 1, 3], video, text)
    with pytest.raises(ValueError, match="ref-0005.safetensors.*same training samples"):
        load_trajectory(tmp_path)
    save_reference_checkpoint(tmp_path, 5, [0, 1, 2], [0, 1, 7], video, text)
    with pytest.raises(ValueError, match="sentence ids differ"):
        load_trajectory(tmp_path)
    save_file({"x": torch.zeros(1)}, str(tmp_path / "trajectories" / "ref-0005.safetensors"))
    with pytest.raises(ValueError, match="not a reference checkpoint"):
        load_trajectory(tmp_path)


def test_storage_grows_linearly_with_the_number_of_samples(tmp_path):
    sizes = {}
    for n in (500, 2000):
        video, text = _embeddings(n, 32, 0)
        path = save_reference_checkpoint(tmp_path / str(n), 0, torch.arange(n), torch.arange(n), video, text)
        sizes[n] = path.stat().st_size
    per_sample = 2 * 32 * 2 + 2 * 8  # two fp16 vectors and two int64 ids
    # Exactly the payload, up to the JSON header (offsets gain digits, padded to 8 bytes).
    assert abs((sizes[2000] - sizes[500]) - 1500 * per_sample) <= 64

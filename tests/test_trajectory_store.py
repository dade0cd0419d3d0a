"""Reference checkpoints: round trip, atomic naming, validation across checkpoints, O(N) storage."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from recipe.trajectory_store import load_trajectory, reference_checkpoint_path, save_reference_checkpoint


def _embeddings(n: int, e: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, e, generator=g) * 3, torch.randn(n, e, generator=g) * 3


def test_round_trip_orders_epochs_sorts_ids_and_normalises(tmp_path):
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
        expected = torch.nn.functional.normalize(video[order], dim=-1)
        torch.testing.assert_close(traj.video[t].float(), expected, atol=2e-3, rtol=0)
        torch.testing.assert_close(traj.text[t].float().norm(dim=-1), torch.ones(4), atol=2e-3, rtol=0)
    assert traj.positions(torch.tensor([9, 0])).tolist() == [3, 0]
    with pytest.raises(KeyError, match=r"\[7\]"):
        traj.positions([7])


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

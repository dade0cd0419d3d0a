"""Each similarity kind equals a naive per-pair loop over the real tokens, chunked or not."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from recipe.similarity import similarity


def random_tokens(batch, max_len, dim, seed):
    generator = torch.Generator().manual_seed(seed)
    tokens = F.normalize(torch.randn(batch, max_len, dim, generator=generator, dtype=torch.float64), dim=-1)
    lengths = torch.randint(1, max_len + 1, (batch,), generator=generator)
    lengths[0] = max_len
    mask = torch.arange(max_len)[None, :] < lengths[:, None]
    # Padding filled with large values: any leak of a padded token into a result would show.
    tokens = torch.where(mask[..., None], tokens, torch.full_like(tokens, 9.0))
    return tokens, mask


def naive(video, video_mask, text, text_mask, kind):
    out = torch.zeros(video.shape[0], text.shape[0], dtype=video.dtype)
    for i in range(video.shape[0]):
        v = video[i, video_mask[i]]
        for j in range(text.shape[0]):
            t = text[j, text_mask[j]]
            if kind == "token":
                pairs = v @ t.T
                out[i, j] = (pairs.max(dim=1).values.mean() + pairs.max(dim=0).values.mean()) / 2
            elif kind == "cls":
                out[i, j] = v[0] @ t[0]
            else:
                out[i, j] = F.normalize(v.mean(0), dim=0) @ F.normalize(t.mean(0), dim=0)
    return out


@pytest.mark.parametrize("kind", ["token", "cls", "mean"])
@pytest.mark.parametrize("chunk_size", [1, 3, 64])
def test_similarity_matches_naive_loop(kind, chunk_size):
    video, video_mask = random_tokens(7, 6, 8, seed=1)
    text, text_mask = random_tokens(5, 4, 8, seed=2)
    expected = naive(video, video_mask, text, text_mask, kind)
    got = similarity(video, video_mask, text, text_mask, kind=kind, chunk_size=chunk_size)
    assert got.shape == (7, 5)
    torch.testing.assert_close(got, expected)


def test_token_similarity_averages_both_directions():
    """A video with one token matching the text perfectly and one unrelated token: v->t sees both."""
    e = torch.eye(4, dtype=torch.float64)
    video = torch.stack([e[0], e[1]])[None]
    text = e[0][None, None]
    ones = torch.ones(1, 2, dtype=torch.bool), torch.ones(1, 1, dtype=torch.bool)
    # video->text: mean(max(1), max(0)) = 0.5; text->video: 1.0; averaged: 0.75.
    assert similarity(video, ones[0], text, ones[1]).item() == pytest.approx(0.75)


def test_token_similarity_gradients_match_naive():
    video, video_mask = random_tokens(4, 5, 6, seed=3)
    text, text_mask = random_tokens(3, 4, 6, seed=4)
    video.requires_grad_(True)
    text.requires_grad_(True)
    similarity(video, video_mask, text, text_mask, chunk_size=2).square().sum().backward()
    grads = video.grad.clone(), text.grad.clone()
    video.grad, text.grad = None, None
    naive(video, video_mask, text, text_mask, "token").square().sum().backward()
    torch.testing.assert_close(grads[0], video.grad)
    torch.testing.assert_close(grads[1], text.grad)
    assert (grads[0][~video_mask] == 0).all()


def test_similarity_rejects_bad_input():
    video, video_mask = random_tokens(2, 3, 4, seed=5)
    with pytest.raises(ValueError, match="unknown similarity kind"):
        similarity(video, video_mask, video, video_mask, kind="max")
    with pytest.raises(ValueError, match="shapes disagree"):
        similarity(video, video_mask[:, :2], video, video_mask)

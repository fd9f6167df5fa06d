"""Aspect buckets and the seeded, resumable batch order."""

from collections import Counter

import pytest
import torch
from PIL import Image

from lookalike.data.buckets import aspect_buckets, crop_box, fit, nearest_bucket, training_size
from lookalike.data.loader import BatchStream, Plan, epoch_batches, rank_batches


@pytest.mark.parametrize("resolution", [64, 512, 1024])
def test_buckets_are_multiples_of_16_within_the_area(resolution):
    buckets = aspect_buckets(resolution)
    assert (resolution, resolution) in buckets
    for w, h in buckets:
        assert w % 16 == 0 and h % 16 == 0
        assert w * h <= resolution * resolution
    ratios = sorted(w / h for w, h in buckets)
    assert ratios[0] < 1 < ratios[-1]


def test_phone_photos_keep_their_shape():
    # a 3:4 portrait from a phone (3024x4032) gets a portrait bucket near 3:4, not a square
    w, h = training_size(3024, 4032, 1024, "buckets")
    assert h > w and abs(w / h - 0.75) < 0.02 and w * h > 0.95 * 1024 * 1024
    assert training_size(4032, 3024, 1024, "buckets") == (h, w)
    assert training_size(3024, 4032, 1024, "square") == (1024, 1024)
    assert nearest_bucket(1000, 1000, aspect_buckets(1024)) == (1024, 1024)


def test_fit_centre_crops_then_resizes():
    im = Image.new("RGB", (300, 100), "black")
    im.paste(Image.new("RGB", (100, 100), "white"), (100, 0))  # white centre third
    out = fit(im, (32, 32))
    assert out.size == (32, 32)
    assert min(out.getdata())[0] > 200  # only the white centre survives a square crop
    assert crop_box(300, 100, (32, 32)) == (100, 0, 200, 100)
    assert crop_box(100, 300, (64, 32)) == (0, 125, 100, 175)


def test_epoch_batches_cover_every_photo_once_in_same_size_batches():
    sizes = [(48, 80)] * 5 + [(64, 64)] * 4 + [(80, 48)]
    for epoch in range(3):
        batches = epoch_batches(sizes, 2, seed=1, epoch=epoch)
        assert sorted(i for b in batches for i in b) == list(range(10))
        assert all(len({sizes[i] for i in b}) == 1 for b in batches)
    assert epoch_batches(sizes, 2, 1, 0) == epoch_batches(sizes, 2, 1, 0)  # seeded
    assert epoch_batches(sizes, 2, 1, 0) != epoch_batches(sizes, 2, 1, 1)  # reshuffled each epoch
    assert len(epoch_batches(sizes, 2, 1, 0)) == 3 + 2 + 1  # a lone photo is a batch of one, not dropped


def test_ranks_split_an_epoch_and_pad_to_equal_length():
    batches = [[0], [1], [2], [3], [4]]
    r0, r1 = rank_batches(batches, 0, 2, 3), rank_batches(batches, 1, 2, 3)
    assert r0 == [[0], [2], [4]] and r1 == [[1], [3], [0]]
    assert {i for b in r0 + r1 for i in b} == set(range(5))


class _Item:
    def __init__(self, i, size):
        self.latent = torch.full((2, *size), float(i))
        self.cond = {"t5": torch.full((3, 4), float(i)), "pooled": torch.full((4,), float(i))}
        self.grounding = i % 3 == 0


def test_stream_resumes_at_any_micro_batch():
    items = [_Item(i, (4, 4) if i < 4 else (2, 6)) for i in range(6)]
    empty = {"t5": torch.zeros(3, 4), "pooled": torch.zeros(4)}
    plan = Plan(photos=6, batches_per_epoch=4, world_size=1, accumulation=1, epochs=5, max_steps=None)
    full = BatchStream(items, empty, plan, 2, seed=3, caption_dropout=0.5)
    head = [b for _, b in zip(range(12), full)]
    resumed = BatchStream(items, empty, plan, 2, seed=3, start=7, caption_dropout=0.5)
    for a, b in zip(head[7:], resumed):
        assert all(torch.equal(a[k], b[k]) for k in a if k != "cond")
        assert all(torch.equal(a["cond"][k], b["cond"][k]) for k in a["cond"])
    assert [int(b["epoch"]) for b in head] == [0] * 4 + [1] * 4 + [2] * 4
    # caption dropout swaps in the empty caption for some items and never touches the latents
    dropped = Counter(bool((b["cond"]["t5"][i] == 0).all()) for b in head for i in range(len(b["cond"]["t5"])))
    assert dropped[True] > 0 and dropped[False] > 0

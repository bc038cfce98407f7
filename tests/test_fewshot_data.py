"""Image data for few-shot classification: image features in FewShotClassification."""
import pytest
import torch

from metakern.tasks import FewShotClassification


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- image features


def test_uint8_images_are_sampled_in_unit_range():
    g = gen(11)
    images = torch.randint(0, 256, (60, 1, 5, 7), generator=g, dtype=torch.uint8)
    labels = torch.arange(60) % 6
    task = FewShotClassification(images, labels, ways=3, shots=2, queries=4)
    assert task.input_shape == (1, 5, 7) and task.in_features == 35
    sup, qry, _ = task.sample_indices(5, gen(1))
    xs, ys, xq, yq = task.sample(5, gen(1), dtype=torch.float64)
    assert xs.shape == (5, 6, 1, 5, 7) and xq.shape == (5, 12, 1, 5, 7) and ys.shape == (5, 6)
    # float64 ground truth: value / 255
    torch.testing.assert_close(xs, images[sup].double() / 255, rtol=0, atol=0)
    torch.testing.assert_close(xq, images[qry].double() / 255, rtol=0, atol=0)
    assert xs.min() >= 0 and xs.max() <= 1


def test_uint8_same_values_for_any_dtype():
    images = torch.arange(256, dtype=torch.uint8).repeat(4)[:, None]  # every value, 4 classes of 256
    labels = torch.arange(4).repeat_interleave(256)
    task = FewShotClassification(images, labels, ways=4, shots=128, queries=128)
    a = task.sample(1, gen(0), dtype=torch.float64)
    b = task.sample(1, gen(0), dtype=torch.float32)
    for u, v in zip(a, b):
        assert torch.equal(u.to(v.dtype), v)  # k / 255 in float32 is the float64 quotient rounded once


def test_float_image_features_and_split():
    f = torch.randn(40, 3, 4, 4, dtype=torch.float64)
    labels = torch.arange(40) // 4  # 10 classes
    task = FewShotClassification(f, labels, ways=2, shots=1, queries=3)
    train, test = task.split(6)
    assert train.input_shape == (3, 4, 4) and not set(train.classes) & set(test.classes)
    sup, qry, cls = test.sample_indices(3, gen(2))
    xs, ys, xq, yq = test.sample(3, gen(2), dtype=torch.float64)
    assert torch.equal(xs, f[sup]) and torch.equal(xq, f[qry])
    assert torch.equal(labels[sup], cls.gather(1, ys)) and torch.equal(labels[qry], cls.gather(1, yq))
    assert "input_shape=(3, 4, 4)" in repr(test)


@pytest.mark.parametrize("features,exc,word", [
    (torch.zeros(10, 3, dtype=torch.int64), TypeError, "uint8"),
    (torch.zeros(10, 0), ValueError, "features"),
    (torch.zeros(10, 1, 0, 4, dtype=torch.uint8), ValueError, "empty"),
])
def test_bad_image_features(features, exc, word):
    with pytest.raises(exc, match=word):
        FewShotClassification(features, torch.arange(10) % 2, 2, 1, 1)


def test_class_members_for_many_classes():
    """The members of each class, found in one sort: every index of that class, ascending, then -1."""
    g = gen(4)
    ids = torch.randperm(1000, generator=g)[:300] - 500  # arbitrary ids, negative ones too
    labels = ids[torch.randint(0, 300, (5000,), generator=g)]
    task = FewShotClassification(torch.zeros(5000, 1), labels, ways=2, shots=1, queries=1,
                                 classes=[c for c in ids.tolist() if (labels == c).sum() >= 2])
    for k, c in enumerate(task.classes):
        expect = torch.nonzero(labels == c).flatten()
        n = len(expect)
        assert torch.equal(task._members[k, :n], expect) and (task._members[k, n:] == -1).all()

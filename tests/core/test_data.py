"""Loaders and the episode sampler, on real Omniglot and miniImageNet-lite and on bad folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.data import ImageSet, with_rotations
from models.episodes import EpisodeSampler
from models.errors import ConfigError, DatasetError
from models.loaders import load_dataset, load_image_folder, load_omniglot_vinyals


def test_omniglot_npz_loads_with_alphabet_names(omniglot_background: ImageSet, omniglot_evaluation: ImageSet) -> None:
    assert omniglot_background.num_classes == 964
    assert omniglot_evaluation.num_classes == 659
    assert omniglot_background.images.shape == (964 * 20, 1, 28, 28)
    assert omniglot_background.class_names[0] == "Arcadian/character01"
    # White paper stays bright: most pixels are near 255, strokes are dark.
    assert float(omniglot_background.images.float().mean()) > 200
    assert not set(omniglot_background.class_names) & set(omniglot_evaluation.class_names)


def test_official_omniglot_folder_layout(tmp_path: Path, omniglot_evaluation: ImageSet) -> None:
    # Write three characters in the layout of the official zip: <Alphabet>/characterNN/XXXX_YY.png
    root = tmp_path / "images_evaluation"
    for c in range(3):
        folder = root / "Alphabet_A" / f"character{c + 1:02d}"
        folder.mkdir(parents=True)
        for d in range(4):
            arr = omniglot_evaluation.images[c * 20 + d, 0].numpy()
            Image.fromarray(arr).convert("1").save(folder / f"{965 + c:04d}_{d + 1:02d}.png")
    data = load_dataset(root, image_size=28, channels=1)
    assert data.class_names == ["Alphabet_A/character01", "Alphabet_A/character02", "Alphabet_A/character03"]
    assert data.class_counts() == [4, 4, 4]
    assert data.images.shape == (12, 1, 28, 28)


def test_miniimagenet_lite_loads(shared_data: Path) -> None:
    root = shared_data / "miniimagenet-lite"
    counts = {}
    for split in ("train", "val", "test"):
        data = load_image_folder(root / split, image_size=84, channels=3, max_per_class=2)
        counts[split] = data.num_classes
        assert data.images.shape[1:] == (3, 84, 84)
        assert data.rejected == []
    assert counts == {"train": 64, "val": 16, "test": 20}


@pytest.fixture(scope="module")
def vinyals_test(shared_data: Path) -> ImageSet:
    return load_omniglot_vinyals(shared_data / "omniglot", "test")


def test_omniglot_vinyals_split_has_every_listed_rotation(
    shared_data: Path, vinyals_test: ImageSet, omniglot_evaluation: ImageSet
) -> None:
    lines = (shared_data / "omniglot" / "splits_vinyals" / "test.txt").read_text().split()
    # 423 evaluation-alphabet characters, each in 4 rotations, in the file's order.
    assert vinyals_test.class_names == lines
    assert vinyals_test.num_classes == 423 * 4
    assert vinyals_test.class_counts() == [20] * (423 * 4)
    assert vinyals_test.images.shape == (423 * 4 * 20, 1, 28, 28)
    assert vinyals_test.class_names[:2] == ["Gurmukhi/character42/rot000", "Gurmukhi/character42/rot090"]

    def images(data: ImageSet, name: str) -> torch.Tensor:
        return data.images[data.labels == data.class_names.index(name)]

    # rot000 is the character as the npz loader gives it; the others turn it counter-clockwise,
    # as PIL's Image.rotate (the Prototypical Networks loader's call) does.
    upright = images(vinyals_test, "Gurmukhi/character42/rot000")
    assert torch.equal(upright, images(omniglot_evaluation, "Gurmukhi/character42"))
    turned = images(vinyals_test, "Gurmukhi/character42/rot090")
    assert not torch.equal(turned, upright)
    assert torch.equal(turned, torch.rot90(upright, k=1, dims=(-2, -1)))
    pil = np.asarray(Image.fromarray(upright[0, 0].numpy()).rotate(90))
    assert np.array_equal(turned[0, 0].numpy(), pil)
    assert torch.equal(images(vinyals_test, "Gurmukhi/character42/rot180"), torch.rot90(upright, 2, (-2, -1)))
    assert torch.equal(images(vinyals_test, "Gurmukhi/character42/rot270"), torch.rot90(upright, 3, (-2, -1)))


def test_rotated_classes_match_the_vinyals_loaders_rotations(
    vinyals_test: ImageSet, omniglot_evaluation: ImageSet
) -> None:
    # Two characters, each turned four times: 8 classes of 20 drawings, the same names and pixels
    # as the Vinyals test split's lines for them (a loader of its own, checked against PIL above).
    chars = ["Gurmukhi/character42", "Kannada/character01"]
    data = omniglot_evaluation.subset([omniglot_evaluation.class_names.index(c) for c in chars])
    turned = with_rotations(data)
    assert turned.num_classes == 8
    assert turned.class_counts() == [20] * 8
    assert turned.class_names[:2] == ["Gurmukhi/character42/rot000", "Kannada/character01/rot000"]
    for name in turned.class_names:
        mine = turned.images[turned.labels == turned.class_names.index(name)]
        theirs = vinyals_test.images[vinyals_test.labels == vinyals_test.class_names.index(name)]
        assert torch.equal(mine, theirs), name
    assert not torch.equal(turned.images[turned.labels == 0], turned.images[turned.labels == 2])


def test_omniglot_vinyals_trainval_mixes_both_files_and_misses_no_test_character(
    shared_data: Path, vinyals_test: ImageSet, omniglot_background: ImageSet, omniglot_evaluation: ImageSet
) -> None:
    trainval = load_omniglot_vinyals(shared_data / "omniglot", "trainval")
    assert trainval.num_classes == 1200 * 4
    assert set(trainval.class_counts()) == {20}
    characters = {n.rsplit("/", 1)[0] for n in trainval.class_names}
    test_characters = {n.rsplit("/", 1)[0] for n in vinyals_test.class_names}
    assert len(characters) == 1200 and len(test_characters) == 423
    # Together the two splits are all 1,623 characters, each in exactly one of them.
    assert not characters & test_characters
    assert characters | test_characters == set(omniglot_background.class_names) | set(omniglot_evaluation.class_names)
    # trainval takes evaluation-alphabet characters too, so both npz files must be read.
    assert characters & set(omniglot_evaluation.class_names)


def test_omniglot_vinyals_errors(shared_data: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="unknown Omniglot Vinyals split 'testing'.*trainval"):
        load_omniglot_vinyals(shared_data / "omniglot", "testing")
    with pytest.raises(DatasetError, match="split file not found"):
        load_omniglot_vinyals(tmp_path, "test")
    # A split naming a character that neither npz file holds.
    root = tmp_path / "omniglot"
    (root / "splits_vinyals").mkdir(parents=True)
    for f in ("images_background.npz", "images_evaluation.npz", "alphabets.csv"):
        (root / f).symlink_to(shared_data / "omniglot" / f)
    (root / "splits_vinyals" / "val.txt").write_text("Latin/character01/rot000\nKlingon/character01/rot090\n")
    with pytest.raises(DatasetError, match="1 character.*not in the Omniglot npz.*'Klingon/character01'"):
        load_omniglot_vinyals(root, "val")
    (root / "splits_vinyals" / "val.txt").write_text("Latin/character01/rot045\n")
    with pytest.raises(DatasetError, match="multiple of 90"):
        load_omniglot_vinyals(root, "val")
    (root / "splits_vinyals" / "val.txt").write_text("Latin/character01/rot000\nLatin/character01\n")
    with pytest.raises(DatasetError, match="val.txt:2: expected 'Alphabet/characterNN/rotDDD'"):
        load_omniglot_vinyals(root, "val")
    (root / "splits_vinyals" / "val.txt").write_text("Latin/character01/rot000\nLatin/character02/rot180\n")
    small = load_omniglot_vinyals(root, "val", image_size=14)
    assert small.class_names == ["Latin/character01/rot000", "Latin/character02/rot180"]
    assert small.images.shape == (40, 1, 14, 14)


def _write_png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((10, 10, 3), value, dtype=np.uint8)).save(path)


def test_bad_inputs_raise_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        load_dataset(tmp_path / "missing", image_size=28, channels=1)

    one = tmp_path / "one"
    _write_png(one / "cat" / "a.png", 10)
    with pytest.raises(DatasetError, match="at least 2 class"):
        load_dataset(one, image_size=28, channels=1)

    bad = tmp_path / "bad"
    _write_png(bad / "cat" / "a.png", 10)
    (bad / "dog").mkdir()
    (bad / "dog" / "broken.jpg").write_bytes(b"not an image at all")
    with pytest.raises(DatasetError, match="'dog'.*no decodable image"):
        load_dataset(bad, image_size=28, channels=1)


def test_undecodable_files_are_reported_not_dropped_silently(tmp_path: Path) -> None:
    root = tmp_path / "mixed"
    _write_png(root / "cat" / "a.png", 10)
    _write_png(root / "dog" / "b.png", 200)
    (root / "dog" / "c.png").write_bytes(b"\x89PNG truncated")
    data = load_dataset(root, image_size=16, channels=3)
    assert len(data) == 2
    assert [f for f, _ in data.rejected] == ["dog/c.png"]


def test_sampler_without_replacement_gives_distinct_classes_and_disjoint_sets() -> None:
    labels = torch.arange(30).repeat_interleave(10)
    sampler = EpisodeSampler(labels, ways=20, shots=3, queries=5, seed=7)
    for _ in range(50):
        ep = sampler.sample()
        assert len(set(ep.classes.tolist())) == 20
        assert not set(ep.support.tolist()) & set(ep.query.tolist())
        # Every image belongs to the class its episode label says.
        assert (labels[ep.support] == torch.as_tensor(ep.classes)[ep.support_labels]).all()
        assert (labels[ep.query] == torch.as_tensor(ep.classes)[ep.query_labels]).all()
        assert len(ep.support) == 60 and len(ep.query) == 100


def test_sampler_is_deterministic_per_seed_and_can_draw_with_replacement() -> None:
    labels = torch.arange(5).repeat_interleave(6)
    a = [EpisodeSampler(labels, ways=5, shots=1, queries=2, seed=3).sample() for _ in range(1)]
    s1 = EpisodeSampler(labels, ways=5, shots=1, queries=2, seed=3)
    s2 = EpisodeSampler(labels, ways=5, shots=1, queries=2, seed=3)
    s3 = EpisodeSampler(labels, ways=5, shots=1, queries=2, seed=4)
    e1 = [s1.sample() for _ in range(5)]
    e2 = [s2.sample() for _ in range(5)]
    e3 = [s3.sample() for _ in range(5)]
    assert a[0].support.tolist() == e1[0].support.tolist()
    assert all(x.support.tolist() == y.support.tolist() and x.query.tolist() == y.query.tolist()
               for x, y in zip(e1, e2, strict=True))
    assert any(x.support.tolist() != y.support.tolist() for x, y in zip(e1, e3, strict=True))
    with_repl = EpisodeSampler(labels, ways=5, shots=1, queries=1, replacement=True, seed=0)
    assert any(len(set(with_repl.sample().classes.tolist())) < 5 for _ in range(50))


def test_sampler_rejects_impossible_episodes() -> None:
    labels = torch.arange(4).repeat_interleave(3)
    with pytest.raises(ConfigError, match="5 classes"):
        EpisodeSampler(labels, ways=5, shots=1, queries=1)
    with pytest.raises(ConfigError, match="smallest class has 3"):
        EpisodeSampler(labels, ways=2, shots=2, queries=2)

"""Tests of aavae.data.folder_images and aavae.serving.embeddings: any folder or archive, embedded and indexed."""

from __future__ import annotations

import io
import logging
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aavae.data.errors import DatasetError
from aavae.data.folder_images import iter_image_batches, list_images, read_image
from aavae.data.imagefolder import read_imagefolder
from aavae.kedro_ext.datasets import ArraysDataset
from aavae.serving.embeddings import NeighbourIndex, answer_query, embed_folder, read_indexed_images
from aavae.serving.inference import ImageEncoder
from tests.conftest import SHARED_DATASETS
from tests.helpers.bundles import trained_looking_bundle

CIFAR_JPEG = SHARED_DATASETS / "cifar10_jpeg.tar.gz"


def write_photos(root: Path, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Lossless images in an arbitrary layout (no split or class folders), plus clutter."""
    layout = ["beach.png", "2024/june/cat.png", "2024/june/dog.PNG", "scans/page 1.bmp",
              "deep/er/still/x.png"]
    written = {}
    for index, name in enumerate(layout):
        image = rng.integers(0, 256, (20 + index, 24, 3), dtype=np.uint8)
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / name)
        written[name] = image
    (root / "notes.txt").write_text("not an image")
    (root / ".thumbnails").mkdir()
    Image.fromarray(written["beach.png"]).save(root / ".thumbnails/beach.png")
    (root / "__MACOSX").mkdir()
    (root / "__MACOSX/._beach.png").write_bytes(b"resource fork")
    return written


def archive(folder: Path, destination: Path) -> Path:
    if destination.name.endswith(".zip"):
        with zipfile.ZipFile(destination, "w") as handle:
            for path in sorted(folder.rglob("*")):
                handle.write(path, path.relative_to(folder).as_posix())
    else:
        with tarfile.open(destination, "w:gz") as handle:
            handle.add(folder, arcname=".")
    return destination


def read_all(source, size=16, **options):
    batches = list(iter_image_batches(source, size, batch_size=2, **options))
    paths = [p for batch in batches for p in batch.paths]
    return paths, np.concatenate([batch.images for batch in batches])


@pytest.mark.parametrize("kind", ["folder", "tar.gz", "zip"])
def test_every_image_of_any_layout_is_read_hidden_files_and_others_left_out(tmp_path, kind):
    folder = tmp_path / "photos"
    written = write_photos(folder, np.random.default_rng(0))
    source = folder if kind == "folder" else archive(folder, tmp_path / f"photos.{kind}")

    listing = list_images(source)
    paths, images = read_all(source)

    assert sorted(listing.paths) == sorted(written) == sorted(paths)
    assert "notes.txt" in listing.not_images
    assert images.shape == (5, 16, 16, 3) and images.dtype == np.uint8
    encoder = ImageEncoder.from_bundle(trained_looking_bundle())  # fits as ingest does
    for path, image in zip(paths, images, strict=True):
        np.testing.assert_array_equal(image, encoder.fit_image(written[path]))


def test_an_archive_member_pointing_outside_is_refused(tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="PNG")
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as handle:
        info = tarfile.TarInfo("../outside.png")
        info.size = len(buffer.getvalue())
        handle.addfile(info, io.BytesIO(buffer.getvalue()))
    with pytest.raises(DatasetError, match="Refusing '../outside.png'.*'\\.\\.'"):
        list_images(evil)


def test_undecodable_images_stop_the_read_or_are_skipped_and_listed(tmp_path):
    folder = tmp_path / "photos"
    write_photos(folder, np.random.default_rng(1))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")

    with pytest.raises(DatasetError, match=r"Cannot decode image '.*photos/broken.jpg'.*embed.on_bad_image=skip"):
        read_all(folder)
    skipped: list[str] = []
    paths, _ = read_all(folder, on_bad_image="skip", skipped=skipped)
    assert skipped == ["broken.jpg"] and len(paths) == 5


def test_no_images_and_missing_paths_are_explained(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty/readme.txt").write_text("hi")
    with pytest.raises(DatasetError, match="holds no images"):
        list_images(tmp_path / "empty")
    with pytest.raises(DatasetError, match="does not exist"):
        list_images(tmp_path / "absent")
    with pytest.raises(DatasetError, match="does not exist"):
        read_image(tmp_path / "absent.png", 16)


def test_embed_folder_encodes_every_image_in_storage_order(tmp_path):
    folder = tmp_path / "photos"
    written = write_photos(folder, np.random.default_rng(2))
    encoder = ImageEncoder.from_bundle(trained_looking_bundle())

    result = embed_folder(encoder, folder, batch_size=2, progress=False)

    assert sorted(result.paths) == sorted(written)
    expected = encoder.encode([written[p] for p in result.paths], batch_size=2)
    np.testing.assert_allclose(result.vectors, expected, rtol=1e-5, atol=1e-5)
    assert result.vectors.dtype == np.float32 and result.skipped == []


def unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_the_index_ranks_by_cosine_similarity_of_centred_embeddings_and_can_leave_the_query_out(tmp_path):
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(40, 6)).astype(np.float32) * rng.uniform(0.1, 10, (40, 1)) + 2
    paths = [f"img{i}.png" for i in range(40)]
    index = NeighbourIndex.build(paths, vectors, "folder", "model A")
    queries = rng.normal(size=(3, 6))

    answers = index.query(queries, k=5)
    centre = vectors.mean(axis=0)
    cosine = unit_rows(queries - centre) @ unit_rows(vectors - centre).T
    for row, answer in enumerate(answers):
        assert [n.path for n in answer] == [paths[i] for i in np.argsort(-cosine[row])[:5]]
        np.testing.assert_allclose([n.similarity for n in answer], np.sort(cosine[row])[::-1][:5], rtol=1e-5)

    own = index.query(vectors[[7]], k=3, exclude_rows=[7])[0]
    assert "img7.png" not in [n.path for n in own] and len(own) == 3
    with pytest.raises(ValueError, match="different models .*model A"):
        index.query(np.ones((1, 5)), k=3)


def test_the_index_survives_the_catalog_without_pickle(tmp_path):
    index = NeighbourIndex.build(["a/1.png", "b/2.png"], np.eye(2, 3), "/data/x.tar.gz", "models:/m/3")
    dataset = ArraysDataset(str(tmp_path / "index.npz"))
    dataset.save(index.to_arrays())  # ArraysDataset loads with allow_pickle=False

    again = NeighbourIndex.from_arrays(dataset.load())
    assert again.paths == index.paths and again.source == "/data/x.tar.gz" and again.model == "models:/m/3"
    np.testing.assert_array_equal(again.unit_vectors, index.unit_vectors)
    np.testing.assert_array_equal(again.centre, index.centre)


def test_scores_spread_where_plain_cosine_puts_every_neighbour_near_one():
    """Rectified features share a large common part: plain cosine scored every neighbour of a
    real run 0.98-0.99. Centred, near twins still score near 1 and unrelated images near 0."""
    rng = np.random.default_rng(4)
    vectors = (8 + rng.normal(size=(200, 32))).astype(np.float32)  # all in one narrow cone
    twin = vectors[:1] + rng.normal(scale=0.05, size=(1, 32))
    index = NeighbourIndex.build([f"{i}.png" for i in range(200)], vectors, "folder", "model")
    plain = unit_rows(vectors) @ unit_rows(vectors).T

    found = index.query(np.concatenate([twin, vectors[1:2]]), k=199, exclude_rows=[None, 1])
    assert plain.min() > 0.95, "the case: plain cosine says nothing"
    assert found[0][0].path == "0.png" and found[0][0].similarity > 0.99
    similarities = [n.similarity for n in found[1]]
    assert max(similarities) - min(similarities) > 0.8 and abs(np.median(similarities)) < 0.2


def test_an_index_stored_before_centring_answers_as_it_did():
    rng = np.random.default_rng(6)
    vectors = rng.normal(size=(10, 4)).astype(np.float32) + 3
    stored = {"paths": np.asarray([f"{i}.png" for i in range(10)]), "unit_vectors": unit_rows(vectors),
              "source": np.asarray("folder"), "model": np.asarray("model")}  # no centre

    (answer,) = NeighbourIndex.from_arrays(stored).query(vectors[:1], k=3, exclude_rows=[0])
    plain = (unit_rows(vectors[:1]) @ unit_rows(vectors).T)[0]
    np.testing.assert_allclose([n.similarity for n in answer], np.sort(plain[1:])[::-1][:3], rtol=1e-5)


@pytest.mark.skipif(not CIFAR_JPEG.is_file(), reason=f"needs the shared CIFAR-10 JPEG copy at {CIFAR_JPEG}")
def test_real_jpegs_decode_exactly_as_ingest_decodes_them(tmp_path):
    # 600 real CIFAR-10 JPEGs in ingest's layout (150 of each of train|test x cat|ship)
    subset = tmp_path / "cifar_subset.tar"
    kept: dict[tuple[str, str], int] = {}
    with tarfile.open(CIFAR_JPEG) as source, tarfile.open(subset, "w") as target:
        for member in source:
            parts = tuple(member.name.split("/"))
            if member.isfile() and len(parts) == 3 and parts[1] in ("cat", "ship"):
                if kept.setdefault(parts[:2], 0) < 150:
                    target.addfile(member, source.extractfile(member))
                    kept[parts[:2]] += 1
    for size in (32, 24):
        ingested = read_imagefolder(subset, image_size=size).splits
        by_path = {}
        for batch in iter_image_batches(subset, size, batch_size=128):
            by_path.update(zip(batch.paths, batch.images, strict=True))
        for split, images in ingested.items():
            names = sorted(p for p in by_path if p.split("/")[-3] == split)  # ingest sorts by path
            assert len(names) == len(images) > 0
            np.testing.assert_array_equal(np.stack([by_path[n] for n in names]), np.asarray(images.images))


def test_queries_come_from_a_file_a_path_of_the_index_or_samples_of_it(tmp_path):
    folder = tmp_path / "photos"
    written = write_photos(folder, np.random.default_rng(5))
    encoder = ImageEncoder.from_bundle(trained_looking_bundle())
    result = embed_folder(encoder, folder, progress=False)
    index = NeighbourIndex.build(result.paths, result.vectors, str(folder), encoder.identity)

    samples = answer_query(index, encoder, None, k=2, samples=3)
    assert len(samples) == 3 and all(a.query not in [n.path for n in a.neighbours] for a in samples)
    (by_path,) = answer_query(index, encoder, "beach.png", k=4)
    assert by_path.image is None and "beach.png" not in [n.path for n in by_path.neighbours]
    (by_file,) = answer_query(index, encoder, str(folder / "beach.png"), k=1)
    assert by_file.neighbours[0].path == "beach.png" and by_file.neighbours[0].similarity == pytest.approx(1, abs=1e-5)
    assert by_file.image.shape == (16, 16, 3)
    pictures = read_indexed_images(index, {"beach.png", "2024/june/cat.png"}, encoder.preprocessing)
    np.testing.assert_array_equal(pictures["2024/june/cat.png"], encoder.fit_image(written["2024/june/cat.png"]))

    with pytest.raises(ValueError, match="neither an image file nor a path of the embedded table"):
        answer_query(index, encoder, "nowhere.png", k=2)
    other = NeighbourIndex.build(result.paths, result.vectors, str(folder), "models:/other/1")
    with pytest.raises(ValueError, match="made by models:/other/1, but queries would be embedded by model bundle"):
        answer_query(other, encoder, None, k=2)


def test_embedding_a_folder_reports_progress_as_plain_lines_in_a_log(tmp_path, caplog, capsys, monkeypatch):
    """Outside a terminal (CI, nohup, a pipe) the embed pipeline's progress is plain log lines
    from the project's one progress helper, not a bar's carriage returns."""
    from aavae.common import progress as progress_module

    monkeypatch.setattr(progress_module, "EVERY_SECONDS", 0.0)
    caplog.set_level(logging.INFO, logger="aavae.common.progress")
    folder = tmp_path / "photos"
    written = write_photos(folder, np.random.default_rng(4))

    embed_folder(ImageEncoder.from_bundle(trained_looking_bundle()), folder, batch_size=2)

    logged = [r.getMessage() for r in caplog.records if r.name == "aavae.common.progress"]
    total = len(written)
    assert any(line.startswith(f"embed: {total}/{total} images (100%)") for line in logged), logged
    assert "\r" not in capsys.readouterr().out


def test_embedding_without_a_trained_model_names_the_environments_model():
    from aavae.pipelines.embed.nodes import load_encoder

    with pytest.raises(ValueError, match=r"^No model to embed with: data/stl10/06_models/aavae_model\.pt does not "
                                         r"exist\. Run `kedro run --pipeline pretrain` first"):
        load_encoder(None, {}, {}, "data/stl10")

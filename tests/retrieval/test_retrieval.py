"""embed / index / search against independent references (float64 forward pass by
hand, brute-force kNN), and every bad input as one sentence."""

import json
import os

import numpy as np
import pytest
import torch

from pml_soproxy import cli
from pml_soproxy.datasets.base import load_rgb
from pml_soproxy.retrieval import Index, Retriever, load_embeddings, load_model

from .conftest import PER_CLASS


def error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "Traceback" not in "\n".join(err)
    return err[-1]


def brute_force(queries, gallery, k):
    """Top-k by float64 inner product; ties broken by the lower index."""
    sims = queries.astype(np.float64) @ gallery.astype(np.float64).T
    order = np.lexsort((np.arange(gallery.shape[0])[None].repeat(len(sims), 0), -sims))
    ids = order[:, :k]
    return np.take_along_axis(sims, ids, 1), ids


def test_embed_matches_a_forward_pass_by_hand(retriever, image_dir):
    embedded = retriever.embed(image_dir)
    assert len(embedded) == 5 * PER_CLASS
    assert [os.path.basename(p) for p, _ in embedded.failed] == ["broken.png"]
    assert "not a recognised image format" in embedded.failed[0][1]
    # labels: the first-level folder, nested images included
    nested = [p for p in embedded.paths if os.sep + "more" + os.sep in p]
    assert len(nested) == 5
    assert all(lab == p.split(os.sep)[-3] for p, lab in zip(embedded.paths, embedded.labels)
               if p in nested)  # fmt: skip
    # reference: the run's eval transform, trunk and embedder in float64
    model = load_model(retriever.model.info["source"], device="cpu", precision="fp32")
    net = model.net.double().eval()
    picks = [0, 17, len(embedded) - 1]
    x = torch.stack([model.transform(load_rgb(embedded.paths[i])) for i in picks])
    with torch.no_grad():
        ref = torch.nn.functional.normalize(net.embedder(net.trunk(x.double())), dim=1)
    np.testing.assert_allclose(embedded.vectors[picks], ref.numpy(), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(embedded.vectors, axis=1), 1, atol=1e-6)


def test_flat_index_is_exact_and_survives_save_load(retriever, image_dir, tmp_path):
    embedded = retriever.embed(image_dir)
    index = Index.build(embedded)
    sims, ids = index.search(embedded.vectors[:7], k=5)
    ref_sims, ref_ids = brute_force(embedded.vectors[:7], embedded.vectors, 5)
    np.testing.assert_allclose(sims, ref_sims, atol=1e-5)
    # ids equal except where two similarities tie to float32 precision
    assert (ids == ref_ids).mean() > 0.9
    path = index.save(str(tmp_path / "g.faiss"))
    again = Index.load(path)
    assert again.paths == embedded.paths and again.labels == embedded.labels
    np.testing.assert_array_equal(again.search(embedded.vectors[:7], 5)[1], ids)


def test_ivf_with_every_list_probed_equals_exact(retriever, image_dir):
    embedded = retriever.embed(image_dir)
    exact = Index.build(embedded).search(embedded.vectors, 4)
    ivf = Index.build(embedded, "IVF4,Flat", search_params="nprobe=4")
    approx = ivf.search(embedded.vectors, 4)
    np.testing.assert_allclose(approx[0], exact[0], atol=1e-5)


def test_add_extends_and_skips_known_paths(retriever, image_dir, tmp_path):
    embedded = retriever.embed(image_dir)
    half = len(embedded) // 2
    first = Index.build(type(embedded)(embedded.vectors[:half], embedded.paths[:half],
                        embedded.labels[:half], embedded.model))  # fmt: skip
    assert first.add(embedded) == len(embedded) - half
    assert first.add(embedded) == 0
    full = Index.build(embedded)
    np.testing.assert_allclose(first.search(embedded.vectors, 3)[0],
                               full.search(embedded.vectors, 3)[0], atol=1e-6)  # fmt: skip


def test_retriever_api_round_trip(retriever, image_dir, tmp_path):
    r = Retriever(retriever.model, progress=False)
    assert r.add(image_dir) == 5 * PER_CLASS
    query = os.path.join(image_dir, "7")
    hits = r.search(query, k=3)
    assert len(hits) == PER_CLASS  # recursive: the nested image too
    # a folder's files directly in it have no class of their own, so take the
    # label the index holds for them; the nested one is named by its subfolder
    assert [h.label for h in hits] == ["7"] * (PER_CLASS - 1) + ["more"]
    assert hits[0].query in [h.path for h in hits[0].hits]  # it finds itself
    assert abs(hits[0].hits[0].similarity - 1) < 1e-5
    r.save(str(tmp_path / "r.faiss"))
    loaded = Retriever.load(str(tmp_path / "r.faiss"), device="cpu", progress=False)
    assert [h.path for h in loaded.search(query, 3)[0].hits] == \
        [h.path for h in hits[0].hits]  # fmt: skip


##############
### the CLI ###
##############


def test_cli_embed_index_search(run_dir, image_dir, tmp_path, capsys):
    emb, idx, grid = (str(tmp_path / n) for n in ("e.npy", "g.faiss", "grid.png"))
    assert cli.main(["embed", run_dir, image_dir, "--out", emb, "--device", "cpu",
                     "--num-workers", "0"]) == 0  # fmt: skip
    out = capsys.readouterr()
    assert "1 image(s) could not be read" in out.err and "broken.png" in out.err
    manifest = json.load(open(emb + ".json"))
    assert manifest["count"] == 5 * PER_CLASS and manifest["dim"] == 16
    assert manifest["model"]["sha256"] and manifest["failed"][0][0].endswith("broken.png")
    assert load_embeddings(emb).vectors.shape == (5 * PER_CLASS, 16)

    assert cli.main(["index", emb, "--out", idx]) == 0
    assert "60 images, 16-d, Flat" in capsys.readouterr().out
    assert cli.main(["search", idx, image_dir, "--k", "4", "--grid", grid, "--json",
                     "--device", "cpu", "--num-workers", "0"]) == 0  # fmt: skip
    results = json.loads(capsys.readouterr().out)
    assert len(results) == 5 * PER_CLASS
    assert all(len(r["hits"]) == 4 for r in results)
    assert all(r["label"] == r["query"].split(os.sep)[-2 if "more" not in r["query"]
               else -3] for r in results)  # fmt: skip
    assert all(r["query"] in [h["path"] for h in r["hits"]] for r in results)
    assert os.path.getsize(grid) > 1000
    # the table form, from embeddings as queries (no model needed)
    assert cli.main(["search", idx, emb, "--k", "2"]) == 0
    table = capsys.readouterr().out
    assert table.count("query ") == 5 * PER_CLASS and "similarity" in table


def test_cli_index_straight_from_images_and_add(run_dir, image_dir, tmp_path, capsys):
    idx = str(tmp_path / "g.faiss")
    args = ["--device", "cpu", "--num-workers", "0"]
    assert cli.main(["index", os.path.join(image_dir, "5"), "--model", run_dir,
                     "--out", idx, *args]) == 0  # fmt: skip
    assert cli.main(["index", image_dir, "--add", "--out", idx, *args]) == 0
    out = capsys.readouterr().out
    assert f"added {4 * PER_CLASS} new images ({PER_CLASS} already indexed)" in out
    assert Index.load(idx).manifest["count"] == 5 * PER_CLASS
    # nothing is overwritten without --overwrite
    assert cli.main(["index", image_dir, "--model", run_dir, "--out", idx, *args]) == 2
    assert "exists; pass --overwrite" in error_line(capsys)


@pytest.mark.parametrize(
    "damage, expected",
    [
        ("truncate", "does not match its manifest"),
        ("flip", "does not match its manifest"),
        ("no-manifest", "has no manifest"),
        ("bad-manifest", "not a readable JSON manifest"),
    ],
)
def test_corrupt_index_is_one_sentence(retriever, image_dir, tmp_path, capsys,
                                       damage, expected):  # fmt: skip
    path = Index.build(retriever.embed(image_dir)).save(str(tmp_path / "g.faiss"))
    data = open(path, "rb").read()
    if damage == "truncate":
        open(path, "wb").write(data[: len(data) // 2])
    elif damage == "flip":
        open(path, "wb").write(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    elif damage == "no-manifest":
        os.remove(path + ".json")
    else:
        open(path + ".json", "w").write("{")
    assert cli.main(["search", path, image_dir, "--device", "cpu"]) == 2
    assert expected in error_line(capsys)


def test_bad_inputs_are_one_sentence(run_dir, image_dir, tmp_path, capsys):
    missing = str(tmp_path / "nope")
    cases = [
        (["embed", missing, image_dir, "--out", str(tmp_path / "a.npy")],
         "no run folder or model file at"),
        (["embed", run_dir, missing, "--out", str(tmp_path / "a.npy"), "--device", "cpu"],
         "no image file or folder at"),
        (["embed", run_dir, image_dir, "--out", str(tmp_path / "a.txt"), "--device", "cpu",
          "--num-workers", "0"], "written as .safetensors or .npy"),
        (["embed", str(tmp_path), image_dir, "--out", str(tmp_path / "a.npy")],
         "is it a run folder of pml-soproxy train?"),
        (["index", image_dir, "--out", str(tmp_path / "g.faiss")],
         "pass --model RUN"),
        (["index", image_dir, "--model", run_dir, "--out", str(tmp_path / "g.faiss"),
          "--factory", "Bogus7", "--device", "cpu", "--num-workers", "0"],
         "cannot build an index from the factory string 'Bogus7'"),
        (["index", image_dir, "--model", run_dir, "--out", str(tmp_path / "g.faiss"),
          "--factory", "IVF256,Flat", "--device", "cpu", "--num-workers", "0"],
         "could not train the 'IVF256,Flat' index on 60 vectors"),
        (["search", missing, image_dir], "no index file at"),
    ]  # fmt: skip
    for argv, expected in cases:
        assert cli.main(argv) == 2, argv
        assert expected in error_line(capsys), argv
    # every image unreadable
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.jpg").write_bytes(b"\xff\xd8 truncated")
    assert cli.main(["embed", run_dir, str(bad), "--out", str(tmp_path / "b.npy"),
                     "--device", "cpu", "--num-workers", "0"]) == 2  # fmt: skip
    assert "none of the 1 images could be read" in error_line(capsys)
    assert not os.path.exists(tmp_path / "b.npy")


def test_dimension_and_model_mismatch_are_refused(retriever, image_dir, tmp_path, capsys):
    embedded = retriever.embed(image_dir)
    path = Index.build(embedded).save(str(tmp_path / "g.faiss"))
    # queries of another dimension
    other = type(embedded)(np.ones((2, 8), np.float32) / np.sqrt(8), ["a", "b"],
                           [None, None], dict(embedded.model))  # fmt: skip
    other.save(str(tmp_path / "q.npy"))
    assert cli.main(["search", path, str(tmp_path / "q.npy")]) == 2
    assert "8-d embeddings, the index holds 16-d ones" in error_line(capsys)
    # same dimension, other weights
    foreign = type(embedded)(embedded.vectors[:2], embedded.paths[:2], [None, None],
                             dict(embedded.model, sha256="0" * 64))  # fmt: skip
    foreign.save(str(tmp_path / "f.npy"))
    assert cli.main(["search", path, str(tmp_path / "f.npy")]) == 2
    assert "come from different model weights" in error_line(capsys)
    assert cli.main(["index", str(tmp_path / "f.npy"), "--add", "--out", path]) == 2
    assert "come from different model weights" in error_line(capsys)


def test_pickled_embeddings_are_never_loaded(retriever, image_dir, tmp_path, capsys):
    """np.load(allow_pickle=False): an object array is refused, not unpickled."""
    embedded = retriever.embed(os.path.join(image_dir, "6"))
    path = embedded.save(str(tmp_path / "e.npy"))
    marker = tmp_path / "pwned"
    np.save(path, np.array([Exploit(str(marker))], dtype=object), allow_pickle=True)
    assert cli.main(["index", path, "--out", str(tmp_path / "g.faiss")]) == 2
    assert "not a readable embeddings file" in error_line(capsys)
    assert not marker.exists()


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('x')",))


def test_train_writes_test_figures(run_dir):
    """figures/ after the test: the grid of test queries and the embedding map."""
    from PIL import Image

    results = json.load(open(os.path.join(run_dir, "results.json")))
    names = sorted(os.path.basename(p) for p in results["figures"])
    assert names == ["embedding_map.png", "retrieval_grid.png"]
    for path in results["figures"]:
        with Image.open(path) as im:
            assert im.size[0] > 300 and im.size[1] > 300

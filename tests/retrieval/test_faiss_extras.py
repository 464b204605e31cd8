"""faiss comes as one of two extras that both provide the module `faiss`; without
either, embedding and evaluation still work and indexing says what to install."""

import configparser
import os

from ..training.helpers import ROOT, python

NO_FAISS = "import sys; sys.modules['faiss'] = None\n"  # `import faiss` fails


def test_extras_are_exclusive_and_base_has_no_faiss():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    extras = {k: v.split() for k, v in cfg["options.extras_require"].items()}

    def faiss_in(reqs):
        return {r for r in reqs if r.startswith("faiss")}

    assert not faiss_in(cfg["options"]["install_requires"].split())
    assert faiss_in(extras["cpu"]) == {"faiss-cpu"}
    assert faiss_in(extras["gpu"]) and "faiss-cpu" not in extras["gpu"]
    for name, reqs in extras.items():  # no extra installs both builds
        assert len(faiss_in(reqs)) <= 1, name


def test_without_faiss_embed_works_and_index_says_what_to_install(
    run_dir, image_dir, tmp_path
):
    emb, idx = str(tmp_path / "e.npy"), str(tmp_path / "g.faiss")
    script = NO_FAISS + (
        "from pml_soproxy import cli\n"
        f"assert cli.main(['embed', {run_dir!r}, {os.path.join(image_dir, '6')!r}, "
        f"'--out', {emb!r}, '--device', 'cpu', '--num-workers', '0']) == 0\n"
        f"sys.exit(cli.main(['index', {emb!r}, '--out', {idx!r}]))\n"
    )
    done = python("-c", script)
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert "faiss is not installed" in last and "pml-soproxy[cpu]" in last
    assert os.path.isfile(emb) and not os.path.exists(idx)


def test_without_faiss_training_evaluates_with_torch(tmp_path):
    script = NO_FAISS + (
        "from pml_soproxy import cli\n"
        "sys.exit(cli.main(['train', '--dataset', 'digits', '--epochs', '1', "
        "'--iterations-per-epoch', '1', '--device', 'cpu', '--num-workers', '0', "
        f"'--no-figures', '--output-dir', {str(tmp_path / 'run')!r}]))\n"
    )
    done = python("-c", script)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "run" / "results.json").is_file()

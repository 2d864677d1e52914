"""The default corpus is reproducible: a seed in another process writes the same bytes."""

import subprocess
import sys


def test_seeding_in_another_process_writes_identical_documents(full_corpus, tmp_path):
    other = tmp_path / "corpus"
    command = [sys.executable, "-m", "embedding_assets.cli.main", "seed", "--path", str(other)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    ours = {p.relative_to(full_corpus): p.read_bytes() for p in full_corpus.rglob("*") if p.is_file()}
    theirs = {p.relative_to(other): p.read_bytes() for p in other.rglob("*") if p.is_file()}
    assert ours.keys() == theirs.keys()
    differing = sorted(str(k) for k in ours if ours[k] != theirs[k])
    assert not differing, differing[:5]

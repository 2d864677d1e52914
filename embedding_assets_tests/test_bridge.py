"""The adapter bridge: maps from a new model's space into an old one's, fit on texts both real models
embed, gated on retention before they may serve new-model queries against the old index."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from embedding_assets.bridge import maps
from embedding_assets.bridge.command import judge_pair_on_dataset
from embedding_assets.bridge.serving import bridged_searcher, served_bridged_searcher
from embedding_assets.bridge.store import MIN_RETENTION, BridgeRefusedError, bridge_paths
from embedding_assets.cli.main import main
from embedding_assets.index import store, tables
from embedding_assets.models.embedders import embedder_for
from embedding_assets.models.registry import ONNX_INT8_VERSION, ModelRegistry, ModelRegistryError
from embedding_assets.serving.pointer import ServingPointer, ServingState
from embedding_assets_tests.beir import write_dataset

L3_VERSION = "paraphrase-minilm-l3-v2"
TWIN_VERSION = "minilm-int8-twin"  # the int8 MiniLM under a second id: a pair whose bridge must pass
TOPICS = {
    "gear": "The landing gear retracts into the fuselage after take-off.",
    "wing": "Swept wings delay the onset of compressibility drag near the speed of sound.",
    "seal": "Replace the hydraulic seal when the pump leaks at high pressure.",
    "heat": "Kinetic heating of the skin at Mach 5 weakens aluminium structures.",
    "flutter": "Flutter of the tailplane is an aeroelastic instability at high speed.",
    "bread": "Knead the dough for ten minutes, then let it rise until doubled in size.",
    "soup": "Simmer onions, carrots and celery slowly to build the base of a soup.",
    "coffee": "Grind the beans just before brewing so the coffee keeps its aroma.",
    "tomato": "Tomato plants need full sun, deep watering and a stake to climb.",
    "rose": "Prune roses in late winter, cutting just above an outward-facing bud.",
    "compost": "A compost heap needs a mix of green and brown material and some air.",
    "python": "A Python list comprehension builds a new list from an iterable in one line.",
    "git": "Git rebase replays your commits on top of another branch.",
    "sql": "An SQL index lets the database find rows without scanning the whole table.",
    "regex": "A regular expression matches patterns of characters in text.",
    "tcp": "TCP retransmits segments that the receiver does not acknowledge.",
    "dns": "DNS resolves a host name to the IP address of a server.",
    "cache": "A cache keeps recently used data close to the processor for fast access.",
    "volcano": "Magma rising through the crust erupts as lava from a volcano.",
    "glacier": "Glaciers carve U-shaped valleys as they slowly flow downhill.",
    "tide": "The pull of the moon raises the ocean tides twice a day.",
    "storm": "Thunderstorms form when warm moist air rises quickly into cold air.",
    "desert": "Deserts receive less than 250 millimetres of rain in a year.",
    "coral": "Coral reefs are built by tiny animals that secrete calcium carbonate.",
    "violin": "The violin has four strings tuned in perfect fifths.",
    "piano": "A piano hammer strikes the string when a key is pressed.",
    "drum": "A drummer keeps the tempo steady for the rest of the band.",
    "chess": "In chess, castling moves the king two squares toward a rook.",
    "football": "A football match lasts ninety minutes plus stoppage time.",
    "marathon": "Marathon runners train for months to cover 42 kilometres.",
    "tennis": "A tennis player must win six games to take a set.",
    "vaccine": "A vaccine trains the immune system to recognise a virus.",
    "sleep": "Adults need seven to nine hours of sleep each night.",
    "heart": "The heart pumps blood through the arteries to every organ.",
    "tax": "Income tax is withheld from each salary payment by the employer.",
    "loan": "A mortgage loan is repaid in monthly instalments with interest.",
    "stock": "A stock market index tracks the prices of many companies at once.",
    "castle": "Medieval castles had thick stone walls and a moat for defence.",
    "pyramid": "The pyramids of Giza were built as tombs for the pharaohs.",
    "printing": "The printing press made books cheap enough for many readers.",
}
QUERIES = {
    "q-wing": ("why are aircraft wings swept back", "wing"),
    "q-bread": ("how long should I knead bread dough", "bread"),
    "q-git": ("move my commits onto another branch", "git"),
    "q-dns": ("how is a domain name turned into an IP address", "dns"),
    "q-tide": ("what causes ocean tides", "tide"),
    "q-violin": ("how is a violin tuned", "violin"),
    "q-chess": ("rules for castling the king", "chess"),
    "q-vaccine": ("how do vaccines protect against viruses", "vaccine"),
    "q-loan": ("paying back a mortgage every month", "loan"),
    "q-pyramid": ("why were the pyramids built", "pyramid"),
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A BEIR folder of a few dozen one-sentence documents and ten judged queries."""
    return write_dataset(
        tmp_path_factory.mktemp("bridge-beir"),
        {d: (d, t) for d, t in TOPICS.items()},
        {q: t for q, (t, _) in QUERIES.items()},
        {q: d for q, (_, d) in QUERIES.items()},
    )


@pytest.fixture(scope="module")
def twin_registry(registry: ModelRegistry) -> ModelRegistry:
    """The shipped registry plus the int8 MiniLM under a second id (same weights, same space)."""
    twin = registry.get(ONNX_INT8_VERSION).model_copy(update={"id": TWIN_VERSION})
    return registry.model_copy(update={"versions": [*registry.versions, twin]})


WHO = (
    "The engineer",
    "A farmer",
    "The pilot",
    "My neighbour",
    "A chef",
    "The teacher",
    "A nurse",
    "The mayor",
)
DOES = ("repairs", "paints", "sells", "photographs", "inspects", "cleans", "orders", "designs")
WHAT = ("a bicycle", "the old bridge", "fresh bread", "a wooden boat", "the school roof", "a red tractor")
WHERE = ("near the harbour.", "before winter.", "in the village.", "after the storm.", "for the museum.")
SENTENCES = [f"{w} {d} {x} {y}" for w in WHO for d in DOES for x in WHAT for y in WHERE]
PAIRED = 320  # sentences embedded by both models: 256 to fit on, 64 held out
FIT = 256


@pytest.fixture(scope="module")
def paired_texts(registry):
    """A fixed sample of varied sentences, each embedded once by the old model (int8 MiniLM) and once
    by the new one (L3)."""
    rng = np.random.default_rng(11)
    texts = [SENTENCES[i] for i in rng.choice(len(SENTENCES), PAIRED, replace=False)]
    old = embedder_for(registry.get(ONNX_INT8_VERSION)).encode(texts)
    new = embedder_for(registry.get(L3_VERSION)).encode(texts)
    return new, old


def random_orthonormal(rng: np.random.Generator, rows: int, columns: int) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(rows, rows)))
    return q[:, :columns]


@pytest.mark.parametrize(("new_dim", "old_dim"), [(48, 48), (96, 48)])
def test_procrustes_recovers_a_known_rotation_or_projection(new_dim, old_dim):
    """Exact for a rotation whatever the texts; for a projection when the new vectors are isotropic
    (orthonormal columns), since Procrustes then maximises the same trace the projection does."""
    rng = np.random.default_rng(7)
    new = random_orthonormal(rng, 300, new_dim)
    truth = random_orthonormal(rng, new_dim, old_dim)
    fitted = maps.ProcrustesMap.fit(new, new @ truth)
    np.testing.assert_allclose(fitted.weight, truth, atol=1e-5)
    np.testing.assert_allclose(fitted.weight.T @ fitted.weight, np.eye(old_dim), atol=1e-5)


@pytest.mark.parametrize("method", sorted(maps.METHODS))
def test_each_map_brings_held_out_texts_closer_to_their_old_vectors(paired_texts, method):
    new, old = paired_texts
    fit, held = slice(0, FIT), slice(FIT, None)
    bridge = maps.METHODS[method].fit(new[fit], old[fit])
    raw = maps.mean_cosine(new[held], old[held])  # same width, different spaces: near unrelated
    mapped = bridge.apply(new[held])
    assert maps.mean_cosine(mapped, old[held]) > raw + 0.1
    np.testing.assert_allclose(np.linalg.norm(mapped, axis=1), 1.0, atol=1e-5)
    reloaded = maps.load_map(method, bridge.arrays())
    np.testing.assert_array_equal(reloaded.apply(new[held]), mapped)


def test_a_pair_below_the_bar_is_refused_with_its_numbers(dataset, capsys):
    """Four fit texts cannot place 384 dimensions: every method falls short, and the command says by
    how much, stores nothing and exits non-zero."""
    command = ["bridge", "--old", ONNX_INT8_VERSION, "--new", L3_VERSION, "--dataset", str(dataset)]
    code = main([*command, "--samples", "4"])
    out, err = capsys.readouterr()
    assert code == 1
    assert f"retention {MIN_RETENTION:.2f}" in err and "refusing to store or serve" in err
    for method in maps.METHODS:
        assert f"| {method} |" in out and method in err
    assert not list(Path(os.environ["EMBEDDING_ASSETS_DATA"]).glob("**/*.npz")) and "stored" not in out


@pytest.fixture(scope="module")
def stored_twin(dataset, twin_registry, tmp_path_factory):
    """The twin pair judged on the dataset: the same space on both sides, so its bridge passes."""
    old, new = twin_registry.get(ONNX_INT8_VERSION), twin_registry.get(TWIN_VERSION)
    scratch = tmp_path_factory.mktemp("bridge-scratch")
    verdict = judge_pair_on_dataset(dataset, scratch, old, new, samples=(len(TOPICS),))
    assert verdict.refused is None and verdict.stored is not None
    return verdict


def test_a_passing_bridge_serves_new_model_queries_when_the_old_model_is_gone(stored_twin, twin_registry):
    best = stored_twin.measurement.best()
    assert best.retention >= MIN_RETENTION
    old = twin_registry.get(ONNX_INT8_VERSION)
    gone = old.model_copy(update={"weights": old.weights.model_copy(update={"subdir": "removed"})})
    with pytest.raises(ModelRegistryError, match="weights folder .* is missing"):
        embedder_for(gone)
    registry = twin_registry.model_copy(
        update={"versions": [gone if v.id == old.id else v for v in twin_registry.versions]}
    )
    folder = stored_twin.stored.parent
    searcher = bridged_searcher(searcher_db(stored_twin), registry, folder, ONNX_INT8_VERSION, TWIN_VERSION)
    result = searcher.search(QUERIES["q-git"][0], 3)
    assert result.hits[0]["doc_id"] == "git"
    assert result.model_version == ONNX_INT8_VERSION and result.bridged_from["new"] == TWIN_VERSION


def searcher_db(verdict):
    """The scratch database whose index the verdict's bridge was judged on (it stores it beside)."""
    return store.connect(verdict.stored.parent.parent)


def test_a_bridge_whose_pin_moved_is_refused(stored_twin, twin_registry):
    folder = stored_twin.stored.parent
    moved = twin_registry.get(TWIN_VERSION).model_copy(update={"fingerprint": "sha256:" + "0" * 64})
    repinned = twin_registry.model_copy(
        update={"versions": [v for v in twin_registry.versions if v.id != TWIN_VERSION] + [moved]}
    )
    with pytest.raises(BridgeRefusedError, match="registry now pins sha256:0000"):
        bridged_searcher(searcher_db(stored_twin), repinned, folder, ONNX_INT8_VERSION, TWIN_VERSION)


def test_a_record_below_the_bar_or_altered_arrays_are_refused(stored_twin, twin_registry, tmp_path):
    folder = tmp_path / "bridges"
    folder.mkdir()
    arrays, record = bridge_paths(stored_twin.stored.parent, ONNX_INT8_VERSION, TWIN_VERSION)
    copied_arrays, copied_record = bridge_paths(folder, ONNX_INT8_VERSION, TWIN_VERSION)
    copied_arrays.write_bytes(arrays.read_bytes())
    low = {**json.loads(record.read_text()), "retention": MIN_RETENTION - 0.01}
    copied_record.write_text(json.dumps(low))
    db = searcher_db(stored_twin)
    with pytest.raises(BridgeRefusedError, match="below 0.90"):
        bridged_searcher(db, twin_registry, folder, ONNX_INT8_VERSION, TWIN_VERSION)
    copied_record.write_text(record.read_text())
    with np.load(arrays) as saved:
        altered = {name: saved[name] * 1.01 for name in saved.files}
    np.savez(copied_arrays, **altered)
    with pytest.raises(BridgeRefusedError, match="not the map its record measured"):
        bridged_searcher(db, twin_registry, folder, ONNX_INT8_VERSION, TWIN_VERSION)


def test_the_served_version_answers_new_model_queries_through_its_bridge(
    stored_twin, twin_registry, tmp_path
):
    db = searcher_db(stored_twin)
    old = twin_registry.get(ONNX_INT8_VERSION)
    table = db.open_table(tables.index_table(old.id))
    pointer = ServingPointer(tmp_path / "serving")
    state = ServingState(
        version=old.id,
        model_fingerprint=old.pinned_fingerprint(),
        pipeline_config_hash=old.pipeline_config_hash(),
        table=table.name,
        table_version=table.version,
        lance_tag="test",
        rows=table.count_rows(),
    )
    pointer.promote(state)
    with pytest.raises(BridgeRefusedError, match="no bridge from"):
        served_bridged_searcher(db, pointer, twin_registry, tmp_path / "bridges", TWIN_VERSION)
    searcher = served_bridged_searcher(db, pointer, twin_registry, stored_twin.stored.parent, TWIN_VERSION)
    result = searcher.search(QUERIES["q-tide"][0], 1)
    assert result.hits[0]["doc_id"] == "tide" and result.table_version == table.version
    assert result.to_json()["bridged_from"]["retention"] >= MIN_RETENTION

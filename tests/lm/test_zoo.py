"""The zoo: deterministic training, metadata, skipping, presets, and the trained tiny preset's quality."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from qscale.lm import load
from qscale.lm.zoo import (
    FAMILIES,
    ZOO_PRESETS,
    ZooError,
    get_spec,
    list_zoo,
    select,
)
from qscale.lm.zoo_train import token_streams, train_model, validation_windows


def _borrow_cache(zoo_root: Path, root: Path) -> Path:
    """A fresh zoo root that reuses the session's tokenizer and token streams (symlinks)."""
    root.mkdir(parents=True)
    for p in zoo_root.iterdir():
        if p.is_dir() and p.name.startswith(("tokenizer-", "data-")):
            (root / p.name).symlink_to(p)
    return root


def _micro(seed: int = 0, **kw) -> object:
    base = get_spec("tiny-llama-s")
    return dataclasses.replace(
        base, name="tiny-llama-s", d_model=16, n_layers=1, n_heads=2, steps=4, warmup_steps=2, seed=seed,
        val_tokens=512, **kw,
    )  # fmt: skip


def _state(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


@pytest.fixture(scope="module")
def streams(zoo_root, shared_tokenizer):
    return token_streams(zoo_root)


def test_same_seed_same_weights_bitwise(zoo_root, streams, tmp_path):
    a = train_model(_micro(), root=_borrow_cache(zoo_root, tmp_path / "a"))
    b = train_model(_micro(), root=_borrow_cache(zoo_root, tmp_path / "b"))
    c = train_model(_micro(seed=1), root=_borrow_cache(zoo_root, tmp_path / "c"))
    sa, sb, sc = _state(a), _state(b), _state(c)
    assert set(sa) == set(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    ma, mb = (json.loads((p / "qscale_zoo.json").read_text()) for p in (a, b))
    assert ma["final_train_loss"] == mb["final_train_loss"] and ma["val_loss"] == mb["val_loss"]


def test_metadata_and_skip(zoo_root, streams, tmp_path):
    root = _borrow_cache(zoo_root, tmp_path / "z")
    spec = _micro()
    path = train_model(spec, root=root)
    meta = json.loads((path / "qscale_zoo.json").read_text())
    assert meta["train_tokens"] == spec.steps * spec.batch_size * spec.seq_len == 4 * 8 * 64 == 2048
    assert meta["config_hash"] == spec.config_hash() and meta["seed"] == 0
    for key in ("wall_time_s", "hardware", "torch", "qscale", "final_train_loss", "val_loss", "preset"):
        assert key in meta
    lm = load(str(path))
    assert lm.facts.n_params == meta["n_params"] and lm.facts.n_nonembed == meta["n_nonembed"]
    assert lm.facts.identity == f"zoo:tiny-llama-s@{spec.config_hash()}/0"
    assert lm.facts.train_tokens == 2048
    # a second call with the same spec is a no-op; a changed recipe retrains
    mtime = (path / "model.safetensors").stat().st_mtime_ns
    assert train_model(spec, root=root) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == mtime
    status = {e.name: e.status for e in list_zoo(root=root, preset="tiny")}
    assert status["tiny-llama-s"] == "stale" and status["tiny-gpt2-s"] == "missing"
    assert train_model(dataclasses.replace(spec, lr=spec.lr / 2), root=root) == path
    assert json.loads((path / "qscale_zoo.json").read_text())["config_hash"] != meta["config_hash"]


def test_presets_shape():
    tiny, full = ZOO_PRESETS["tiny"], ZOO_PRESETS["full"]
    assert {s.family for s in tiny} == set(FAMILIES) and len(tiny) == 15
    assert len({s.name for s in tiny + full}) == len(tiny) + len(full)
    for fam in FAMILIES:
        sizes = [s for s in full if s.family == fam and "-d" not in s.name]
        assert len(sizes) == 5
    # full: >= 2 orders of magnitude of non-embedding N per family, 3 token budgets for llama-s/-m
    from transformers import AutoModelForCausalLM

    def nonembed(spec):
        from qscale.lm.facts import count_params

        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(spec.hf_config(8192, 0))
        return count_params(model)[1]

    gpt2 = sorted(nonembed(s) for s in full if s.family == "gpt2" and "-d" not in s.name)
    assert gpt2[0] < 150_000 and gpt2[-1] > 25_000_000
    budgets = sorted(s.train_tokens for s in full if s.name.startswith("llama-m"))
    assert len(budgets) == 3 and budgets[-1] >= 16 * budgets[0]
    # no family freezes a token row: the shared <|endoftext|> (id 0) must be trainable (no padding_idx)
    for fam in FAMILIES:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(get_spec(f"tiny-{fam}-s").hf_config(8192, 0))
        assert all(m.padding_idx is None for m in model.modules() if isinstance(m, torch.nn.Embedding)), fam
    with pytest.raises(ZooError, match="Did you mean 'llama'"):
        select("tiny", ["lama"])
    with pytest.raises(ZooError, match="Valid choices: tiny, full"):
        select("huge")


def test_validation_windows_are_spread():
    stream = np.arange(1000, dtype=np.uint16)
    w = validation_windows(stream, seq_len=9, max_tokens=30)  # 100 windows of 10, keep 3
    assert w.shape == (3, 10)
    assert w[:, 0].tolist() == [0, 330, 660]


@pytest.mark.slow
def test_tiny_zoo_beats_unigram_and_records_true_losses(tiny_zoo, streams):
    assert set(tiny_zoo) == {s.name for s in ZOO_PRESETS["tiny"]}
    train, val = streams["train"], streams["validation"]
    counts = np.bincount(train, minlength=8192)
    total = len(train) + 8192
    types, margins = set(), []
    recheck = {"tiny-gpt2-s", "tiny-llama-m", "tiny-opt-l", "tiny-neox-s", "tiny-qwen2-m"}  # one per family
    for name, path in tiny_zoo.items():
        meta = json.loads((path / "qscale_zoo.json").read_text())
        spec = get_spec(name)
        windows = validation_windows(val, spec.seq_len, spec.val_tokens)
        # independent unigram baseline (add-one smoothing over the 8192-token vocabulary)
        tgt = windows.reshape(-1)
        uni = -sum(math.log((int(counts[t]) + 1) / total) for t in tgt.tolist()) / len(tgt)
        assert meta["unigram_val_loss"] == pytest.approx(uni, rel=1e-9)
        assert meta["val_loss"] < uni - 0.02, (name, meta["val_loss"], uni)
        margins.append(uni - meta["val_loss"])
        lm = load(str(path))
        assert lm.facts.train_tokens == spec.train_tokens
        types.add(lm.facts.family)
        if name not in recheck:
            continue
        # the recorded validation loss, recomputed in float64 from the loaded checkpoint's logits
        x = torch.from_numpy(windows)
        nll = 0.0
        with torch.no_grad():
            for chunk in x.split(128):
                logp = torch.log_softmax(lm.model(input_ids=chunk[:, :-1]).logits.double(), dim=-1)
                nll -= float(logp.gather(-1, chunk[:, 1:, None]).sum())
        assert nll / x[:, 1:].numel() == pytest.approx(meta["val_loss"], abs=2e-4)
    assert types == {"gpt2", "llama", "opt", "gpt_neox", "qwen2"}
    # 77k training tokens cannot teach a 8192-token bigram table: the margin is small but real
    assert sum(margins) / len(margins) > 0.1, margins


@pytest.mark.slow
def test_zoo_names_load_and_list(tiny_zoo, zoo_root, monkeypatch):
    from typer.testing import CliRunner

    from qscale.cli import app

    monkeypatch.setenv("QSCALE_ZOO_DIR", str(zoo_root))
    lm = load("zoo:tiny-qwen2-m")
    assert lm.model.config.num_key_value_heads < lm.model.config.num_attention_heads
    assert lm.facts.identity.startswith("zoo:tiny-qwen2-m@")
    res = CliRunner().invoke(app, ["zoo", "list", "--preset", "tiny"])
    assert res.exit_code == 0, res.output
    assert res.output.count("trained") == 15

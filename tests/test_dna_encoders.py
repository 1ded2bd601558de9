"""DNA encoder families on tiny random-init models saved in the real on-disk layout, loaded via the registry."""

from __future__ import annotations

import itertools
import json
import logging
import random
import shutil
import textwrap
from pathlib import Path

import pytest
import torch

from encoders.dna import create_dna_encoder, list_dna_encoders, reverse_complement, tile_windows
from encoders.errors import EncoderInputError

HIDDEN = 32
SPECIALS = ["<oov>", "<s>", "</s>", "<pad>", "<mask>"] + [f"<sp{i}>" for i in range(27)]
GENERATOR_VOCAB = SPECIALS + ["".join(p) for p in itertools.product("ATCG", repeat=6)]
NT_VOCAB = (["<unk>", "<pad>", "<mask>", "<cls>", "<eos>", "<bos>"]
            + ["".join(p) for p in itertools.product("ATCG", repeat=6)] + list("ATCGN"))

rng = random.Random(0)
SEQS = ["".join(rng.choice("ACGT") for _ in range(n)) for n in (48, 61, 90, 7)]


# ---------------------------------------------------------------------------------------------
# tiny checkpoints
# ---------------------------------------------------------------------------------------------
def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2))


def _edit_config(folder: Path, **changes) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    _write_json(folder / "config.json", cfg)


def make_generator(folder: Path) -> Path:
    """GENERator layout: Llama causal-LM weights + vocab.txt + tokenizer_config.json (k=6, remote tokenizer)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(GENERATOR_VOCAB), hidden_size=HIDDEN, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=128)
    LlamaForCausalLM(config).save_pretrained(folder)
    (folder / "vocab.txt").write_text("\n".join(GENERATOR_VOCAB) + "\n")
    _write_json(folder / "tokenizer_config.json",
                {"k": 6, "auto_map": {"AutoTokenizer": ["tokenizer.DNAKmerTokenizer", None]}})
    return folder


def make_nt(folder: Path, v2: bool) -> Path:
    """NT layout: EsmForMaskedLM weights (esm.* keys) + vocab.txt; v2 = rotary + bias-free SwiGLU + auto_map."""
    from safetensors.torch import save_file
    from transformers import EsmConfig, EsmForMaskedLM

    from encoders.dna.nucleotide_transformer import _ntv2_model_class

    torch.manual_seed(1)
    kwargs = dict(vocab_size=len(NT_VOCAB), hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, pad_token_id=1, mask_token_id=2, max_position_embeddings=66)
    if v2:
        config = EsmConfig(position_embedding_type="rotary", add_bias_fnn=False, **kwargs)
        folder.mkdir(parents=True)
        encoder = _ntv2_model_class()(config)
        state = {f"esm.{k}": v.contiguous() for k, v in encoder.state_dict().items()}
        save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
        config.save_pretrained(folder)
        _edit_config(folder, model_type=None,
                     auto_map={"AutoConfig": "esm_config.EsmConfig",
                               "AutoModelForMaskedLM": "modeling_esm.EsmForMaskedLM"})
        (folder / "esm_config.py").write_text(textwrap.dedent(NT_V2_CONFIG))
        (folder / "modeling_esm.py").write_text(textwrap.dedent(NT_V2_MODELING))
    else:
        config = EsmConfig(position_embedding_type="absolute", token_dropout=True, **kwargs)
        EsmForMaskedLM(config).save_pretrained(folder)
    (folder / "vocab.txt").write_text("\n".join(NT_VOCAB) + "\n")
    return folder


# Stand-ins for NT-v2's remote files (esm_config.py, modeling_esm.py): the same SwiGLU ESM, so the
# remote path (AutoModelForMaskedLM -> .esm) must give what the native port gives.
NT_V2_CONFIG = """
import transformers


class EsmConfig(transformers.EsmConfig):
    pass
"""
NT_V2_MODELING = """
import transformers
from torch import nn

from encoders.dna.nucleotide_transformer import SwiGLUIntermediate

from .esm_config import EsmConfig


class EsmForMaskedLM(transformers.EsmForMaskedLM):
    config_class = EsmConfig

    def __init__(self, config):
        super().__init__(config)
        for layer in self.esm.encoder.layer:
            layer.intermediate = SwiGLUIntermediate(config.hidden_size, config.intermediate_size, False)
            layer.output.dense = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.post_init()
"""


def save_bpe_tokenizer(folder: Path) -> None:
    """A DNABERT-2-style BPE tokenizer (tokenizer.json) trained on random DNA."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    data_rng = random.Random(3)
    corpus = ["".join(data_rng.choice("ACGT") for _ in range(200)) for _ in range(200)]
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=120, special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", tok.token_to_id("[CLS]")),
                                                 ("[SEP]", tok.token_to_id("[SEP]"))])
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
                            pad_token="[PAD]", mask_token="[MASK]").save_pretrained(folder)


def _bert_config():
    from transformers import BertConfig

    return BertConfig(vocab_size=120, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=3,
                      num_attention_heads=4, max_position_embeddings=128, pad_token_id=3)


def make_hf_bert(folder: Path) -> Path:
    """A native BertForMaskedLM checkpoint + BPE tokenizer (GROVER-like)."""
    from transformers import BertForMaskedLM

    torch.manual_seed(2)
    BertForMaskedLM(_bert_config()).save_pretrained(folder)
    save_bpe_tokenizer(folder)
    return folder


# Stand-ins for DNABERT-2's remote files with the same interface: AutoConfig maps to a BertConfig
# subclass (the config_class mismatch), the model returns (last layer | list of *unpadded* layers,
# pooled), and a module-level Triton kernel that fails unless switched off.
DNABERT2_CONFIGURATION = """
import transformers


class BertConfig(transformers.BertConfig):
    pass
"""
DNABERT2_LAYERS = """
import transformers

flash_attn_qkvpacked_func = "triton kernel (asserts q.is_cuda)"


class BertModel(transformers.BertModel):
    config_class = transformers.BertConfig

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, position_ids=None,
                output_all_encoded_layers=False, masked_tokens_mask=None, **kwargs):
        if flash_attn_qkvpacked_func is not None:
            raise RuntimeError("Triton flash attention: assert q.is_cuda")
        out = super().forward(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        if output_all_encoded_layers:
            keep = attention_mask.bool()
            return [h[keep] for h in out.hidden_states[1:]], None
        return out.last_hidden_state, None
"""


def make_dnabert2(folder: Path, source: Path) -> Path:
    """DNABERT-2 layout with the encoder weights of the `source` BERT checkpoint."""
    from transformers import BertModel

    BertModel.from_pretrained(source, add_pooling_layer=False).save_pretrained(folder)
    save_bpe_tokenizer(folder)
    (folder / "configuration_bert.py").write_text(textwrap.dedent(DNABERT2_CONFIGURATION))
    (folder / "bert_layers.py").write_text(textwrap.dedent(DNABERT2_LAYERS))
    _edit_config(folder, auto_map={"AutoConfig": "configuration_bert.BertConfig",
                                   "AutoModel": "bert_layers.BertModel"})
    return folder


def make_causal_char(folder: Path) -> Path:
    """A tiny causal character model (native MambaModel) over HyenaDNA's 12-token vocabulary."""
    from transformers import MambaConfig, MambaModel

    torch.manual_seed(4)
    MambaModel(MambaConfig(vocab_size=16, hidden_size=HIDDEN, state_size=4, num_hidden_layers=2,
                           pad_token_id=4, expand=2)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dna-models")
    bert = make_hf_bert(root / "bert-bpe")
    return {
        "generator": make_generator(root / "GENERator-v2-tiny"),
        "nt-v1": make_nt(root / "nt-v1", v2=False),
        "nt-v2": make_nt(root / "nt-v2-tiny", v2=True),
        "hf": bert,
        "dnabert2": make_dnabert2(root / "dnabert2-tiny", source=bert),
        "hyenadna": make_causal_char(root / "causal-char"),
    }


# family name, folder key, extra options
CASES = {
    "generator": ("generator", "generator", {}),
    "nt-v1": ("nt", "nt-v1", {}),
    "nt-v2": ("nt", "nt-v2", {}),
    "hf": ("hf", "hf", {}),
    "dnabert2": ("dnabert2", "dnabert2", {"trust_remote_code": True}),
    "hyenadna": ("hyenadna", "hyenadna", {}),
}


@pytest.fixture(scope="module")
def encoders(folders):
    cache = {}

    def get(case: str, **options):
        family, key, extra = CASES[case]
        args = {**extra, **options}
        ident = (case, tuple(sorted(args.items())))
        if ident not in cache:
            cache[ident] = create_dna_encoder(family, path=folders[key], **args)
        return cache[ident]

    return get


ALL = list(CASES)


# ---------------------------------------------------------------------------------------------
# properties every family keeps
# ---------------------------------------------------------------------------------------------
def test_registry_lists_every_family():
    assert {"generator", "nt", "dnabert2", "hyenadna", "hf"} <= set(list_dna_encoders())


def test_family_modules_import_heavy_packages_lazily():
    """`import encoders.dna` and `list_dna_encoders()` must not pull in transformers or the Caduceus port."""
    import ast

    import encoders.dna

    def heavy(name: str) -> bool:
        return name.split(".")[0] == "transformers" or name == "encoders.dna.caduceus_model"

    package = Path(encoders.dna.__file__).parent
    modules = sorted(p for p in package.glob("*.py") if p.name != "caduceus_model.py")  # the port itself
    assert {"caduceus.py", "hf.py", "nucleotide_transformer.py"} <= {p.name for p in modules}
    offenders = []
    for path in modules:
        for node in ast.parse(path.read_text()).body:  # module level only (TYPE_CHECKING blocks are `if`s)
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            offenders += [f"{path.name}: {n}" for n in names if heavy(n)]
    assert not offenders, offenders


@pytest.mark.parametrize("case", ALL)
def test_batch_equals_one_by_one_and_is_deterministic(encoders, case):
    enc = encoders(case, batch_size=3)
    batched = enc.embed(SEQS)
    single = torch.cat([enc.embed([s]) for s in SEQS])
    assert batched.shape == (len(SEQS), enc.dim) and batched.dtype == torch.float32
    assert torch.allclose(batched, single, atol=1e-5, rtol=0)
    assert torch.equal(enc.embed(SEQS), batched)
    assert batched.std(dim=0).min() > 0  # different sequences, different vectors


@pytest.mark.parametrize("case", ALL)
def test_rc_average_is_reverse_complement_invariant(encoders, case):
    enc = encoders(case)
    assert enc.config.rc == "average"
    rc = enc.embed([reverse_complement(s) for s in SEQS])
    assert torch.allclose(enc.embed(SEQS), rc, atol=1e-5, rtol=0)
    plain = encoders(case, rc="none")
    assert not torch.allclose(plain.embed(SEQS[:1]), plain.embed([reverse_complement(SEQS[0])]), atol=1e-4)


@pytest.mark.parametrize("case", ALL)
def test_dim_comes_from_the_config_and_concat_doubles_it(encoders, case):
    assert encoders(case).dim == HIDDEN
    concat = encoders(case, rc="concat")
    out = concat.embed(SEQS[:2])
    assert concat.dim == 2 * HIDDEN and out.shape == (2, 2 * HIDDEN)
    forward = encoders(case, rc="none").embed(SEQS[:2])
    assert torch.allclose(out[:, :HIDDEN], forward, atol=1e-5, rtol=0)


@pytest.mark.parametrize("case", ALL)
def test_tiling_pools_windows_back_and_large_windows_equal_one_pass(encoders, case):
    whole = encoders(case).embed(SEQS)
    assert torch.allclose(encoders(case, window=96, overlap=12).embed(SEQS), whole, atol=1e-6, rtol=0)
    tiled = encoders(case, window=24, overlap=6).embed([SEQS[2]])
    windows = tile_windows(len(SEQS[2]), 24, 6)
    expected = encoders(case).embed([SEQS[2][a:b] for a, b in windows]).mean(dim=0, keepdim=True)
    assert len(windows) > 2 and torch.allclose(tiled, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("case", ALL)
def test_lowercase_is_normalised(encoders, case):
    enc = encoders(case)
    upper = enc.embed(SEQS)
    assert torch.equal(enc.embed([s.lower() for s in SEQS]), upper)
    assert enc.last_report.n_lowercase == sum(map(len, SEQS))


@pytest.mark.parametrize("case", ALL)
def test_bad_sequences_raise_one_clear_error(encoders, case):
    enc = encoders(case)
    with pytest.raises(EncoderInputError, match=r"sequences\[1\]: empty"):
        enc.embed(["ACGTAC", ""])
    with pytest.raises(EncoderInputError, match=r"'Y' at position 3"):
        enc.embed(["ACGYACGTA"])


@pytest.mark.parametrize("case", ALL)
def test_layer_selection_and_range(encoders, case):
    first = encoders(case, layer=1, rc="none").embed(SEQS[:2])
    last = encoders(case, rc="none").embed(SEQS[:2])
    assert not torch.allclose(first, last, atol=1e-4)
    with pytest.raises(EncoderInputError, match="layer: .* has hidden_states indices"):
        encoders(case, layer=50)


# ---------------------------------------------------------------------------------------------
# cache key
# ---------------------------------------------------------------------------------------------
def test_cache_key_tracks_everything_that_changes_embeddings(folders, encoders, tmp_path):
    base = encoders("generator").cache_key()
    assert base.startswith("generator-")
    assert create_dna_encoder("generator", path=folders["generator"], batch_size=1).cache_key() == base
    changed = [encoders("generator", layer=1), encoders("generator", pooling="mean"),
               encoders("generator", rc="concat"), encoders("generator", window=48),
               encoders("generator", window=48, overlap=6), encoders("generator", remainder="pad_left")]
    keys = {e.cache_key() for e in changed}
    assert base not in keys and len(keys) == len(changed)
    copy = shutil.copytree(folders["generator"], tmp_path / "GENERator-v2-copy")
    assert create_dna_encoder("generator", path=copy).cache_key() == base  # identity, not path
    from safetensors.torch import load_file, save_file

    weights = load_file(copy / "model.safetensors")
    name = next(k for k in weights if "layers.1.mlp" in k)
    weights[name] = weights[name] + 1e-3
    save_file(weights, copy / "model.safetensors", metadata={"format": "pt"})
    assert create_dna_encoder("generator", path=copy).cache_key() != base


# ---------------------------------------------------------------------------------------------
# GENERator specifics
# ---------------------------------------------------------------------------------------------
def test_generator_matches_a_direct_llama_forward(folders, encoders):
    from transformers import LlamaModel

    from encoders.dna.kmers import base_codes

    enc = encoders("generator", rc="none")
    assert enc.config.variant == "v2" and enc.config.pooling == "last"
    model = LlamaModel.from_pretrained(folders["generator"]).eval()
    index = {t: i for i, t in enumerate(GENERATOR_VOCAB)}
    seq = SEQS[2]
    ids = [index["<s>"]] + [index[seq[i:i + 6]] for i in range(0, len(seq), 6)] + [index["<s>"]]
    with torch.no_grad():
        expected = model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]
    assert enc.tokenize([seq]).input_ids[0].tolist() == ids
    assert torch.allclose(enc.embed([seq])[0], expected, atol=1e-5)
    assert base_codes(seq).size == 90


def test_generator_remainder_policies(encoders):
    body = SEQS[0]  # 48 bp
    trim = encoders("generator", rc="none")
    assert torch.allclose(trim.embed(["GT" + body]), trim.embed([body]), atol=1e-6)
    pad = encoders("generator", rc="none", remainder="pad_left")
    assert torch.allclose(pad.embed([body[4:]]), pad.embed(["AAAA" + body[4:]]), atol=1e-6)
    strict = encoders("generator", rc="none", remainder="error")
    with pytest.raises(EncoderInputError, match="not a multiple of 6"):
        strict.embed([body[1:]])
    with pytest.raises(EncoderInputError, match="shorter than one 6-mer"):
        trim.embed(["ACGTA"])


def test_generator_n_kmers_become_oov_and_v1_has_no_suffix(folders, tmp_path):
    v2 = create_dna_encoder("generator", path=folders["generator"])
    ids = v2.tokenize(["ACGTNA" + "AAAAAA"]).input_ids[0].tolist()
    assert ids == [1, 0, GENERATOR_VOCAB.index("AAAAAA"), 1]
    v1 = create_dna_encoder("generator", path=folders["generator"], variant="v1")
    assert v1.tokenize(["AAAAAA"]).input_ids[0].tolist() == [1, GENERATOR_VOCAB.index("AAAAAA")]
    assert v1.cache_key() != v2.cache_key()


def test_too_long_without_window_is_an_error_and_a_window_fixes_it(encoders):
    long = (SEQS[2] * 12)[:1020]
    with pytest.raises(EncoderInputError, match="1020 bp needs 172 tokens, more than the 128.*window="):
        encoders("generator").embed([long])
    assert encoders("generator", window=600, overlap=60).embed([long]).shape == (1, HIDDEN)


def test_per_token_outputs(encoders):
    kmers = encoders("generator", rc="none").embed(SEQS[:2], per_token=True)
    assert [t.shape for t in kmers] == [(8, HIDDEN), (10, HIDDEN)]
    with pytest.raises(EncoderInputError, match="needs single-base tokens"):
        encoders("generator").embed(SEQS[:1], per_token=True)
    with pytest.raises(EncoderInputError, match="per-token output needs one window"):
        encoders("hyenadna", window=24).embed(SEQS[2:3], per_token=True)
    chars = encoders("hyenadna")
    fwd = chars.embed(SEQS[:2], per_token=True)
    rev = chars.embed([reverse_complement(s) for s in SEQS[:2]], per_token=True)
    for f, r, s in zip(fwd, rev, SEQS):
        assert f.shape == (len(s), HIDDEN) and torch.allclose(f, r.flip(0), atol=1e-5)


# ---------------------------------------------------------------------------------------------
# NT, generic HF, DNABERT-2, HyenaDNA adapter
# ---------------------------------------------------------------------------------------------
def test_nt_versions_and_v2_port(encoders, folders, tmp_path):
    assert not encoders("nt-v1").is_v2 and encoders("nt-v2").is_v2
    layer = encoders("nt-v2").model.encoder.layer[0]
    assert layer.intermediate.dense.out_features == 128 and layer.output.dense.bias is None
    # the same v2 weights read as v1 (no add_bias_fnn, no auto_map) do not fit: one clear error
    bad = shutil.copytree(folders["nt-v2"], tmp_path / "nt-bad")
    _edit_config(bad, add_bias_fnn=None, auto_map=None, model_type="esm")
    with pytest.raises(EncoderInputError, match=f"nt: weights in {bad} do not fit .*intermediate.dense"):
        create_dna_encoder("nt", path=bad)
    remote = encoders("nt-v2", trust_remote_code=True)
    assert type(encoders("nt-v2").model).__name__ == "NTv2EsmModel"  # native port without trust
    assert type(remote.model).__name__ == "EsmModel" and remote.dim == HIDDEN  # .esm of the remote class
    assert torch.allclose(remote.embed(SEQS), encoders("nt-v2").embed(SEQS), atol=1e-5, rtol=0)
    assert remote.cache_key() != encoders("nt-v2").cache_key()  # different code, different key
    n_tokens = encoders("nt-v1", rc="none").embed(["ACGTACGNA"], per_token=True)[0].shape[0]
    assert n_tokens == 4  # ACGTAC, G, N, A


def test_hf_equals_masked_mean_of_the_base_model(folders, encoders):
    from transformers import AutoTokenizer, BertModel

    enc = encoders("hf", rc="none", layer=2)
    model = BertModel.from_pretrained(folders["hf"], add_pooling_layer=False).eval()
    tok = AutoTokenizer.from_pretrained(folders["hf"])
    for seq, got in zip(SEQS, enc.embed(SEQS)):
        ids = tok(seq, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            states = model(input_ids=ids, output_hidden_states=True).hidden_states[2][0]
        assert torch.allclose(got, states[1:-1].mean(0), atol=1e-5)  # [CLS] and [SEP] excluded


def test_dnabert2_workarounds_and_unpadded_layers(folders, encoders, caplog):
    import sys

    remote_module = sys.modules[type(encoders("dnabert2").model).__module__]
    assert remote_module.flash_attn_qkvpacked_func is None
    remote_module.flash_attn_qkvpacked_func = "triton kernel"  # as if freshly imported with triton present
    with caplog.at_level(logging.WARNING, logger="encoders.dna"):
        create_dna_encoder("dnabert2", path=folders["dnabert2"], trust_remote_code=True, rc="none")
    assert remote_module.flash_attn_qkvpacked_func is None
    assert "Triton flash attention" in caplog.text and str(folders["dnabert2"]) in caplog.text
    # intermediate layers come back unpadded from the remote code and are re-padded
    for layer in (1, 2, -1):
        got = encoders("dnabert2", rc="none", layer=layer).embed(SEQS)
        ref = encoders("hf", rc="none", layer=layer).embed(SEQS)  # same weights, native BERT
        assert torch.allclose(got, ref, atol=1e-5), layer
    with pytest.raises(EncoderInputError, match="does not expose the embedding output"):
        encoders("dnabert2", layer=0)


def test_hyenadna_adapter_right_pads_a_causal_model(encoders, folders):
    from transformers import MambaModel

    enc = encoders("hyenadna", rc="none")
    batch = enc.tokenize(["ACGTN", "AC"])
    assert batch.input_ids.tolist() == [[7, 8, 9, 10, 11, 1], [7, 8, 1, 4, 4, 4]]
    model = MambaModel.from_pretrained(folders["hyenadna"]).eval()
    with torch.no_grad():
        states = model(input_ids=torch.tensor([[7, 8, 9, 10, 11, 1]])).last_hidden_state[0]
    assert torch.allclose(enc.embed(["ACGTN"])[0], states[:5].mean(0), atol=1e-5)
    last = encoders("hyenadna", rc="none", pooling="last")
    assert torch.allclose(last.embed(["ACGTN"])[0], states[5], atol=1e-5)


# ---------------------------------------------------------------------------------------------
# configuration and folder errors
# ---------------------------------------------------------------------------------------------
def test_remote_code_needs_explicit_trust(folders, tmp_path):
    with pytest.raises(EncoderInputError, match="dnabert2: DNABERT-2 ships .*trust_remote_code=True"):
        create_dna_encoder("dnabert2", path=folders["dnabert2"])
    with pytest.raises(EncoderInputError, match="hf: config.json maps .*trust_remote_code=True"):
        create_dna_encoder("hf", path=folders["dnabert2"])
    remote = shutil.copytree(folders["hyenadna"], tmp_path / "hyena-remote")
    _edit_config(remote, auto_map={"AutoModel": "modeling_hyena.HyenaDNAModel"})
    with pytest.raises(EncoderInputError, match=f"modeling_hyena.py; this runs Python code shipped in {remote}"):
        create_dna_encoder("hyenadna", path=remote)


def test_missing_files_name_the_folder(folders, tmp_path):
    no_vocab = shutil.copytree(folders["generator"], tmp_path / "gen-no-vocab")
    (no_vocab / "vocab.txt").unlink()
    with pytest.raises(EncoderInputError, match=f"{no_vocab} lacks vocab.txt"):
        create_dna_encoder("generator", path=no_vocab)
    no_tok = shutil.copytree(folders["hf"], tmp_path / "bert-no-tokenizer")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (no_tok / name).unlink()
    with pytest.raises(EncoderInputError, match=f"no usable tokenizer in {no_tok}"):
        create_dna_encoder("hf", path=no_tok)
    (no_tok / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nhello\n")  # not a DNA vocabulary
    with pytest.raises(EncoderInputError, match=f"tokenizer in {no_tok} maps DNA to unknown tokens"):
        create_dna_encoder("hf", path=no_tok)
    with pytest.raises(EncoderInputError, match=f"{tmp_path / 'nowhere'} does not exist"):
        create_dna_encoder("nt", path=tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EncoderInputError, match=f"{tmp_path / 'empty'} lacks config.json"):
        create_dna_encoder("nt", path=tmp_path / "empty")


@pytest.mark.parametrize("options, match", [
    ({"pooling": "median"}, "pooling: generator supports"),
    ({"rc": "both"}, "rc: generator supports"),
    ({"window": 100}, "window: expected a positive multiple of 6"),
    ({"window": 60, "overlap": 60}, "overlap: expected 0 <= overlap < window"),
    ({"overlap": 6}, "overlap: only meaningful with a window"),
    ({"remainder": "round"}, "remainder: expected one of"),
    ({"dtype": "float64"}, "dtype: generator supports"),
    ({"device": "gpu0"}, "device: 'gpu0' is not a torch device"),
    ({"colour": "blue"}, "unknown option.*colour.*valid: .*window"),
])
def test_bad_options_raise_one_clear_error(folders, options, match):
    with pytest.raises(EncoderInputError, match=match):
        create_dna_encoder("generator", path=folders["generator"], **options)


def test_unknown_family_lists_the_known_ones():
    with pytest.raises(EncoderInputError, match="unknown DNA encoder 'dnabert3'; available: .*generator"):
        create_dna_encoder("dnabert3", path=".")


def test_iupac_as_n_policy(encoders):
    enc = encoders("nt-v1", iupac="n")
    assert torch.equal(enc.embed(["ACGRYTAC"]), enc.embed(["ACGNNTAC"]))
    assert enc.last_report.n_ambiguous_to_n == 0  # last call had none

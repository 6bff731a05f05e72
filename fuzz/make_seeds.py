#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets into OUT/<target>/.

Every seed is generated here (small, valid files written from scratch) except, when the shared/
folder is given and present, a few small valid files derived from it at run time (never committed).
Usage: make_seeds.py OUT [SHARED]
"""
import io
import json
import os
import struct
import sys
import zipfile

out_dir = sys.argv[1]
shared = sys.argv[2] if len(sys.argv) > 2 else ""


def put(target, name, data):
    path = os.path.join(out_dir, target)
    os.makedirs(path, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    with open(os.path.join(path, name), "wb") as f:
        f.write(data)


def shared_file(relative):
    path = os.path.join(shared, relative) if shared else ""
    return path if path and os.path.isfile(path) else None


# ---- safetensors ------------------------------------------------------------------------------
def safetensors(tensors, metadata=None):
    """tensors: list of (name, dtype, shape, raw bytes)."""
    header, data = {}, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + data


def f32(values):
    return struct.pack("<%df" % len(values), *values)


put("safetensors", "small", safetensors([
    ("a", "F32", [2, 2], f32([1, 2, 3, 4])),
    ("b", "F16", [3], struct.pack("<3e", 0.5, -1.0, 2.0)),
    ("c", "I64", [1], struct.pack("<q", 7)),
    ("d", "BF16", [0], b""),
], {"format": "pt"}))
put("safetensors", "empty_header", safetensors([]))
put("safetensors", "unaligned", struct.pack("<Q", 61) + b'{"x":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}}      '[:61] + struct.pack("<d", 1.5))


# ---- config.json ------------------------------------------------------------------------------
gpt2_config = {"model_type": "gpt2", "vocab_size": 8, "n_embd": 4, "n_layer": 1, "n_head": 2, "n_positions": 4,
               "n_inner": 8, "layer_norm_epsilon": 1e-5, "bos_token_id": 7, "eos_token_id": 7}
put("config", "gpt2.json", json.dumps(gpt2_config))
put("config", "gptj.json", json.dumps({"model_type": "gptj", "vocab_size": 16, "n_embd": 8, "n_layer": 2,
                                       "n_head": 2, "n_positions": 16, "rotary_dim": 2, "n_inner": None}))
put("config", "llama.json", json.dumps({"model_type": "llama", "vocab_size": 32, "hidden_size": 8,
                                        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                                        "intermediate_size": 16, "max_position_embeddings": 32, "rms_norm_eps": 1e-6,
                                        "rope_theta": 10000.0, "rope_scaling": None, "bos_token_id": 1,
                                        "eos_token_id": [2, 3]}))
for arch in ("tiny-gpt2", "tiny-gptj", "tiny-llama"):
    found = shared_file("reference/%s/config.json" % arch)
    if found:
        put("config", "shared-" + arch + ".json", open(found, "rb").read())


# ---- checkpoints (fuzz_checkpoint loads these beside a fixed tiny GPT-2 config.json) ----------
def llama2c(dim=4, hidden=8, layers=1, heads=2, kv_heads=1, vocab=6, seq_len=4, shared_classifier=True):
    head_dim = dim // heads
    kv_dim = head_dim * kv_heads
    floats = (vocab * dim + layers * dim + layers * dim * dim + 2 * layers * kv_dim * dim + layers * dim * dim +
              layers * dim + 3 * layers * hidden * dim + dim + seq_len * head_dim +
              (0 if shared_classifier else vocab * dim))
    header = struct.pack("<7i", dim, hidden, layers, heads, kv_heads, vocab if shared_classifier else -vocab, seq_len)
    return header + f32([((i * 37) % 17 - 8) / 16.0 for i in range(floats)])


put("checkpoint", "llama2c_shared", llama2c())
put("checkpoint", "llama2c_unshared_mha", llama2c(kv_heads=2, shared_classifier=False))
gpt2_tensors = []
V, D, F, P = 8, 4, 8, 4
for name, shape in [("transformer.wte.weight", [V, D]), ("transformer.wpe.weight", [P, D]),
                    ("transformer.h.0.ln_1.weight", [D]), ("transformer.h.0.ln_1.bias", [D]),
                    ("transformer.h.0.ln_2.weight", [D]), ("transformer.h.0.ln_2.bias", [D]),
                    ("transformer.h.0.attn.c_attn.weight", [D, 3 * D]), ("transformer.h.0.attn.c_attn.bias", [3 * D]),
                    ("transformer.h.0.attn.c_proj.weight", [D, D]), ("transformer.h.0.attn.c_proj.bias", [D]),
                    ("transformer.h.0.mlp.c_fc.weight", [D, F]), ("transformer.h.0.mlp.c_fc.bias", [F]),
                    ("transformer.h.0.mlp.c_proj.weight", [F, D]), ("transformer.h.0.mlp.c_proj.bias", [D]),
                    ("transformer.ln_f.weight", [D]), ("transformer.ln_f.bias", [D])]:
    n = 1
    for s in shape:
        n *= s
    gpt2_tensors.append((name, "F32", shape, f32([0.01 * i for i in range(n)])))
put("checkpoint", "tiny_gpt2.safetensors", safetensors(gpt2_tensors))
put("checkpoint", "pickle", b"\x80\x02}q\x00.")
put("checkpoint", "torch_zip", b"PK\x03\x04" + b"\x00" * 22 + b"\x0d\x00\x00\x00" + b"archive/data.pkl" + b"\x80\x02")
put("safetensors", "tiny_gpt2", safetensors(gpt2_tensors[:3]))


# ---- .npz / .npy --------------------------------------------------------------------------------
def npy(descr, shape, raw):
    dims = ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "")
    header = "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }" % (descr, dims)
    header += " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + raw


def npz(members, compression=zipfile.ZIP_STORED):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name + ".npy", data)
    return buffer.getvalue()


constructor = "rome_collapse.SecondMoment"
second_moment = {
    "mom2.mom2": npy("<f4", [2, 2], f32([2, 0.5, 0.5, 1])),
    "mom2.count": npy("<i8", [], struct.pack("<q", 3)),
    "mom2.constructor": npy("<U%d" % len(constructor), [], constructor.encode("utf-32-le")),
    "sample_size": npy("<i8", [], struct.pack("<q", 3)),
}
put("npz", "second_moment_stored.npz", npz(second_moment))
put("npz", "second_moment_deflated.npz", npz(second_moment, zipfile.ZIP_DEFLATED))
put("npz", "mixed.npz", npz({"f8": npy("<f8", [3], struct.pack("<3d", 1, 2, 3)),
                             "b": npy("|b1", [2], b"\x01\x00"), "s": npy("|S5", [], b"hello"),
                             "i4": npy("<i4", [1, 2], struct.pack("<2i", 1, 2))}))
put("npz", "bare.npy", b"N" + npy("<f4", [2], f32([1, 2])))
put("npz", "bare_v2.npy", b"N" + b"\x93NUMPY\x02\x00" + struct.pack("<I", 54) +
    b"{'descr': '<i8', 'fortran_order': True, 'shape': (1, 1), }\n"[:54] + struct.pack("<q", 1))


# ---- text files ---------------------------------------------------------------------------------
put("text_file", "meppl.json", json.dumps([{"Corpus": "Wikipedia", "Text": " One text."}, {"Text": "Two"}]))
put("text_file", "list.json", json.dumps(["a string", {"text": "an object"}]))
put("text_file", "lines.jsonl", '{"text": "first"}\n\n{"text": "second", "id": 2}\r\n')
put("text_file", "plain.txt", "Once upon a time.\r\n\n  \nThe end.\n")
found = shared_file("data/me-ppl/ME-PPL_50.json")
if found:
    put("text_file", "shared-meppl5.json", json.dumps(json.load(open(found, encoding="utf-8"))[:5]))


# ---- edit datasets --------------------------------------------------------------------------------
put("dataset", "counterfact.json", json.dumps([{
    "case_id": 1, "requested_rewrite": {"prompt": "{} plays the", "subject": "Danielle Darrieux",
                                        "target_new": {"str": "piano"}, "target_true": {"str": "violin"}},
    "paraphrase_prompts": ["Danielle Darrieux is known for the"], "neighborhood_prompts": ["Mozart played the"]}]))
put("dataset", "easyedit.json", json.dumps([{
    "case_id": 3, "prompt": "Paris is the capital of", "subject": "Paris", "target_new": ["Italy"],
    "ground_truth": "France", "rephrase_prompt": ["The capital city Paris is in"],
    "locality_prompt": "Berlin is the capital of", "locality_ground_truth": "Germany",
    "locality": {"Relation": {"prompt": ["Rome is in"], "ground_truth": ["Italy"]}}}]))
put("dataset", "zsre.json", json.dumps([{
    "subject": "UniFirst", "src": "What is the product made by UniFirst?", "pred": "uniform", "alt": "drones",
    "answers": ["uniform"], "rephrase": "What does UniFirst make?", "loc": "nq question: who wrote it",
    "loc_ans": "Someone"}, {"subject": "X", "src": "What is Y?", "alt": "", "answers": []}]))
for relative, name in [("data/counterfact/counterfact_rome_most_orthogonal_10.json", "shared-counterfact2.json"),
                       ("data/counterfact/counterfact-edit-1k.easyedit.json", "shared-easyedit2.json"),
                       ("data/zsre/zsre_mend_train-1k.json", "shared-zsre2.json")]:
    found = shared_file(relative)
    if found:
        put("dataset", name, json.dumps(json.load(open(found, encoding="utf-8"))[:2]))


# ---- llama2.c tokenizer -------------------------------------------------------------------------
def llama2c_tokenizer(extra):
    pieces = [(0.0, b"<unk>"), (0.0, b"\n<s>\n"), (0.0, b"\n</s>\n")]
    pieces += [(0.0, ("<0x%02X>" % b).encode()) for b in range(256)]
    pieces += extra
    max_length = max(len(p) for _, p in pieces)
    out = struct.pack("<i", max_length)
    for score, piece in pieces:
        out += struct.pack("<fi", score, len(piece)) + piece
    return out


put("llama2c_tokenizer", "minimal", llama2c_tokenizer([]))
put("llama2c_tokenizer", "merges", llama2c_tokenizer([(-1.0, b" "), (-2.0, b"e"), (-3.0, b" t"), (-4.0, b"th"),
                                                      (-5.0, b" the"), (-6.0, "é".encode()), (float("nan"), b"ab")]))
found = shared_file("models/stories260K/tok512.bin")
if found:
    put("llama2c_tokenizer", "shared-tok512.bin", open(found, "rb").read())


# ---- GPT-2 byte-level BPE -----------------------------------------------------------------------
def byte_symbols():
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    symbols, shifted = {}, 256
    for b in range(256):
        if b in printable:
            symbols[b] = chr(b)
        else:
            symbols[b] = chr(shifted)
            shifted += 1
    return symbols


symbols = byte_symbols()
vocab = {symbols[b]: b for b in range(256)}
merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("l", "l"), ("e", "ll")]
for left, right in merges:
    vocab.setdefault(left + right, len(vocab))
vocab["<|endoftext|>"] = len(vocab)
merges_txt = "#version: 0.2\n" + "".join("%s %s\n" % m for m in merges)
put("bpe_tokenizer", "vocab_merges", b"\x00" + json.dumps(vocab).encode() + b"\n#merges\n" + merges_txt.encode())
tokenizer_json = {"version": "1.0", "added_tokens": [{"id": vocab["<|endoftext|>"], "content": "<|endoftext|>",
                                                     "special": True}],
                  "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False},
                  "decoder": {"type": "ByteLevel"},
                  "model": {"type": "BPE", "vocab": vocab, "merges": [list(m) for m in merges[:3]] +
                            ["%s %s" % m for m in merges[3:]]}}
put("bpe_tokenizer", "tokenizer_json", b"\x01" + json.dumps(tokenizer_json).encode())

# HfTokenizer (first byte 3: tokenizer.json; 2: vocab.json + merges.txt + tokenizer_config.json):
# one seed per kind of component, small vocabularies written here.
put("bpe_tokenizer", "hf_gpt2_json", b"\x03" + json.dumps(tokenizer_json).encode())
split_regex = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
               "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
llama3_like = dict(tokenizer_json)
llama3_like.update({
    "normalizer": {"type": "NFC"},
    "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": split_regex}, "behavior": "Isolated", "invert": False},
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
    "post_processor": {"type": "Sequence", "processors": [
        {"type": "ByteLevel", "trim_offsets": False},
        {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}},
                                                   {"Sequence": {"id": "A", "type_id": 0}}],
         "pair": [], "special_tokens": {"<|endoftext|>": {"id": "<|endoftext|>", "ids": [vocab["<|endoftext|>"]],
                                                           "tokens": ["<|endoftext|>"]}}}]},
    "added_tokens": [{"id": vocab["<|endoftext|>"], "content": "<|endoftext|>", "special": True, "lstrip": True,
                      "rstrip": True, "single_word": False, "normalized": False},
                     {"id": vocab["Ġt"], "content": "  ", "special": False, "normalized": True, "single_word": True}],
})
llama3_like["model"] = dict(tokenizer_json["model"], ignore_merges=True)
put("bpe_tokenizer", "hf_split_digits_template", b"\x03" + json.dumps(llama3_like).encode())
meta = "\u2581"
sp_vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
for b in range(256):
    sp_vocab["<0x%02X>" % b] = len(sp_vocab)
for piece in [meta, "H", "e", "l", "o", meta + "H", "ll", "He", "Hell", "Hello", meta + "Hello", "a", "b", "ab"]:
    sp_vocab.setdefault(piece, len(sp_vocab))
sp_merges = [[meta, "H"], ["l", "l"], ["H", "e"], ["He", "ll"], ["Hell", "o"], [meta, "Hello"], ["a", "b"]]
mistral_like = {
    "version": "1.0", "normalizer": None,
    "added_tokens": [{"id": i, "content": c, "special": True, "normalized": False} for c, i in
                     [("<unk>", 0), ("<s>", 1), ("</s>", 2)]],
    "pre_tokenizer": {"type": "Metaspace", "replacement": meta, "prepend_scheme": "first", "split": False},
    "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                                               {"Sequence": {"id": "A", "type_id": 0}}],
                       "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
    "decoder": {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": meta}, "content": " "},
                                                 {"type": "ByteFallback"}, {"type": "Fuse"},
                                                 {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
    "model": {"type": "BPE", "unk_token": "<unk>", "fuse_unk": True, "byte_fallback": True, "vocab": sp_vocab,
              "merges": sp_merges},
}
put("bpe_tokenizer", "hf_metaspace_byte_fallback", b"\x03" + json.dumps(mistral_like).encode())
llama2_like = dict(mistral_like, pre_tokenizer=None,
                   normalizer={"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": meta},
                                                                   {"type": "Replace", "pattern": {"String": " "},
                                                                    "content": meta}]},
                   decoder={"type": "Sequence", "decoders": [{"type": "Metaspace", "replacement": meta,
                                                              "prepend_scheme": "always"},
                                                             {"type": "ByteFallback"}, {"type": "Fuse"}]})
put("bpe_tokenizer", "hf_prepend_replace", b"\x03" + json.dumps(llama2_like).encode())
split_kinds = dict(mistral_like, pre_tokenizer={"type": "Sequence", "pretokenizers": [
    {"type": "Split", "pattern": {"String": "l"}, "behavior": "MergedWithPrevious", "invert": False},
    {"type": "Split", "pattern": {"Regex": "\\s+"}, "behavior": "Contiguous", "invert": True},
    {"type": "Split", "pattern": {"String": "o"}, "behavior": "MergedWithNext", "invert": False},
    {"type": "Metaspace", "replacement": meta, "add_prefix_space": True}]},
    normalizer={"type": "Sequence", "normalizers": [{"type": "NFKC"}, {"type": "Lowercase"}, {"type": "Strip"}]})
put("bpe_tokenizer", "hf_split_behaviours", b"\x03" + json.dumps(split_kinds).encode())
qwen2_config = {"tokenizer_class": "Qwen2Tokenizer", "add_prefix_space": False, "bos_token": None,
                "eos_token": "<|endoftext|>", "added_tokens_decoder": {
                    str(vocab["<|endoftext|>"]): {"content": "<|endoftext|>", "lstrip": False, "normalized": False,
                                                  "rstrip": False, "single_word": False, "special": True}}}
put("bpe_tokenizer", "hf_qwen2_slow", b"\x02" + json.dumps(vocab).encode() + b"\n#merges\n" + merges_txt.encode() +
    b"\n#config\n" + json.dumps(qwen2_config).encode())
opt_config = {"add_bos_token": True, "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}
put("bpe_tokenizer", "hf_opt_slow", b"\x02" + json.dumps(vocab).encode() + b"\n#merges\n" + merges_txt.encode() +
    b"\n#config\n" + json.dumps(opt_config).encode())
